"""Corpus: a tokenizer and token documents per split, what every source produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from generate.tokenizers import Tokenizer

SPLITS = ("train", "val", "test")


@dataclass
class Corpus:
    """A tokenizer and, per split, its documents: a TokenSplit (flat, memory-mapped) or, from a build, token lists."""

    tokenizer: Tokenizer
    splits: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)  # per-stage counts shown to the user
