"""Per-file tokenization results kept on disk between runs: a folder that changes re-tokenizes only the files that changed.

A table is a folder: a few numbers per file (files.npy, counts.npy), a few per document (docs.npy), names in
names.bin, labels in meta.json, and the tokens themselves in raw segment files that are never rewritten. Results are
written to a fresh segment as they arrive from the worker pool, so memory holds a few numbers per file, not
its tokens; an update links the old segments into the new table (no copy) and adds one for the new files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from generate.sources.files import FileKey, Listing, Names, encode_name
from generate.sources.store import META, publish

TABLE_FORMAT = 3  # 3: a tune column (2: flat arrays and token segments; 1: one JSON-described array)
SIZE, MTIME, REASON, PIECES, FIRST_DOC, DOCS = range(6)  # the columns of files.npy (REASON -1: the file gave music)
# The columns of docs.npy. TUNE: which tune of a multi-tune file (an ABC collection) the piece is from, by its
# number there (X:), -1 for a file that is one tune; PIECE counts the pieces of the file.
SEGMENT, START, LENGTH, PIECE, SHIFT, TUNE = range(6)
DOC_COLUMNS = 6
GATHER_TOKENS = 1 << 20  # tokens copied at a time when documents are gathered (bounded memory)
MAX_SEGMENTS = 16  # past this many segments, or half the tokens no longer used, the table is rewritten whole


@dataclass
class FileTable:
    """Every file's outcome as flat arrays; documents are (segment, start, length) in memory-mapped segments."""

    names: Names  # compact: ~1 byte a character
    files: np.ndarray  # (n_files, 6) int64
    docs: np.ndarray  # (n_docs, DOC_COLUMNS) int64, each file's documents together, in piece then transposition order
    counts: np.ndarray  # (n_files, len(count_names)) int64: what extraction counted per file
    count_names: list[str]
    reasons: list[str]  # why files gave no music; REASON indexes this
    segments: list[np.ndarray]
    segment_paths: list[Path]

    def __len__(self) -> int:
        return len(self.names)

    def doc_file(self) -> np.ndarray:
        """The file (row) each document belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.files[:, DOCS])

    def take(self, rows: np.ndarray) -> FileTable:
        """The files at `rows`, in that order, with their documents."""
        rows = np.asarray(rows, dtype=np.int64)
        files = self.files[rows].copy()
        picked = ranges(files[:, FIRST_DOC], files[:, DOCS])
        files[:, FIRST_DOC] = np.cumsum(files[:, DOCS]) - files[:, DOCS]
        return FileTable(self.names.take(rows), files, self.docs[picked], self.counts[rows],
                         self.count_names, self.reasons, self.segments, self.segment_paths)

    def concat(self, other: FileTable) -> FileTable:
        """This table's files, then `other`'s (its segments appended; count names and reasons merged)."""
        count_names = self.count_names + [k for k in other.count_names if k not in self.count_names]
        counts = np.zeros((len(self) + len(other), len(count_names)), dtype=np.int64)
        counts[: len(self), : len(self.count_names)] = self.counts
        counts[len(self) :, [count_names.index(k) for k in other.count_names]] = other.counts
        reasons = self.reasons + [r for r in other.reasons if r not in self.reasons]
        theirs = other.files.copy()
        relabel = np.array([reasons.index(r) for r in other.reasons] + [-1], dtype=np.int64)
        theirs[:, REASON] = relabel[theirs[:, REASON]]  # -1 indexes the appended -1
        theirs[:, FIRST_DOC] += len(self.docs)
        docs = other.docs.copy()
        docs[:, SEGMENT] += len(self.segments)
        return FileTable(self.names + other.names, np.concatenate((self.files, theirs)),
                         np.concatenate((self.docs, docs)), counts, count_names, reasons,
                         self.segments + other.segments, self.segment_paths + other.segment_paths)

    def gather(self, doc_rows: np.ndarray, budget: int = GATHER_TOKENS) -> Iterator[np.ndarray]:
        """The tokens of the documents at `doc_rows`, back to back, in chunks of about `budget` tokens.

        Read with plain file reads (preadv, one per document), not through the maps: a shuffled split touches
        pages all over the segments, and each fault on a map brings in its neighbours (fault-around), so
        the whole table would become resident. Reads leave the pages in the page cache, not in this process.
        """
        ends = np.cumsum(self.docs[doc_rows, LENGTH])
        handles = [os.open(path, os.O_RDONLY) for path in self.segment_paths]
        try:
            at = 0
            while at < len(ends):
                before = int(ends[at - 1]) if at else 0
                stop = max(at + 1, int(np.searchsorted(ends, before + budget, side="right")))
                part = self.docs[doc_rows[at:stop]]  # the rows of this chunk only (48 bytes a document)
                at = stop
                yield self.read_documents(handles, part)
        finally:
            for handle in handles:
                os.close(handle)

    def read_documents(self, handles: list[int], part: np.ndarray) -> np.ndarray:
        dtype = self.segments[0].dtype if self.segments else np.dtype(np.int32)
        out = np.empty(int(part[:, LENGTH].sum()), dtype)
        view, size, pos = memoryview(out).cast("B"), dtype.itemsize, 0
        for g, i, n in part[:, [SEGMENT, START, LENGTH]].tolist():
            if n and os.preadv(handles[g], [view[pos : pos + n * size]], i * size) != n * size:
                raise OSError(f"{self.segment_paths[g]} is shorter than the table says")
            pos += n * size
        return out


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every index of the ranges [start, start + length), one range after the other."""
    total = int(lengths.sum())
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total, dtype=np.int64)


