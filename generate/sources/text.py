"""Text source: one UTF-8 file → character tokens, streamed in chunks, split along the stream (test | train | val)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from generate.errors import UserError
from generate.sources.corpus import Corpus
from generate.sources.store import TokenSplit, npy_writer, token_dtype
from generate.tokenizers import CharTokenizer
from generate.tokenizers.char import MAX_CODE_POINT


def _text_path(cfg: Any) -> Path:
    if not cfg.path:
        raise UserError("dataset=text needs a file: add dataset.path=FILE")
    path = Path(cfg.path)
    if not path.is_file():
        raise UserError(f"text file not found: {path}; check dataset.path")
    return path


CHUNK_BYTES = 16 << 20  # read and tokenized at a time: peak memory is a few times this, whatever the file size


def read_chunks(path: Path) -> Iterator[tuple[int, str]]:
    """(bytes read, text) pieces of a UTF-8 file, cut between characters; UserError names the first bad byte."""
    with path.open("rb") as handle:
        offset, carry = 0, b""
        while True:
            block = handle.read(CHUNK_BYTES)
            data = carry + block
            if not data:
                return
            cut = _last_boundary(data) if block else len(data)  # at the end an unfinished character is an error
            carry = data[cut:]
            try:
                text = data[:cut].decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{path} is not UTF-8 (invalid byte at offset {offset + err.start}); convert it, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path.name} > fixed.txt`"
                ) from None
            yield cut, text
            offset += cut
            if not block:
                return


def _last_boundary(data: bytes) -> int:
    """Where to cut `data` so no UTF-8 character is split: before the last lead byte, if what follows is unfinished."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # an ASCII or lead byte
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 6 else 3 if byte >> 4 == 14 else 4
            return len(data) if need <= back else len(data) - back
    return len(data)


def _position(cfg: Any) -> str:
    return str(getattr(cfg.test_position, "value", cfg.test_position))


def fingerprint(cfg: Any) -> str:
    # The file's identity (path, size, modification time), as for MIDI folders: reading a 1 GB file to
    # hash it would cost a second on every start. Any edit changes the size or the time.
    path = _text_path(cfg)
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|char|{cfg.val_fraction}|{cfg.test_fraction}|{_position(cfg)}"
    return hashlib.sha256(key.encode()).hexdigest()


def split_bounds(n: int, val_fraction: float, test_fraction: float, test_position: str = "start") -> dict[str, tuple[int, int]]:
    """Token ranges of the splits along the stream: test | train | val (`test_position` "start") or
    train | test | val ("before_val"); val is always the last `val_fraction`.

    val starts at int(n * (1 - val_fraction)), exactly nanoGPT's `data[int(n*0.9):]` for val_fraction=0.1
    (n - int(n * 0.1) would start it one character later whenever n * 0.1 is not whole). The test split
    comes first by default so training ends where validation begins, as in nanoGPT: a test slice between
    them takes the opening of whatever the validation text continues (in Tiny Shakespeare, the first half
    of The Taming of the Shrew, whose people speak most of the validation split).
    """
    val_start = int(n * (1 - val_fraction))
    size = int(n * test_fraction)
    if str(getattr(test_position, "value", test_position)) == "before_val":
        return {"train": (0, val_start - size), "test": (val_start - size, val_start), "val": (val_start, n)}
    return {"test": (0, size), "train": (size, val_start), "val": (val_start, n)}


def split_stream(ids: list[int], val_fraction: float, test_fraction: float, test_position: str = "start",
                 ) -> dict[str, list[list[int]]]:
    """One token stream → its train, test and val parts (split_bounds): val is the last `val_fraction`."""
    bounds = split_bounds(len(ids), val_fraction, test_fraction, test_position)
    return {s: [ids[a:b]] for s, (a, b) in bounds.items()}


def build(cfg: Any, workdir: Path) -> Corpus:
    """Two streaming passes (the characters, then their ids), writing each split's ids straight into `workdir`."""
    path = _text_path(cfg)
    size = path.stat().st_size
    counts = np.zeros(MAX_CODE_POINT + 1, dtype=np.int64)
    with _bar(size, f"{cfg.name}: characters") as bar:
        for nbytes, chunk in read_chunks(path):
            counts += np.bincount(CharTokenizer.code_points(chunk).astype(np.intp), minlength=len(counts))
            bar.update(nbytes)
    present = np.flatnonzero(counts)
    if not len(present) or all(chr(c).isspace() for c in present.tolist()):
        raise UserError(f"text file is empty: {path}; give dataset.path a file with some text in it")
    tokenizer = CharTokenizer.from_counts(counts)
    dtype = token_dtype(tokenizer.vocab_size)
    n = int(counts.sum())
    bounds = split_bounds(n, cfg.val_fraction, cfg.test_fraction, _position(cfg))
    files = {s: npy_writer(workdir / f"{s}.tokens.npy", dtype, b - a) for s, (a, b) in bounds.items()}
    try:
        done = 0
        with _bar(size, f"{cfg.name}: tokens") as bar:
            for nbytes, chunk in read_chunks(path):
                ids = tokenizer.encode_array(chunk).astype(dtype)
                for s, (a, b) in bounds.items():  # the part of this chunk that falls in each split
                    lo, hi = max(a - done, 0), min(b - done, len(ids))
                    if lo < hi:
                        files[s].write(ids[lo:hi].tobytes())
                done += len(ids)
                bar.update(nbytes)
    finally:
        for handle in files.values():
            handle.close()
    splits = {}
    for s, (a, b) in bounds.items():
        tokens = np.load(workdir / f"{s}.tokens.npy", mmap_mode="r") if b > a else np.zeros(0, dtype)
        splits[s] = TokenSplit(tokens, np.array([0, b - a], dtype=np.int64))
    stats = {"file": str(path), "characters": n, "vocab_size": tokenizer.vocab_size}
    return Corpus(tokenizer, splits, stats)


def _bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1 << 20, dynamic_ncols=True,
                disable=total < CHUNK_BYTES)  # a bar only where there is something to wait for
