"""A run folder: the lock that keeps it to one training, and the clean-up of one that never got a checkpoint."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from generate.errors import UserError
from generate.storage import remove_stale_temp_files


class RunLock:
    """An exclusive lock on a run folder, so two trainings never write the same checkpoints.

    filelock takes an OS lock (flock on Unix, msvcrt on Windows) that the kernel releases when the
    process dies, even by SIGKILL, so a crashed run never leaves a stale lock behind. Who holds it is
    written beside it, so a refused run can say which process to wait for.
    """

    def __init__(self, run_dir: Path):
        self.lock = FileLock(run_dir / ".lock", timeout=0)
        self.owner = run_dir / ".lock.owner"

    def __enter__(self) -> RunLock:
        self.owner.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            holder = self.owner.read_text().strip() if self.owner.is_file() else "another process"
            raise UserError(
                f"{self.owner.parent} is in use by a training run ({holder}); wait for it to finish "
                "or choose another run_name=..."
            ) from None
        self.owner.write_text(f"pid {os.getpid()} on {socket.gethostname()}")
        # Saves killed mid-write (SIGKILL, power loss) leave temp files; holding the lock, they are ours to delete.
        remove_stale_temp_files(self.owner.parent)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.owner.unlink(missing_ok=True)
        self.lock.release()


def remove_if_unused(run_dir: Path) -> None:
    """A run that failed before writing anything leaves no folder behind (only its lock files would be there)."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".lock", ".lock.owner"}:
        shutil.rmtree(run_dir, ignore_errors=True)