class TableBuilder:
    """Results as they arrive: tokens appended to one new segment file, a few numbers per file kept in memory.

    The numbers go straight into numpy arrays sized for `expected` files (grown by half when more rows come),
    the counts as a dense matrix: 8 bytes a count, where (file, count, value) triples took 24.
    """

    def __init__(self, folder: Path, dtype: np.dtype, expected: int = 0):
        self.dtype = np.dtype(dtype)
        self.path = folder / f"segment-{uuid.uuid4().hex[:16]}.bin"  # unique: old tables' segments are linked in
        self.handle = self.path.open("wb")
        self.names, self.count, self.doc_count = bytearray(), 0, 0
        self.files = np.zeros((max(expected, 16), 6), dtype=np.int64)
        self.docs = np.zeros((max(expected, 16) + 1024, DOC_COLUMNS), dtype=np.int64)
        self.counts = np.zeros((len(self.files), 8), dtype=np.int64)  # per file what extraction counted
        self.count_names: dict[str, int] = {}
        self.reasons: dict[str, int] = {}
        self.written = 0

    def add(self, key: FileKey, result: Any) -> None:
        """One file's result (a FileResult: reason, docs as [{shift: tokens}] per piece, their tunes, counts)."""
        row, first = self.count, self.doc_count
        self.names += encode_name(key[0])
        self.count += 1
        self.files, self.counts = grown(self.files, self.count), grown(self.counts, self.count)
        tunes = getattr(result, "tunes", None) or [-1] * len(result.docs)
        for piece, (shifted, tune) in enumerate(zip(result.docs, tunes, strict=True)):
            for shift, doc in shifted.items():
                tokens = np.asarray(doc, dtype=self.dtype)
                self.handle.write(tokens.tobytes())
                self.docs = grown(self.docs, self.doc_count + 1)
                self.docs[self.doc_count] = (0, self.written, len(tokens), piece, shift, tune)
                self.doc_count += 1
                self.written += len(tokens)
        reason = -1 if result.reason is None else self.reasons.setdefault(result.reason, len(self.reasons))
        self.files[row] = (key[1], key[2], reason, len(result.docs), first, self.doc_count - first)
        for name, value in result.counts.items():
            column = self.count_names.setdefault(name, len(self.count_names))
            if column >= self.counts.shape[1]:
                self.counts = np.concatenate((self.counts, np.zeros_like(self.counts)), axis=1)
            self.counts[row, column] = value

    def finish(self) -> FileTable:
        self.handle.close()
        return FileTable(Names(bytes(self.names)), fitted(self.files, self.count), fitted(self.docs, self.doc_count),
                         fitted(self.counts[:, : len(self.count_names)], self.count), list(self.count_names),
                         list(self.reasons), [map_segment(self.path, self.dtype)], [self.path])


