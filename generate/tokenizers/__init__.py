"""One tokenizer interface and one static registry: each tokenization is a class, rebuilt from a plain dict."""

from __future__ import annotations

from typing import Any

from generate.tokenizers.base import Tokenizer
from generate.tokenizers.char import CharTokenizer
from generate.tokenizers.events import EventTokenizer
from generate.tokenizers.melody import MelodyTokenizer
from generate.tokenizers.music import MusicTokenizer
from generate.tokenizers.polyphonic import PolyphonicTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {
    cls.kind: cls for cls in (CharTokenizer, MelodyTokenizer, PolyphonicTokenizer, EventTokenizer)
}
MUSIC_TOKENIZERS: dict[str, type[MusicTokenizer]] = {
    cls.kind: cls for cls in (MelodyTokenizer, PolyphonicTokenizer, EventTokenizer)
}


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild any tokenizer from `Tokenizer.to_dict()` output (as stored in a checkpoint)."""
    kind = data.get("kind")
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind].from_dict(data)


__all__ = [
    "Tokenizer", "CharTokenizer", "MusicTokenizer", "MelodyTokenizer", "PolyphonicTokenizer", "EventTokenizer",
    "TOKENIZERS", "MUSIC_TOKENIZERS", "tokenizer_from_dict",
]
