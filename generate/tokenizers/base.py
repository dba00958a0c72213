"""The interface every tokenizer implements: encode, decode, vocabulary, to/from a plain dict."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar


class Tokenizer(ABC):
    kind: ClassVar[str]  # key in the registry and in the saved dict
    modality: ClassVar[str]  # "text" or "music": decides how samples are written
    learned: ClassVar[tuple[str, ...]] = ()  # to_dict() keys that learn() fills in from the training split

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, item: Any) -> list[int]:
        """One item (a string, a melody, a piano roll, ...) to token ids."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> Any:
        """Token ids back to an item; any sequence of valid ids decodes without raising."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, int, float, list, dict) that `from_dict` rebuilds this tokenizer from."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer: ...

    def definition(self) -> dict[str, Any]:
        """to_dict() without what learn() fills in: tokenizers with the same definition encode alike."""
        return {k: v for k, v in self.to_dict().items() if k not in self.learned}

    def learn(self, train: Any) -> None:
        """Take decoding hints from the built corpus's training split (a TokenSplit); most tokenizers need none."""
        return None

    def start_ids(self) -> list[int]:
        """What generation starts from when no prompt is given."""
        return [0]

    def separator_id(self) -> int | None:
        """Token placed between documents of a corpus (None: documents are simply concatenated)."""
        return None

    def token_name(self, token_id: int) -> str:
        return str(token_id)