def grown(rows: np.ndarray, need: int) -> np.ndarray:
    """`rows` with room for at least `need` rows (half as many again when it must grow)."""
    if need <= len(rows):
        return rows
    bigger = np.zeros((max(need, len(rows) * 3 // 2), rows.shape[1]), dtype=rows.dtype)
    bigger[: len(rows)] = rows
    return bigger


def fitted(rows: np.ndarray, count: int) -> np.ndarray:
    """The first `count` rows, as their own array when the rest would waste memory."""
    return rows[:count] if count == len(rows) else rows[:count].copy()


def map_segment(path: Path, dtype: np.dtype) -> np.ndarray:
    """A segment's tokens, mapped read-only (seen as a plain array: slicing a np.memmap is ~20x slower)."""
    if path.stat().st_size == 0:  # mmap refuses an empty file
        return np.zeros(0, dtype)
    return np.asarray(np.memmap(path, dtype=dtype, mode="r"))


def build_table(folder: Path, dtype: np.dtype, keyed: Iterable[tuple[FileKey, Any]], expected: int = 0) -> FileTable:
    """A table of (key, result) pairs as they come (about `expected` of them), its segment written into `folder`."""
    builder = TableBuilder(folder, dtype, expected)
    try:
        for key, result in keyed:
            builder.add(key, result)
    finally:
        builder.handle.close()
    return builder.finish()


def table_folder(cfg: Any, root: Path, settings: str) -> Path:
    """One table per folder and tokenization settings (results made under other settings are never mixed in)."""
    key = hashlib.sha256(f"{root.resolve()}|{settings}|table-v{TABLE_FORMAT}".encode()).hexdigest()[:20]
    return Path(cfg.cache_dir) / f"{cfg.name}-files-{key}"


def update_table(folder: Path, keys: Sequence[FileKey], dtype: np.dtype,
                 work: Callable[[np.ndarray], Iterable[Any]]) -> tuple[FileTable, int]:
    """The table for `keys`: rows of unchanged files (same path, size, mtime) kept, the rest from `work`.

    `work(indices)` yields the results of keys[i] for those indices, in order. Files no longer listed are
    dropped. The new table is written whole into a temporary folder and renamed into place. Returns the
    table (in `keys` order, mapped from its folder) and how many files were tokenized.
    """
    old = load_table(folder, dtype)
    found = match_files(old, keys) if old is not None else np.full(len(keys), -1, dtype=np.int64)
    todo = np.flatnonzero(found < 0)
    if old is not None and not len(todo) and np.array_equal(found, np.arange(len(old))):
        return old, 0  # nothing changed: nothing to write
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        new = build_table(temporary, dtype, zip((keys[i] for i in todo), work(todo)), len(todo))
        pool = old.concat(new) if old is not None else new
        found[todo] = (len(old) if old is not None else 0) + np.arange(len(todo))
        in_order = np.array_equal(found, np.arange(len(pool)))  # a first build: no copy of the numbers needed
        save_table(temporary, pool if in_order else pool.take(found), dtype)
        del old, new, pool  # before the table is read back: one copy of the numbers at a time
        publish(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    table = load_table(folder, dtype)
    if table is None:
        raise OSError(f"the file table {folder} just written does not read back")
    return table, len(todo)


def match_files(old: FileTable, keys: Sequence[FileKey]) -> np.ndarray:
    """Per listed file the row of the same file (name, size, mtime) in the old table, else -1.

    Names are matched as 64-bit hashes in sorted numpy arrays and confirmed byte for byte, a batch at a time:
    a dict of 100,000 names as Python strings would cost ~12 MiB.
    """
    listing = keys if isinstance(keys, Listing) else Listing.of(keys)
    ours, theirs = name_hashes(listing.names), name_hashes(old.names)
    if not len(theirs):
        return np.full(len(ours), -1, dtype=np.int64)
    order = np.argsort(theirs, kind="stable")
    candidate = order[np.minimum(np.searchsorted(theirs[order], ours), len(order) - 1)]
    same = ((theirs[candidate] == ours) & (old.files[candidate, SIZE] == np.asarray(listing.sizes))
            & (old.files[candidate, MTIME] == np.asarray(listing.mtimes)))
    rows = np.flatnonzero(same)
    for at in range(0, len(rows), 8192):  # a hash match is a match only if the names are the same bytes
        part = rows[at : at + 8192]
        for i, mine, old_name in zip(part.tolist(), listing.names.spans(part), old.names.spans(candidate[part])):
            same[i] = listing.names.blob[slice(*mine)] == old.names.blob[slice(*old_name)]
    return np.where(same, candidate, -1)


def name_hashes(names: Names) -> np.ndarray:
    """Python's hash of each name's bytes (the same within this process, which is all matching needs)."""
    blob = names.blob
    return np.fromiter((hash(blob[a:b]) for a, b in names.spans(np.arange(len(names)))), dtype=np.int64,
                       count=len(names))


def save_table(folder: Path, table: FileTable, dtype: np.dtype) -> None:
    """Write `table` into `folder` (a fresh temporary one): its segments linked in, meta.json last."""
    used = np.unique(table.docs[:, SEGMENT])
    live = int(table.docs[:, LENGTH].sum())
    held = sum(len(table.segments[s]) for s in used.tolist())
    docs = table.docs.copy()
    if len(used) > MAX_SEGMENTS or held > 2 * live + GATHER_TOKENS:  # mostly dead tokens or many pieces: rewrite
        path = folder / f"segment-{uuid.uuid4().hex[:16]}.bin"
        with path.open("wb") as handle:
            for chunk in table.gather(np.arange(len(docs))):
                handle.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
        docs[:, SEGMENT], docs[:, START] = 0, np.cumsum(docs[:, LENGTH]) - docs[:, LENGTH]
        paths = [path]
    else:
        renumber = np.zeros(len(table.segments), dtype=np.int64)
        renumber[used] = np.arange(len(used))
        docs[:, SEGMENT] = renumber[docs[:, SEGMENT]]
        paths = [table.segment_paths[s] for s in used.tolist()]
        for path in paths:
            if path.parent != folder:
                link_or_copy(path, folder / path.name)
    for stale in set(folder.glob("segment-*.bin")) - {folder / p.name for p in paths}:
        stale.unlink()  # the new results' segment when everything was rewritten into one
    np.save(folder / "files.npy", table.files)
    np.save(folder / "docs.npy", docs)
    np.save(folder / "counts.npy", table.counts)
    (folder / "names.bin").write_bytes(table.names.blob)  # each name ended by a NUL
    meta = {"format": TABLE_FORMAT, "dtype": np.dtype(dtype).str, "segments": [p.name for p in paths],
            "count_names": table.count_names, "reasons": table.reasons}
    with (folder / META).open("w") as handle:
        json.dump(meta, handle)
        handle.flush()
        os.fsync(handle.fileno())


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (segments never change, so the old and new tables can share them); a copy where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def load_table(folder: Path, dtype: np.dtype) -> FileTable | None:
    """The table in `folder`, checked; None when absent or damaged (then every file is tokenized again)."""
    try:
        meta = json.loads((folder / META).read_text())
        if meta.get("format") != TABLE_FORMAT or np.dtype(meta["dtype"]) != np.dtype(dtype):
            return None
        names, count_names, reasons = Names((folder / "names.bin").read_bytes()), meta["count_names"], meta["reasons"]
        if names.blob and not names.blob.endswith(b"\0"):
            return None
        files, docs, counts = (np.load(folder / f"{part}.npy") for part in ("files", "docs", "counts"))
        paths = [folder / name for name in meta["segments"]]
        segments = [map_segment(path, dtype) for path in paths]
        if (files.shape != (len(names), 6) or docs.shape[1:] != (DOC_COLUMNS,) or counts.shape != (len(names), len(count_names))
                or files[:, DOCS].sum() != len(docs) or np.any(files[:, FIRST_DOC] != np.cumsum(files[:, DOCS]) - files[:, DOCS])
                or np.any(files[:, REASON] < -1) or np.any(files[:, REASON] >= len(reasons))):
            return None
        if len(docs):
            seg, ends = docs[:, SEGMENT], docs[:, START] + docs[:, LENGTH]
            if seg.min() < 0 or seg.max() >= len(segments) or docs[:, START].min() < 0 or docs[:, LENGTH].min() < 0:
                return None
            longest = np.zeros(len(segments), dtype=np.int64)
            np.maximum.at(longest, seg, ends)
            if np.any(longest > [len(s) for s in segments]):  # a segment cut short
                return None
        return FileTable(names, files, docs, counts, count_names, reasons, segments, paths)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
