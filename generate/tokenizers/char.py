"""Character tokens for any UTF-8 text; the vocabulary is the set of characters seen in training."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from generate.errors import UserError
from generate.tokenizers.base import Tokenizer

MAX_CODE_POINT = 0x10FFFF


class CharTokenizer(Tokenizer):
    kind: ClassVar[str] = "char"
    modality: ClassVar[str] = "text"

    def __init__(self, chars: Iterable[str]):
        self.chars: list[str] = sorted(set(chars))
        if not self.chars:
            raise ValueError("a character tokenizer needs at least one character")
        self.index = {ch: i for i, ch in enumerate(self.chars)}
        self._lookup: np.ndarray | None = None  # code point → id (-1: unseen), built on first vectorised use

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> CharTokenizer:
        """The vocabulary from per-code-point counts (what a streaming pass over a big file gathers)."""
        return cls(map(chr, np.flatnonzero(counts).tolist()))

    @staticmethod
    def code_points(text: str) -> np.ndarray:
        """A string's code points as uint32, without a Python loop over its characters."""
        return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)

    def encode_array(self, text: str) -> np.ndarray:
        """`text` → int32 ids in one vectorised lookup (the same ids as encode)."""
        if self._lookup is None:
            self._lookup = np.full(MAX_CODE_POINT + 1, -1, dtype=np.int32)
            self._lookup[[ord(ch) for ch in self.chars]] = np.arange(len(self.chars), dtype=np.int32)
        ids = self._lookup[self.code_points(text)]
        if len(ids) and ids.min() < 0:
            self.encode(text)  # raises the one-line error naming the unseen characters
        return ids

    def encode(self, item: str) -> list[int]:
        try:
            return [self.index[ch] for ch in item]
        except KeyError:
            unseen = sorted({ch for ch in item if ch not in self.index})
            shown = ", ".join(repr(ch) for ch in unseen[:10])
            raise UserError(
                f"the text has {len(unseen)} character(s) the model never saw: {shown}; "
                "remove them or train on text that contains them"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        return cls(data["chars"])

    def start_ids(self) -> list[int]:
        # Start like a fresh line of text when there is no prompt.
        return [self.index.get("\n", 0)]

    def token_name(self, token_id: int) -> str:
        return repr(self.chars[token_id])
