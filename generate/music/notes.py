"""Notes, tracks and pieces (what music tokenizers encode and decode) and the grid they are quantized to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

QUARTER, SECOND = "quarter", "second"  # the two time units a Piece can be in

GridNote = tuple[int, int, int, int]  # (start_step, end_step, pitch, velocity)


@dataclass(frozen=True)
class Note:
    pitch: int  # MIDI note number
    start: float  # in the piece's unit
    end: float
    velocity: int = 100


PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


@dataclass(frozen=True)
class Meter:
    """A time signature that takes effect at `start` (in the piece's unit); a bar line falls there.

    A piece's first meter starts at its first downbeat: notes before it are a pickup (anacrusis).
    """

    numerator: int = 4
    denominator: int = 4
    start: float = 0.0

    @property
    def bar_quarters(self) -> float:
        """One bar's length in quarter notes (6/8: 3.0)."""
        return self.numerator * 4 / self.denominator

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator}"


@dataclass(frozen=True)
class Key:
    """A key: its tonic as a pitch class (0 = C .. 11 = B) and its mode."""

    tonic: int
    mode: str = "major"  # major | minor

    def transposed(self, semitones: int) -> Key:
        return Key((self.tonic + semitones) % 12, self.mode)

    def __str__(self) -> str:
        """Short name: 'D' for D major, 'Dm' for D minor."""
        return PITCH_CLASSES[self.tonic] + ("m" if self.mode == "minor" else "")


@dataclass
class Track:
    """One instrument (MIDI) or part (score): its notes in quarters or seconds.

    `meters`, `key`, `qpm` and `key_source` are the file's (every track of a file carries the same):
    extraction hands them on to the pieces it makes.
    """

    notes: list[Note]
    is_drum: bool = False
    name: str = ""
    meters: list[Meter] = field(default_factory=list)
    key: Key | None = None
    qpm: float | None = None
    key_source: str = ""  # "MIDI key signature", "score" (K: field, key signature) or "" (none: extraction estimates it)

    def transposed(self, semitones: int) -> Track:
        notes = [replace(n, pitch=n.pitch + semitones) for n in self.notes]
        key = self.key.transposed(semitones) if self.key else None
        return replace(self, notes=notes, key=key)


@dataclass
class Piece:
    """Notes in time order. `duration` keeps trailing rests that the notes alone would lose.

    `line_grid` > 0 says the notes already form one monophonic line on a grid of that many steps
    per quarter (melody extraction made it so), so a melody tokenizer on the same grid need not
    quantize them again.

    `meters` (time signatures, in time order; empty when unknown), `key` and `qpm` (tempo) are what
    the source said or what was estimated; tokenizers that keep them put them back on decoding.
    """

    notes: list[Note]
    duration: float = 0.0
    unit: str = QUARTER  # grid tokenizers work in quarter notes, the event tokenizer in seconds
    line_grid: int = 0
    meters: list[Meter] = field(default_factory=list)
    key: Key | None = None
    qpm: float | None = None

    def __post_init__(self) -> None:
        self.notes = sorted(self.notes, key=lambda n: (n.start, n.pitch, n.end))
        self.duration = max([self.duration] + [n.end for n in self.notes])

    def transposed(self, semitones: int) -> Piece:
        notes = [replace(n, pitch=n.pitch + semitones) for n in self.notes]
        key = self.key.transposed(semitones) if self.key else None
        return Piece(notes, self.duration, self.unit, self.line_grid, list(self.meters), key, self.qpm)

    def pitch_range(self) -> tuple[int, int] | None:
        if not self.notes:
            return None
        pitches = [n.pitch for n in self.notes]
        return min(pitches), max(pitches)

    def _scaled(self, scale: float, unit: str) -> Piece:
        notes = [replace(n, start=n.start * scale, end=n.end * scale) for n in self.notes]
        meters = [replace(m, start=m.start * scale) for m in self.meters]
        return Piece(notes, self.duration * scale, unit, 0, meters, self.key, self.qpm)

    def in_quarters(self, qpm: float) -> Piece:
        """The same piece with times in quarter notes (seconds are read at `qpm`)."""
        return self if self.unit == QUARTER else self._scaled(qpm / 60.0, QUARTER)

    def in_seconds(self, qpm: float) -> Piece:
        return self if self.unit == SECOND else self._scaled(60.0 / qpm, SECOND)


