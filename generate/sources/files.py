"""Folders of music files: listing, fingerprints, and a worker pool that never lets one bad file stop a run."""

from __future__ import annotations

import ctypes
import hashlib
import os
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from pathlib import Path
from stat import S_ISREG
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from generate.errors import UserError
from generate.sources.store import OffsetSequence

R = TypeVar("R")
T = TypeVar("T")


FileKey = tuple[str, int, int]  # (path relative to the folder, size in bytes, modification time in ns)


class Names(OffsetSequence):
    """Many strings kept as one blob, each ended by a NUL (never in a path), and their offsets.

    ~1 byte a character plus 8 for the offset, where a list of str costs ~60 bytes more a name: a
    100,000-file folder's names take ~3 MiB. Undecodable bytes in file names survive (surrogateescape).
    """

    def __init__(self, blob: bytes = b""):
        self.blob = blob
        ends = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 0) + 1
        self.offsets = np.concatenate(([0], ends)).astype(np.int64)

    def _item(self, start: int, end: int) -> str:
        return self.blob[start : end - 1].decode("utf-8", "surrogateescape")  # without its NUL

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Names):
            return self.blob == other.blob
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Iterator[str]:
        return (self.blob[a : b - 1].decode("utf-8", "surrogateescape") for a, b in self.spans(np.arange(len(self))))

    def take(self, rows: np.ndarray) -> Names:
        return Names(b"".join(self.blob[a:b] for a, b in self.spans(np.asarray(rows, dtype=np.int64))))

    def spans(self, rows: np.ndarray, batch: int = 8192) -> Iterator[tuple[int, int]]:
        """(start, end) in the blob of each name at `rows` (its NUL included), a batch at a time: a list of
        every offset as Python ints would cost 36 bytes a name."""
        for at in range(0, len(rows), batch):
            part = rows[at : at + batch]
            yield from zip(self.offsets[part].tolist(), self.offsets[part + 1].tolist())

    def __add__(self, other: Names) -> Names:
        return Names(self.blob + other.blob)


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape") + b"\0"


class Listing(Sequence[FileKey]):
    """The files of a folder as compact arrays (names, sizes, times), read as (name, size, mtime) keys."""

    def __init__(self) -> None:
        self.blob, self.sizes, self.mtimes = bytearray(), array("q"), array("q")
        self.names: Names | None = None

    @classmethod
    def of(cls, keys: Iterable[FileKey]) -> Listing:
        listing = cls()
        for key in keys:
            listing.append(*key)
        return listing.finish()

    def append(self, name: str, size: int, mtime: int) -> None:
        self.blob += encode_name(name)
        self.sizes.append(size)
        self.mtimes.append(mtime)

    def finish(self, limit: int = 0) -> Listing:
        """Freeze the listing (the first `limit` files when limit > 0)."""
        names = Names(bytes(self.blob))
        if 0 < limit < len(names):
            names = Names(bytes(self.blob[: names.offsets[limit]]))
            del self.sizes[limit:], self.mtimes[limit:]
        self.names, self.blob = names, bytearray()
        return self

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        assert self.names is not None, "finish() the listing first"
        return self.names[i], self.sizes[i], self.mtimes[i]

    def __iter__(self) -> Iterator[FileKey]:
        assert self.names is not None, "finish() the listing first"
        return zip(self.names, self.sizes, self.mtimes)


def list_files(cfg: Any, suffixes: tuple[str, ...], what: str) -> tuple[Path, Listing]:
    """(relative path, size, mtime) of every file under dataset.path with one of `suffixes` (any case),
    recursively, in path order; max_files applies. os.scandir, not pathlib: 100,000 files list in a second."""
    if not cfg.path:
        raise UserError(f"dataset={cfg.name} needs a folder: add dataset.path=DIR (a folder of {what} files)")
    root = Path(cfg.path)
    if not root.exists():
        raise UserError(f"dataset.path={root} does not exist; give a folder of {what} files")
    keys = Listing()
    if root.is_file():
        stat = root.stat()
        if root.suffix.lower() in suffixes:
            keys.append(root.name, stat.st_size, stat.st_mtime_ns)
        root = root.parent
    else:
        walk(str(root), "", suffixes, keys)
    if not len(keys):
        raise UserError(
            f"no {what} files ({', '.join(suffixes)}) under {cfg.path}; point dataset.path at a folder that has some"
        )
    return root, keys.finish(cfg.max_files)


