"""Corpus: a tokenizer and token documents per split, what every source produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from generate.tokenizers import Tokenizer

SPLITS = ("train", "val", "test")


@dataclass
class Corpus:
    """A tokenizer and, per split, a list of documents (each a list of token ids)."""

    tokenizer: Tokenizer
    splits: dict[str, list[list[int]]]
    stats: dict[str, Any] = field(default_factory=dict)  # per-stage counts shown to the user
