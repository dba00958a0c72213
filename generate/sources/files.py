"""Folders of music files: listing, fingerprints, and a worker pool that never lets one bad file stop a run."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from generate.errors import UserError

R = TypeVar("R")


def list_files(cfg: Any, suffixes: tuple[str, ...], what: str) -> tuple[Path, list[Path]]:
    """Every file under dataset.path with one of `suffixes` (any case), recursively, sorted; max_files applies."""
    if not cfg.path:
        raise UserError(f"dataset={cfg.name} needs a folder: add dataset.path=DIR (a folder of {what} files)")
    root = Path(cfg.path)
    if not root.exists():
        raise UserError(f"dataset.path={root} does not exist; give a folder of {what} files")
    if root.is_file():
        files = [root] if root.suffix.lower() in suffixes else []
        root = root.parent
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise UserError(
            f"no {what} files ({', '.join(suffixes)}) under {cfg.path}; point dataset.path at a folder that has some"
        )
    if cfg.max_files > 0:
        files = files[: cfg.max_files]
    return root, files


def folder_fingerprint(cfg: Any, suffixes: tuple[str, ...], what: str, settings: str) -> str:
    """Hash of (relative path, size, mtime) of every file plus the settings: a changed file re-tokenizes."""
    root, files = list_files(cfg, suffixes, what)
    digest = hashlib.sha256(settings.encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
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