def to_steps(notes: Iterable[Note], steps_per_quarter: int) -> list[GridNote]:
    """Notes in quarters → (start_step, end_step, pitch, velocity) on the grid; every note lasts ≥ 1 step."""
    out = []
    for n in notes:
        start = round(n.start * steps_per_quarter)
        end = max(start + 1, round(n.end * steps_per_quarter))
        out.append((start, end, n.pitch, n.velocity))
    return out


def make_monophonic(steps: list[GridNote], rule: str = "highest") -> list[GridNote]:
    """Grid notes → one line: of notes starting on the same step the highest (or lowest) wins,
    and each note is cut off where the next one starts (Magenta's melody extraction does the same)."""
    sign = -1 if str(getattr(rule, "value", rule)) == "highest" else 1
    ordered = sorted(steps, key=lambda s: (s[0], sign * s[2]))
    line: list[GridNote] = []
    for start, end, pitch, velocity in ordered:
        if line and line[-1][0] == start:
            continue  # a lower (or higher) note of the same chord
        if line and line[-1][1] > start:
            prev = line[-1]
            line[-1] = (prev[0], start, prev[2], prev[3])
        line.append((start, end, pitch, velocity))
    return line


def grid_line(notes: Iterable[Note], steps_per_quarter: int, rule: str) -> list[GridNote]:
    """Notes in quarters → one monophonic line on the grid: the single place melodies are quantized."""
    return make_monophonic(to_steps(notes, steps_per_quarter), rule)


def line_piece(line: list[GridNote], steps_per_quarter: int, duration: float) -> Piece:
    """A grid line → a Piece marked as already quantized (see Piece.line_grid)."""
    spq = steps_per_quarter
    return Piece([Note(p, s / spq, e / spq, v) for s, e, p, v in line], duration, QUARTER, spq)


# ---------------------------------------------------------------- bars


def bar_lines(meters: list[Meter], end: float) -> list[float]:
    """Every bar line from the first meter's start up to (not including) `end`, meter changes honoured."""
    lines: list[float] = []
    for i, meter in enumerate(meters):
        stop = meters[i + 1].start if i + 1 < len(meters) else end
        t = meter.start
        while t < stop - 1e-9 and meter.bar_quarters > 0:
            lines.append(t)
            t += meter.bar_quarters
    return lines


def meters_from(meters: list[Meter], origin: float, end: float) -> list[Meter]:
    """The meters of the stretch origin..end, with times measured from `origin`.

    The first one starts at the first bar line at or after `origin` (what comes before is a pickup);
    meters that change before `origin` are left out, those after `end` too.
    """
    out: list[Meter] = []
    for i, meter in enumerate(meters):
        stop = meters[i + 1].start if i + 1 < len(meters) else float("inf")
        if stop <= origin + 1e-9 or meter.start >= end - 1e-9:
            continue
        start = meter.start
        if start < origin - 1e-9:  # the first bar line of this meter at or after origin
            bars = -(-(origin - start - 1e-9) // meter.bar_quarters)
            start += bars * meter.bar_quarters
        if start < min(stop, end) - 1e-9:
            out.append(replace(meter, start=start - origin))
    return out


def meter_for_length(quarters: float) -> Meter:
    """A time signature for a bar of this many quarters (6/8 for 3.0 is not guessed: n/4 when whole, else n/8)."""
    if abs(quarters - round(quarters)) < 1e-9:
        return Meter(max(1, round(quarters)), 4)
    if abs(quarters * 2 - round(quarters * 2)) < 1e-9:
        return Meter(round(quarters * 2), 8)
    return Meter(max(1, round(quarters * 4)), 16)
