"""MusicTokenizer: what the music tokenizers share (a pitch range, the separator 0, primers, hints)."""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from generate.errors import UserError
from generate.music.extract import Extraction, fold_into_range, key_shift, piece_key
from generate.music.notes import QUARTER, Key, Note, Piece, Track, meters_from
from generate.tokenizers.base import Tokenizer
from generate.tokenizers.metre import MetreLayer, parse_key, parse_meter


def metre_settings(settings: Any) -> tuple[str, bool]:
    """(metre, controls) from dataset settings; settings without them (older configs) give ("none", False)."""
    metre = getattr(settings, "metre", "none")
    return str(getattr(metre, "value", metre)), bool(getattr(settings, "controls", False))


class MusicTokenizer(Tokenizer):
    """What the music tokenizers share: a pitch range, the separator 0, primers, rendering hints."""

    modality: ClassVar[str] = "music"
    SEP: ClassVar[int] = 0  # separates pieces; generation starts from it
    unit: ClassVar[str] = QUARTER
    monophonic: ClassVar[bool] = False  # extraction hint: one line per track (a score's `part` picks it)
    layer: MetreLayer | None = None  # bar and control ids (grid tokenizers set it; see metre.py)

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

    def transposition_ids(self, semitones: int) -> np.ndarray:
        """Each id moved by `semitones` (V,), so that encode(piece.transposed(k)) == transposition_ids(k)[encode(piece)]:
        a pitch id to the pitch that many semitones away (-1 where that leaves the range), a KEY control to the
        moved key, every other id unchanged. For the grid tokenizers, whose pitch ids sit just below their layer's."""
        if self.layer is None:
            raise UserError(f"transpositions= is for the polyphonic and melody tokenizers; this model has {self.kind} tokens")
        first = self.layer.base - self.num_pitches
        ids = np.arange(self.vocab_size)
        pitch = (ids >= first) & (ids < first + self.num_pitches)
        moved = np.where(pitch, ids + semitones, ids)
        moved[pitch & ((moved < first) | (moved >= first + self.num_pitches))] = -1
        self.layer.move_keys(moved, semitones)
        return moved

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

    def metre_dict(self) -> dict[str, Any]:
        """The metre fields for to_dict, only when on: a dict without them rebuilds the tokenizer without them."""
        if self.layer is None:
            return {}
        return {**({"metre": self.layer.metre} if self.layer.metre != "none" else {}),
                **({"controls": True} if self.layer.controls else {})}

    @property
    def has_controls(self) -> bool:
        return self.layer is not None and self.layer.controls

    def control_ids(self, meter: str | None = None, key: str | Key | None = None) -> list[int]:
        """The control ids a piece in `meter` and `key` starts with (after SEP), in the order the model reads them:
        METER then KEY. Refuses (one line) a model trained without control tokens."""
        if meter is None and key is None:
            return []
        if self.layer is None or not self.layer.controls:
            given = " and ".join(f"{k}=" for k, v in (("meter", meter), ("key", key)) if v is not None)
            raise UserError(f"{given} needs a model trained with control tokens (dataset.controls=true); this "
                            f"{self.kind} model has none, so sample without {given}")
        ids = [self.layer.meter_id(parse_meter(meter)) if meter is not None else None]
        if key is not None:
            ids.append(self.layer.key_id(key if isinstance(key, Key) else parse_key(key)))
        return [i for i in ids if i is not None]

    def primer_piece(self, tracks: list[Track]) -> Piece:
        """A primer's pitched tracks → the one piece to encode (from its first note on, its bars kept)."""
        notes = [n for t in tracks for n in t.notes]
        first = min(n.start for n in notes)
        notes = [Note(n.pitch, n.start - first, n.end - first, n.velocity) for n in notes]
        end = max(n.end for n in notes)
        piece = self.piece_from_notes(notes, end)
        piece.meters = meters_from(tracks[0].meters, first, first + end) if self.unit == QUARTER else []
        piece.key, piece.qpm = piece_key(tracks, Counter()), tracks[0].qpm
        return piece

    def primer_ids(self, path: str | Path, to_c: bool = False) -> tuple[list[int], int]:
        """A MIDI or score file → ([separator] + its tokens, the semitones it was moved by), through the training
        pipeline: moved to C major / A minor when the dataset was (`to_c`), moved by octaves into the range,
        reduced to this tokenization (one line for melodies). Refuses only what no octave move can fit."""
        from generate.music.read import read_primer_tracks

        tracks = read_primer_tracks(Path(path), self.unit)
        shift = key_shift([n for t in tracks for n in t.notes]) if to_c else 0
        tracks = [t.transposed(shift) for t in tracks] if shift else tracks
        piece = fold_into_range(self.primer_piece(tracks), self.min_pitch, self.max_pitch, Counter())
        if piece is None:
            raise UserError(
                f"primer {path} has pitch classes that no octave brings into this model's range "
                f"{self.min_pitch}..{self.max_pitch} (narrower than an octave); use a model with a wider range"
            )
        return [self.SEP] + self.encode(piece), shift

    def encode_primer(self, path: str | Path) -> list[int]:
        """A MIDI (or score) file → [separator] + its tokens (primer_ids without the key move)."""
        return self.primer_ids(path)[0]
