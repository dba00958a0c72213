"""One tokenizer interface; each tokenization is a class behind it, rebuilt from a plain dict."""

from __future__ import annotations

from typing import Any

from generate.tokenizers.base import Tokenizer
from generate.tokenizers.char import CharTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {CharTokenizer.kind: CharTokenizer}


def register(cls: type[Tokenizer]) -> type[Tokenizer]:
    """Class decorator: make a tokenizer loadable from checkpoints by its `kind`."""
    TOKENIZERS[cls.kind] = cls
    return cls


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild any tokenizer from `Tokenizer.to_dict()` output (as stored in a checkpoint)."""
    _import_music_tokenizers()
    kind = data.get("kind")
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind].from_dict(data)


def _import_music_tokenizers() -> None:
    # Imported lazily so text-only use never pays for them; each module registers itself.
    import importlib

    for module in ("melody", "polyphonic", "events"):
        try:
            importlib.import_module(f"generate.tokenizers.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"generate.tokenizers.{module}":
                raise


__all__ = ["Tokenizer", "CharTokenizer", "TOKENIZERS", "register", "tokenizer_from_dict"]