def walk(folder: str, prefix: str, suffixes: tuple[str, ...], found: Listing) -> Listing:
    """Add the keys of the matching regular files under `folder`, as os.walk finds them (links to folders not
    followed, unreadable folders passed over), in path order: each folder's entries sorted by name, a subfolder's
    files where its name sorts (as sorting Paths part by part does). DirEntry.stat: no path joins per file."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return found
    for entry in entries:
        name = entry.name
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            if not entry.is_symlink():
                walk(entry.path, f"{prefix}{name}/", suffixes, found)
            continue
        dot = name.rfind(".")
        if dot <= 0 or name[dot:].lower() not in suffixes:  # (a bare ".mid" is hidden, as splitext says)
            continue
        try:
            stat = entry.stat()  # follows links, as reading the file will
        except OSError:  # a dangling link: nothing to read
            continue
        if S_ISREG(stat.st_mode):
            found.append(prefix + name, stat.st_size, stat.st_mtime_ns)
    return found


# The listing the last fingerprint made, for the build that follows it: a 100,000-file folder is walked and
# stat-ed once per load, not twice, and the build tokenizes exactly the files the fingerprint named.
_LISTED: dict[tuple[str, tuple[str, ...], int], tuple[Path, Listing]] = {}


def folder_fingerprint(cfg: Any, suffixes: tuple[str, ...], what: str, settings: str) -> str:
    """Hash of (relative path, size, mtime) of every file plus the settings: a changed file re-tokenizes."""
    listed = list_files(cfg, suffixes, what)
    _LISTED.clear()
    _LISTED[(str(cfg.path), suffixes, cfg.max_files)] = listed
    digest = hashlib.sha256(settings.encode())
    for name, size, mtime in listed[1]:
        digest.update(f"{name}|{size}|{mtime}\n".encode())
    return digest.hexdigest()


def listed_files(cfg: Any, suffixes: tuple[str, ...], what: str) -> tuple[Path, Listing]:
    """The listing the fingerprint just made (taken once), else a fresh one."""
    return _LISTED.pop((str(cfg.path), suffixes, cfg.max_files), None) or list_files(cfg, suffixes, what)


def worker_count(setting: int, jobs: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(setting if setting > 0 else cores, jobs))


def iter_files(
    work: Callable[[tuple[str, str]], R], items: Iterable[tuple[str, str]], count: int, num_workers: int, desc: str
) -> Iterator[R]:
    """`work` of each of the `count` (name, path) items, yielded in order as they are done (callers store and drop
    each). Chunks of files go to the workers a few at a time, so neither the items nor the results pile up."""
    workers = worker_count(num_workers, count)
    bar = tqdm(total=count, desc=desc, unit="file", dynamic_ncols=True)
    try:
        if workers == 1:
            for item in items:
                yield work(item)
                bar.update(1)
            return
        # Files are small and many: chunks of up to 64 keep the inter-process traffic down (one task per
        # file spends more time in pickling and queues than in symusic's parser).
        chunks = batches(items, max(1, min(64, count // (workers * 4))))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending = deque(pool.submit(work_chunk, work, chunk) for chunk in islice(chunks, workers * 4))
            received = 0
            while pending:
                done = pending.popleft().result()
                for chunk in islice(chunks, 1):
                    pending.append(pool.submit(work_chunk, work, chunk))
                received += 1
                if received % TRIM_EVERY == 0:
                    trim_heap()
                for result in done:
                    yield result
                    bar.update(1)
    except BrokenProcessPool:
        raise UserError(
            f"a worker process died while reading files for {desc}; run again with dataset.num_workers=1 "
            "to find the file that crashes it"
        ) from None
    finally:
        bar.close()


TRIM_EVERY = 32  # chunks of results between two trim_heap calls (~2,000 files; a call takes well under 1 ms)


def trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc's malloc_trim; elsewhere nothing).

    The pool's results are unpickled by its result thread, in that thread's own malloc arena, and glibc keeps
    the pages they free there: measured, the parent grew ~100 bytes a file (+10 MiB over 100,000 files, 0.9
    MiB left after a trim), so without this its memory would grow with the folder.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def work_chunk(work: Callable[[T], R], chunk: list[T]) -> list[R]:
    """Worker entry: one chunk of items."""
    return [work(item) for item in chunk]
