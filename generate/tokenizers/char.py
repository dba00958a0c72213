"""Character tokens for any UTF-8 text; the vocabulary is the set of characters seen in training."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from generate.errors import UserError
from generate.tokenizers.base import Tokenizer


class CharTokenizer(Tokenizer):
    kind: ClassVar[str] = "char"
    modality: ClassVar[str] = "text"

    def __init__(self, chars: Iterable[str]):
        self.chars: list[str] = sorted(set(chars))
        if not self.chars:
            raise ValueError("a character tokenizer needs at least one character")
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

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
