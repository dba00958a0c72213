"""Raw inputs → tokenizer + token documents per split. Text here; music sources register below."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generate.runtime import UserError
from generate.tokenizers import CharTokenizer, Tokenizer

SPLITS = ("train", "val", "test")


@dataclass
class Corpus:
    """A tokenizer and, per split, a list of documents (each a list of token ids)."""

    tokenizer: Tokenizer
    splits: dict[str, list[list[int]]]
    stats: dict[str, Any] = field(default_factory=dict)  # per-stage counts shown to the user


# source name → (fingerprint(cfg) -> str, build(cfg) -> Corpus). Music sources add themselves.
SOURCES: dict[str, tuple[Callable[[Any], str], Callable[[Any], Corpus]]] = {}


def register_source(name: str, fingerprint: Callable[[Any], str], build: Callable[[Any], Corpus]) -> None:
    SOURCES[name] = (fingerprint, build)


def get_source(name: str) -> tuple[Callable[[Any], str], Callable[[Any], Corpus]]:
    if name not in SOURCES:
        raise UserError(f"unknown dataset.source={name!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[name]


# ---------------------------------------------------------------- text


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


def text_fingerprint(cfg: Any) -> str:
    digest = hashlib.sha256(_text_path(cfg).read_bytes())
    digest.update(f"char|{cfg.val_fraction}|{cfg.test_fraction}".encode())
    return digest.hexdigest()


def split_stream(ids: list[int], val_fraction: float, test_fraction: float) -> dict[str, list[list[int]]]:
    """One token stream → train | test | val, in that order: val is the last `val_fraction`."""
    n = len(ids)
    val_start = n - int(n * val_fraction)
    test_start = val_start - int(n * test_fraction)
    return {"train": [ids[:test_start]], "test": [ids[test_start:val_start]], "val": [ids[val_start:]]}


def build_text(cfg: Any) -> Corpus:
    path = _text_path(cfg)
    text = read_text(path)
    tokenizer = CharTokenizer.fit(text)
    splits = split_stream(tokenizer.encode(text), cfg.val_fraction, cfg.test_fraction)
    stats = {"file": str(path), "characters": len(text), "vocab_size": tokenizer.vocab_size}
    return Corpus(tokenizer, splits, stats)


register_source("text", text_fingerprint, build_text)


# ---------------------------------------------------------------- music (generate/music_sources.py)


def _music(function: str) -> Callable[[Any], Any]:
    """A source function from generate.music_sources, imported on first use so text never pays for it."""

    def call(cfg: Any) -> Any:
        from generate import music_sources

        return getattr(music_sources, function)(cfg)

    return call


for _name in ("midi", "scores", "bach", "benchmark"):
    register_source(_name, _music(f"{_name}_fingerprint"), _music(f"build_{_name}"))
