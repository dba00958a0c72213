"""Bars and control tokens for the grid tokenizers: BAR or position-in-bar marks, and metre/key/tempo controls.

The extra tokens come after a tokenizer's own vocabulary, so a tokenizer without them (an older
checkpoint's) keeps exactly its ids. Layout from `base` (the first free id):

- metre="bar": BAR, put before the first step of every bar;
- metre="position": POS(k) for k in 0..6*spq-1, put before every step with a note onset (k = the
  step's place in its bar, capped at the last);
- controls: METER(m) for each of METERS, then METER(other), METER(unknown); KEY(k) for the 24 keys
  (C, Cm, C#, C#m, ...) then KEY(unknown); TEMPO(b) for each tempo bucket then TEMPO(unknown).
  Every piece starts with METER, KEY, TEMPO; a later METER (a metre change) takes effect at the next
  bar line, which follows at once (a BAR, or the bar line the next POS implies).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from generate.errors import UserError
from generate.music.notes import PITCH_CLASSES, Key, Meter, Piece, meter_for_length

METRES = ("none", "bar", "position")
METERS = ("2/4", "3/4", "4/4", "2/2", "3/8", "6/8", "9/8", "12/8", "6/4", "3/2")
TEMPO_EDGES = (60, 76, 92, 108, 120, 132, 152, 176)  # bucket b holds EDGES[b-1] <= qpm < EDGES[b]
TEMPO_CENTRES = (50, 68, 84, 100, 114, 126, 142, 164, 190)  # what a decoded bucket plays at
KEY_NAMES = tuple(name + mode for name in PITCH_CLASSES for mode in ("", "m"))  # C, Cm, C#, C#m, ...
MAX_BAR_QUARTERS = 6  # position tokens cover bars up to 12/8, 6/4, 3/2


def parse_key(text: str) -> Key:
    """'D', 'Dm', 'F#m', 'Bb' (also 'd minor', 'Db major') → Key; UserError naming the accepted forms."""
    name = text.strip().replace(" major", "").replace(" minor", "m").replace("minor", "m")
    minor = name.endswith("m")
    tonic = name[:-1] if minor else name
    spelled = {"Db": "C#", "D#": "Eb", "Gb": "F#", "G#": "Ab", "A#": "Bb"}
    tonic = tonic[:1].upper() + tonic[1:]
    tonic = spelled.get(tonic, tonic)
    if tonic not in PITCH_CLASSES:
        raise UserError(f"key={text!r} is not a key; give a tonic and m for minor, e.g. key=D, key=Dm, key=F#m, key=Bb")
    return Key(PITCH_CLASSES.index(tonic), "minor" if minor else "major")


def parse_meter(text: str) -> str:
    """'6/8' → '6/8' when it is one of METERS; UserError listing them otherwise."""
    name = text.strip()
    if name not in METERS:
        raise UserError(f"meter={text!r} is not one this model knows; give one of {', '.join(METERS)}")
    return name


def tempo_bucket(qpm: float | None) -> int | None:
    if qpm is None or qpm <= 0:
        return None
    return sum(qpm >= edge for edge in TEMPO_EDGES)


@dataclass(frozen=True)
class MetreLayer:
    """Where the extra ids sit and how pieces gain and lose them (see the module docstring)."""

    base: int  # the first id after the tokenizer's own vocabulary
    steps_per_quarter: int
    metre: str = "none"
    controls: bool = False

    def __post_init__(self) -> None:
        if self.metre not in METRES:
            raise UserError(f"dataset.metre={self.metre!r} must be one of {', '.join(METRES)}")

    # ------------------------------------------------------------ layout
    @property
    def positions(self) -> int:
        return MAX_BAR_QUARTERS * self.steps_per_quarter if self.metre == "position" else 0

    @property
    def bar(self) -> int:
        return self.base if self.metre == "bar" else -1

    @property
    def first_pos(self) -> int:
        return self.base

    @property
    def first_meter(self) -> int:
        return self.base + (1 if self.metre == "bar" else self.positions)

    @property
    def first_key(self) -> int:
        return self.first_meter + len(METERS) + 2

    @property
    def first_tempo(self) -> int:
        return self.first_key + len(KEY_NAMES) + 1

    @property
    def size(self) -> int:
        """How many ids this layer adds."""
        marks = 1 if self.metre == "bar" else self.positions
        return marks + ((len(METERS) + 2) + (len(KEY_NAMES) + 1) + (len(TEMPO_EDGES) + 2) if self.controls else 0)

    @property
    def end(self) -> int:
        return self.base + self.size

    def meter_id(self, meter: Meter | str | None) -> int:
        if meter is None:
            return self.first_meter + len(METERS) + 1
        name = str(meter)
        return self.first_meter + (METERS.index(name) if name in METERS else len(METERS))

    def key_id(self, key: Key | None) -> int:
        return self.first_key + (KEY_NAMES.index(str(key)) if key is not None else len(KEY_NAMES))

    def move_keys(self, ids: np.ndarray, semitones: int) -> None:
        """In an id → id map (V,), send each KEY(k) to KEY(k moved by `semitones`), as Key.transposed does."""
        if self.controls:
            keys = np.arange(len(KEY_NAMES))  # tonic * 2 + (1 for minor)
            ids[self.first_key + keys] = self.first_key + (keys // 2 + semitones) % 12 * 2 + keys % 2

    def tempo_id(self, qpm: float | None) -> int:
        bucket = tempo_bucket(qpm)
        return self.first_tempo + (len(TEMPO_EDGES) + 1 if bucket is None else bucket)

    def name(self, token: int) -> str:
        if token == self.bar:
            return "BAR"
        if self.metre == "position" and self.first_pos <= token < self.first_pos + self.positions:
            return f"POS({token - self.first_pos})"
        if self.first_meter <= token < self.first_key:
            i = token - self.first_meter
            return f"METER({(*METERS, 'other', 'unknown')[i]})"
        if self.first_key <= token < self.first_tempo:
            i = token - self.first_key
            return f"KEY({(*KEY_NAMES, 'unknown')[i]})"
        i = token - self.first_tempo
        return f"TEMPO({'unknown' if i > len(TEMPO_EDGES) else TEMPO_CENTRES[i]})"

    # ------------------------------------------------------------ encoding
    def control_ids(self, piece: Piece) -> list[int]:
        if not self.controls:
            return []
        first = piece.meters[0] if piece.meters else None
        return [self.meter_id(first), self.key_id(piece.key), self.tempo_id(piece.qpm)]

    def marks(self, piece: Piece, steps: int, onsets: set[int]) -> dict[int, list[int]]:
        """Step → the extra ids that go just before it (bar lines, positions, metre changes)."""
        spq = self.steps_per_quarter
        out: dict[int, list[int]] = {}
        if self.metre == "none" or not piece.meters:
            return out
        for i, meter in enumerate(piece.meters):
            begin = round(meter.start * spq)
            stop = round(piece.meters[i + 1].start * spq) if i + 1 < len(piece.meters) else steps
            bar = max(1, round(meter.bar_quarters * spq))
            if i and self.controls:
                out.setdefault(begin, []).append(self.meter_id(meter))
            if self.metre == "bar":
                for t in range(begin, stop, bar):
                    out.setdefault(t, []).append(self.bar)
            else:
                # Pickup onsets (before the first bar line) count back from it; later ones forward.
                low = 0 if i == 0 else begin
                for t in sorted(o for o in onsets if low <= o < stop):
                    out.setdefault(t, []).append(self.first_pos + min((t - begin) % bar, self.positions - 1))
        return out

    def weave(self, piece: Piece, steps: list[list[int]], onsets: set[int]) -> list[int]:
        """Controls, then each step's ids after the marks that go before it."""
        marks = self.marks(piece, len(steps), onsets)
        out = self.control_ids(piece)
        for t, ids in enumerate(steps):
            out += marks.get(t, [])
            out += ids
        return out

    # ------------------------------------------------------------ decoding
    def unweave(self, ids: Sequence[int], advances: Callable[[int], int]) -> tuple[list[int], list[Meter], Key | None,
                                                                                 float | None]:
        """Ids → (the tokenizer's own ids, the meters the marks say, the first key and tempo given).

        `advances(id)` is how many grid steps a body id moves time on. Never raises.
        """
        spq = self.steps_per_quarter
        body: list[int] = []
        meters: list[Meter] = []
        key: Key | None = None
        qpm: float | None = None
        pending: str | None = None  # a METER seen, waiting for its bar line
        other_at: int | None = None  # 'other' metre: the first bar line, until the second gives the length
        seen_key = seen_tempo = False
        steps = 0

        def line(at: int) -> None:
            nonlocal pending, other_at
            if pending == "other":
                if other_at is None:
                    other_at = at
                    return
                if at > other_at:
                    meters.append(replace_start(meter_for_length((at - other_at) / spq), other_at / spq))
                pending, other_at = None, None
            elif pending is not None:
                meters.append(replace_start(meter_of(pending), at / spq))
                pending = None
            elif meters:  # an irregular bar line restarts the current metre's grid there
                current = meters[-1]
                bar = max(1, round(current.bar_quarters * spq))
                if at > round(current.start * spq) and (at - round(current.start * spq)) % bar:
                    meters.append(replace_start(current, at / spq))

        for token in ids:
            token = int(token)
            if not self.base <= token < self.end:
                body.append(token)
                steps += advances(token)
            elif token == self.bar:
                line(steps)
            elif self.metre == "position" and token < self.first_pos + self.positions:
                # The bar line this position counts from; a pickup's lies ahead (the first downbeat).
                named = pending not in (None, "other")
                meter = meter_of(pending) if named else (meters[-1] if meters and pending is None else None)
                if meter is not None:
                    at = steps - (token - self.first_pos)
                    while named and at < 0:
                        at += max(1, round(meter.bar_quarters * spq))
                    line(at)
            elif token < self.first_key:
                i = token - self.first_meter
                pending = METERS[i] if i < len(METERS) else ("other" if i == len(METERS) else None)
            elif token < self.first_tempo:
                i = token - self.first_key
                if not seen_key:
                    key = Key(i // 2, "minor" if i % 2 else "major") if i < len(KEY_NAMES) else None
                seen_key = True
            else:
                i = token - self.first_tempo
                if not seen_tempo and i <= len(TEMPO_EDGES):
                    qpm = float(TEMPO_CENTRES[i])
                seen_tempo = True
        return body, meters, key, qpm


def meter_of(name: str) -> Meter:
    numerator, denominator = name.split("/")
    return Meter(int(numerator), int(denominator))


def replace_start(meter: Meter, start: float) -> Meter:
    return Meter(meter.numerator, meter.denominator, start)
