"""MusicTokenizer: what the music tokenizers share (a pitch range, the separator 0, primers, hints)."""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from generate.errors import UserError
from generate.music.extract import Extraction
from generate.music.notes import QUARTER, Note, Piece, Track
from generate.tokenizers.base import Tokenizer


class MusicTokenizer(Tokenizer):
    """What the music tokenizers share: a pitch range, the separator 0, primers, rendering hints."""

    modality: ClassVar[str] = "music"
    SEP: ClassVar[int] = 0  # separates pieces; generation starts from it
    unit: ClassVar[str] = QUARTER
    monophonic: ClassVar[bool] = False  # extraction hint: one line per track (a score's `part` picks it)

    def __init__(self, min_pitch: int = 21, max_pitch: int = 108):
        if not 0 <= min_pitch <= max_pitch <= 127:
            raise UserError(
                f"dataset.min_pitch={min_pitch} and dataset.max_pitch={max_pitch} must satisfy 0 <= min <= max <= 127"
            )
        self.min_pitch, self.max_pitch = int(min_pitch), int(max_pitch)

    @property
    def num_pitches(self) -> int:
        return self.max_pitch - self.min_pitch + 1

    def in_range(self, pitch: int) -> bool:
        return self.min_pitch <= pitch <= self.max_pitch

    def start_ids(self) -> list[int]:
        return [self.SEP]

    def separator_id(self) -> int:
        return self.SEP

    def piece_from_notes(self, notes: list[Note], duration: float) -> Piece:
        """A primer's notes (already in this tokenizer's unit) → the Piece to encode. Melody overrides."""
        return Piece(notes, duration, self.unit)

    def extraction(self, **settings: Any) -> Extraction:
        """The extraction settings for this tokenizer's range, plus the dataset's `settings`."""
        return Extraction(self.min_pitch, self.max_pitch, **settings)

    @abstractmethod
    def extract(self, tracks: list[Track], ex: Extraction, counts: Counter) -> list[Piece]:
        """The tracks of one file → the pieces this tokenization encodes (counting what is dropped)."""

    def render_hints(self) -> dict[str, Any]:
        """Keyword arguments for generate.music.render.write_music: how this kind of music is written."""
        return {"grand_staff": True, "melody": False, "label": self.kind}

    def encode_primer(self, path: str | Path) -> list[int]:
        """A MIDI file → [separator] + its tokens, refusing files this model cannot continue."""
        from generate.music.read import read_primer

        notes, duration = read_primer(Path(path), self.unit)
        piece = self.piece_from_notes(notes, duration)
        outside = sorted({n.pitch for n in piece.notes if not self.in_range(n.pitch)})
        if outside:
            raise UserError(
                f"primer {path} has pitches {outside[:8]} outside this model's range "
                f"{self.min_pitch}..{self.max_pitch}; transpose the primer into that range"
            )
        return [self.SEP] + self.encode(piece)
