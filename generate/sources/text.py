"""Text source: one UTF-8 file → character tokens, split train | test | val along the stream."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from generate.errors import UserError
from generate.sources.corpus import Corpus
from generate.tokenizers import CharTokenizer


def _text_path(cfg: Any) -> Path:
    if not cfg.path:
        raise UserError("dataset=text needs a file: add dataset.path=FILE")
    path = Path(cfg.path)
    if not path.is_file():
        raise UserError(f"text file not found: {path}; check dataset.path")
    return path


def read_text(path: Path) -> str:
    """A whole UTF-8 file, refusing empty or non-UTF-8 input with a message that says where."""
    data = path.read_bytes()
    if not data.strip():
        raise UserError(f"text file is empty: {path}; give dataset.path a file with some text in it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not UTF-8 (invalid byte at offset {err.start}); convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > fixed.txt`"
        ) from None


def fingerprint(cfg: Any) -> str:
    digest = hashlib.sha256(_text_path(cfg).read_bytes())
    digest.update(f"char|{cfg.val_fraction}|{cfg.test_fraction}".encode())
    return digest.hexdigest()


def split_stream(ids: list[int], val_fraction: float, test_fraction: float) -> dict[str, list[list[int]]]:
    """One token stream → train | test | val, in that order: val is the last `val_fraction`."""
    n = len(ids)
    val_start = n - int(n * val_fraction)
    test_start = val_start - int(n * test_fraction)
    return {"train": [ids[:test_start]], "test": [ids[test_start:val_start]], "val": [ids[val_start:]]}


def build(cfg: Any) -> Corpus:
    path = _text_path(cfg)
    text = read_text(path)
    tokenizer = CharTokenizer.fit(text)
    splits = split_stream(tokenizer.encode(text), cfg.val_fraction, cfg.test_fraction)
    stats = {"file": str(path), "characters": len(text), "vocab_size": tokenizer.vocab_size}
    return Corpus(tokenizer, splits, stats)

