"""Files that are never half-written: atomic saves (temporary file, fsync, rename), their clean-up, the run lock."""

from __future__ import annotations

import errno
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
    except BaseException as err:
        Path(tmp_name).unlink(missing_ok=True)
        cause = err.__context__ if not isinstance(err, OSError) else None
        if isinstance(cause, OSError):  # torch.save reports a failed write as a RuntimeError
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(folder: Path, name: str = "*.pt") -> list[Path]:
    """Delete temporary files left by saves of `name` (a glob) that were killed mid-write (SIGKILL skips cleanup).

    Only call this while holding the folder's RunLock, or for one file's own saves: another
    writer's live temp file looks the same.
    """
    stale = [p for p in folder.glob(f".{name}.*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# What to do about each error a file system gives; the rest are reported with the system's own words.
FIXES = {
    errno.ENOSPC: "free some disk space or write somewhere else",
    errno.EDQUOT: "free some of your disk quota or write somewhere else",
    errno.EFBIG: "the file is over a size limit (see `ulimit -f`); raise it or write somewhere else",
    errno.EROFS: "that file system is read-only; write somewhere else",
    errno.EACCES: "you may not write there; fix its permissions or choose another folder",
    errno.EPERM: "the operation is not permitted there; choose another folder",
    errno.ENOTDIR: "a part of that path is a file, not a folder; fix the path",
    errno.EISDIR: "that path is a folder; give a file name",
    errno.ENOENT: "it does not exist; fix the path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def describe_os_error(err: OSError) -> str:
    """One line for an error the operating system gave: what failed, on which path, and the fix."""
    path = f" {err.filename}" if err.filename else ""
    reason = err.strerror or type(err).__name__
    fix = FIXES.get(err.errno or 0, "check the path and try again")
    return f"cannot use{path}: {reason}; {fix}"


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
