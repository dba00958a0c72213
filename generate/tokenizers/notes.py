"""Notes and pieces (the item music tokenizers encode and decode) and the base class they share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from generate.runtime import UserError
from generate.tokenizers.base import Tokenizer

QUARTER, SECOND = "quarter", "second"  # the two time units a Piece can be in


@dataclass(frozen=True)
class Note:
    pitch: int  # MIDI note number
    start: float  # in the piece's unit
    end: float
    velocity: int = 100


@dataclass
class Piece:
    """Notes in time order. `duration` keeps trailing rests that the notes alone would lose."""

    notes: list[Note]
    duration: float = 0.0
    unit: str = QUARTER  # grid tokenizers work in quarter notes, the event tokenizer in seconds

    def __post_init__(self) -> None:
        self.notes = sorted(self.notes, key=lambda n: (n.start, n.pitch, n.end))
        self.duration = max([self.duration] + [n.end for n in self.notes])

    def transposed(self, semitones: int) -> Piece:
        notes = [replace(n, pitch=n.pitch + semitones) for n in self.notes]
        return Piece(notes, self.duration, self.unit)

    def pitch_range(self) -> tuple[int, int] | None:
        if not self.notes:
            return None
        pitches = [n.pitch for n in self.notes]
        return min(pitches), max(pitches)

    def in_quarters(self, qpm: float) -> Piece:
        """The same piece with times in quarter notes (seconds are read at `qpm`)."""
        if self.unit == QUARTER:
            return self
        scale = qpm / 60.0
        notes = [replace(n, start=n.start * scale, end=n.end * scale) for n in self.notes]
        return Piece(notes, self.duration * scale, QUARTER)

    def in_seconds(self, qpm: float) -> Piece:
        if self.unit == SECOND:
            return self
        scale = 60.0 / qpm
        notes = [replace(n, start=n.start * scale, end=n.end * scale) for n in self.notes]
        return Piece(notes, self.duration * scale, SECOND)


def to_steps(notes: Iterable[Note], steps_per_quarter: int) -> list[tuple[int, int, int, int]]:
    """Notes in quarters → (start_step, end_step, pitch, velocity) on the grid; every note lasts ≥ 1 step."""
    out = []
    for n in notes:
        start = round(n.start * steps_per_quarter)
        end = max(start + 1, round(n.end * steps_per_quarter))
        out.append((start, end, n.pitch, n.velocity))
    return out


def make_monophonic(steps: list[tuple[int, int, int, int]], rule: str = "highest") -> list[tuple[int, int, int, int]]:
    """Grid notes → one line: of notes starting on the same step the highest (or lowest) wins,
    and each note is cut off where the next one starts (Magenta's melody extraction does the same)."""
    if rule not in ("highest", "lowest"):
        raise UserError(f"dataset.monophony={rule!r} must be highest or lowest")
    sign = -1 if rule == "highest" else 1
    ordered = sorted(steps, key=lambda s: (s[0], sign * s[2]))
    line: list[tuple[int, int, int, int]] = []
    for start, end, pitch, velocity in ordered:
        if line and line[-1][0] == start:
            continue  # a lower (or higher) note of the same chord
        if line and line[-1][1] > start:
            prev = line[-1]
            line[-1] = (prev[0], start, prev[2], prev[3])
        line.append((start, end, pitch, velocity))
    return line


class MusicTokenizer(Tokenizer):
    """What the music tokenizers share: a pitch range, the separator 0, primers, rendering hints."""

    modality: ClassVar[str] = "music"
    SEP: ClassVar[int] = 0  # separates pieces; generation starts from it
    unit: ClassVar[str] = QUARTER

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

    def encode_primer(self, path: str | Path) -> list[int]:
        """A MIDI file → [separator] + its tokens, refusing files this model cannot continue."""
        from generate.music import read_primer  # pretty_midi only when a primer is used

        notes, duration = read_primer(Path(path), self.unit)
        piece = self.piece_from_notes(notes, duration)
        outside = sorted({n.pitch for n in piece.notes if not self.in_range(n.pitch)})
        if outside:
            raise UserError(
                f"primer {path} has pitches {outside[:8]} outside this model's range "
                f"{self.min_pitch}..{self.max_pitch}; transpose the primer into that range"
            )
        return [self.SEP] + self.encode(piece)
