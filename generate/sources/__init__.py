"""Raw inputs → a tokenizer and token documents per split; one static registry of sources."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from generate.errors import UserError
from generate.sources import benchmark, music, text
from generate.sources.corpus import SPLITS, Corpus

# dataset.source → (fingerprint(cfg) -> str, build(cfg, workdir) -> Corpus). A build may write big token
# arrays straight into workdir (a fresh folder that becomes the token store); small ones return lists.
# Heavy libraries (music21, symusic) are imported inside the functions, so text-only use never pays for them.
SOURCES: dict[str, tuple[Callable[[Any], str], Callable[[Any, Path], Corpus]]] = {
    "text": (text.fingerprint, text.build),
    "midi": (music.midi_fingerprint, music.build_midi),
    "scores": (music.scores_fingerprint, music.build_scores),
    "bach": (music.bach_fingerprint, music.build_bach),
    "benchmark": (benchmark.fingerprint, benchmark.build),
}


def get_source(name: Any) -> tuple[Callable[[Any], str], Callable[[Any, Path], Corpus]]:
    name = getattr(name, "value", name)
    if name not in SOURCES:
        raise UserError(f"unknown dataset.source={name!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[name]


__all__ = ["SOURCES", "SPLITS", "Corpus", "get_source"]
