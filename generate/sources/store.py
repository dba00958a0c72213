"""The flat token store: per split one integer array of all documents plus their offsets, memory-mapped from .npy."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

STORE_FORMAT = 2  # bump when the files of a store change meaning
META = "meta.json"  # written last: a store without it is unfinished and never used
CHECK_CHUNK = 1 << 20  # ids read at a time when checking a split (2-4 MiB, whatever the split's size)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (half the bytes), else int32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


class OffsetSequence(Sequence):
    """Items stored back to back in one buffer: item i spans offsets[i]:offsets[i + 1], made by `_item`."""

    offsets: np.ndarray

    def _item(self, start: int, end: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._item(int(self.offsets[i]), int(self.offsets[i + 1]))


class TokenSplit(OffsetSequence):
    """One split: `tokens` (all documents back to back, possibly a read-only memmap) and `offsets` (n_docs + 1).

    Indexing gives a document as a numpy view, never a Python list, so a corpus of any size costs only
    the pages that are read.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray):
        self.tokens, self.offsets = tokens, offsets

    @classmethod
    def from_docs(cls, docs: Sequence[Sequence[int]], dtype: Any = np.int32) -> TokenSplit:
        arrays = [np.asarray(d, dtype=dtype) for d in docs]  # numpy views (a cached file's pieces) are not copied twice
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        return cls(np.concatenate(arrays) if arrays else np.zeros(0, dtype), offsets)

    def _item(self, start: int, end: int) -> np.ndarray:
        return self.tokens[start:end]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TokenSplit):
            return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.tokens, other.tokens)
        if isinstance(other, Sequence):  # a list of documents
            return len(self) == len(other) and all(np.array_equal(a, b) for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])


def npy_writer(path: Path, dtype: np.dtype, count: int) -> BinaryIO:
    """Open `path` as a 1-D .npy of `count` items whose data the caller then appends with write()."""
    handle = path.open("wb")
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)}
    np.lib.format.write_array_header_1_0(handle, header)
    return handle


def write_split(folder: Path, name: str, split: TokenSplit, dtype: np.dtype) -> None:
    tokens_path = folder / f"{name}.tokens.npy"
    if not (isinstance(split.tokens, np.memmap) and Path(split.tokens.filename or "") == tokens_path.resolve()):
        with npy_writer(tokens_path, dtype, split.num_tokens) as handle:
            for start in range(0, split.num_tokens, CHECK_CHUNK):  # bounded memory for a big in-memory split
                handle.write(np.ascontiguousarray(split.tokens[start : start + CHECK_CHUNK], dtype=dtype).tobytes())
    np.save(folder / f"{name}.offsets.npy", np.asarray(split.offsets, dtype=np.int64))


def save_store(folder: Path, tokenizer: dict[str, Any], vocab_size: int, splits: dict[str, TokenSplit],
               stats: dict[str, Any]) -> None:
    """Write a store into `folder` (a fresh temporary folder); meta.json, the mark of a finished store, goes last."""
    dtype = token_dtype(vocab_size)
    for name, split in splits.items():
        write_split(folder, name, split, dtype)
    meta = {
        "format": STORE_FORMAT, "tokenizer": tokenizer, "vocab_size": vocab_size, "dtype": dtype.str, "stats": stats,
        "splits": {name: {"documents": len(split), "tokens": split.num_tokens} for name, split in splits.items()},
    }
    with (folder / META).open("w") as handle:
        json.dump(meta, handle)
        handle.flush()
        os.fsync(handle.fileno())


def publish(temporary: Path, final: Path) -> None:
    """Move a finished store into place in one rename (a reader sees the old one, none, or the new one whole)."""
    if final.exists():  # a damaged store being replaced: move it aside first, the rename must not merge folders
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    temporary.rename(final)


class DamagedStore(Exception):
    """A store that fails its checks; the caller rebuilds it."""


def load_store(folder: Path, splits: Sequence[str]) -> tuple[dict[str, Any], dict[str, TokenSplit]]:
    """Map a finished store's splits read-only after checking it: every split there, lengths and ids consistent."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as err:
        raise DamagedStore(f"{META} unreadable ({type(err).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT or set(meta.get("splits", {})) != set(splits):
        raise DamagedStore(f"{META} is not a finished store of format {STORE_FORMAT} with splits {', '.join(splits)}")
    loaded = {}
    for name in splits:
        expect = meta["splits"][name]
        try:
            tokens = np.load(folder / f"{name}.tokens.npy", mmap_mode="r") if expect["tokens"] else np.zeros(0, meta["dtype"])
            offsets = np.load(folder / f"{name}.offsets.npy")
        except (OSError, ValueError) as err:  # missing, or shorter than its header says
            raise DamagedStore(f"{name} split unreadable ({type(err).__name__})") from None
        if tokens.dtype != np.dtype(meta["dtype"]) or tokens.shape != (expect["tokens"],):
            raise DamagedStore(f"{name} split has {tokens.shape} {tokens.dtype} tokens, not {expect['tokens']}")
        if (len(offsets) != expect["documents"] + 1 or offsets[0] != 0 or offsets[-1] != len(tokens)
                or np.any(np.diff(offsets) < 0)):
            raise DamagedStore(f"{name} split's document offsets do not fit its tokens")
        check_ids(folder / f"{name}.tokens.npy", tokens, meta["vocab_size"])
        loaded[name] = TokenSplit(tokens, offsets)
    return meta, loaded


def check_ids(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Every id in 0..vocab_size-1, read with plain file reads in chunks, so the check maps no page of the split."""
    if not len(tokens):
        return
    buffer = np.empty(min(len(tokens), CHECK_CHUNK), dtype=tokens.dtype)
    with path.open("rb") as handle:
        handle.seek(tokens.offset if isinstance(tokens, np.memmap) else 0)
        left = len(tokens)
        while left:
            part = buffer[: min(left, len(buffer))]
            if handle.readinto(memoryview(part).cast("B")) != part.nbytes:
                raise DamagedStore(f"{path.name} is shorter than its header says")
            if int(part.max()) >= vocab_size or (part.dtype.kind == "i" and int(part.min()) < 0):
                raise DamagedStore(f"{path.name} holds ids outside 0..{vocab_size - 1}")
            left -= len(part)
