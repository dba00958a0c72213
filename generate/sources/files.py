"""Folders of music files: listing, fingerprints, and a worker pool that never lets one bad file stop a run."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from stat import S_ISREG
from typing import Any, TypeVar

from tqdm import tqdm

from generate.errors import UserError

R = TypeVar("R")


FileKey = tuple[str, int, int]  # (path relative to the folder, size in bytes, modification time in ns)


def list_files(cfg: Any, suffixes: tuple[str, ...], what: str) -> tuple[Path, list[FileKey]]:
    """(relative path, size, mtime) of every file under dataset.path with one of `suffixes` (any case),
    recursively, in path order; max_files applies. os.scandir, not pathlib: 100,000 files list in a second."""
    if not cfg.path:
        raise UserError(f"dataset={cfg.name} needs a folder: add dataset.path=DIR (a folder of {what} files)")
    root = Path(cfg.path)
    if not root.exists():
        raise UserError(f"dataset.path={root} does not exist; give a folder of {what} files")
    found: list[tuple[list[str], FileKey]] = []
    if root.is_file():
        stat = root.stat()
        if root.suffix.lower() in suffixes:
            found.append(([root.name], (root.name, stat.st_size, stat.st_mtime_ns)))
        root = root.parent
    else:
        for folder, _, names in os.walk(root):
            prefix = os.path.relpath(folder, root).replace(os.sep, "/")
            for name in names:
                dot = name.rfind(".")
                if dot <= 0 or name[dot:].lower() not in suffixes:  # (a bare ".mid" is hidden, as splitext says)
                    continue
                try:
                    stat = os.stat(os.path.join(folder, name))  # follows links, as reading the file will
                except OSError:  # a dangling link: nothing to read
                    continue
                if not S_ISREG(stat.st_mode):
                    continue
                rel = name if prefix == "." else f"{prefix}/{name}"
                found.append((rel.split("/"), (rel, stat.st_size, stat.st_mtime_ns)))
    if not found:
        raise UserError(
            f"no {what} files ({', '.join(suffixes)}) under {cfg.path}; point dataset.path at a folder that has some"
        )
    found.sort(key=lambda item: item[0])  # path order, part by part (as sorting Paths does)
    keys = [key for _, key in found]
    return root, keys[: cfg.max_files] if cfg.max_files > 0 else keys


def folder_fingerprint(cfg: Any, suffixes: tuple[str, ...], what: str, settings: str) -> str:
    """Hash of (relative path, size, mtime) of every file plus the settings: a changed file re-tokenizes."""
    _, keys = list_files(cfg, suffixes, what)
    digest = hashlib.sha256(settings.encode())
    for name, size, mtime in keys:
        digest.update(f"{name}|{size}|{mtime}\n".encode())
    return digest.hexdigest()


def worker_count(setting: int, jobs: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(setting if setting > 0 else cores, jobs))


def run_files(
    work: Callable[[tuple[str, str]], R], items: list[tuple[str, str]], num_workers: int, desc: str
) -> list[R]:
    """Apply `work` to every (name, path), in worker processes when there are several, with a bar."""
    workers = worker_count(num_workers, len(items))
    bar = tqdm(total=len(items), desc=desc, unit="file", dynamic_ncols=True)
    try:
        if workers == 1:
            results = []
            for item in items:
                results.append(work(item))
                bar.update(1)
            return results
        results = []
        # Files are small and many: chunks of up to 64 keep the inter-process traffic down (one task per
        # file spends more time in pickling and queues than in symusic's parser).
        chunksize = max(1, min(64, len(items) // (workers * 4)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(work, items, chunksize=chunksize):
                results.append(result)
                bar.update(1)
        return results
    except BrokenProcessPool:
        raise UserError(
            f"a worker process died while reading files for {desc}; run again with dataset.num_workers=1 "
            "to find the file that crashes it"
        ) from None
    finally:
        bar.close()
