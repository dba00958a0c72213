"""Files that are never half-written: atomic saves (temporary file, fsync, rename) and their clean-up."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

TMP_SUFFIX = ".tmp"  # atomic_save's temporary files: .<name>.<random>.tmp next to the target

# mkstemp makes 0600 files; a checkpoint gets the mode any other file would (0666 minus the umask).
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash or full disk at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temporary files left by saves that were killed mid-write (SIGKILL skips cleanup).

    Only call this while holding the folder's RunLock: another writer's live temp file looks the same.
    """
    stale = [p for p in folder.glob(f".*.pt.*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
