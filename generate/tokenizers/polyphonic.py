"""Polyphony as piano-roll steps: the pitches sounding at each grid step in one pitch order, then STEP."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from generate.errors import UserError
from generate.music.extract import Extraction, roll_pieces
from generate.music.notes import Note, Piece, Track, to_steps
from generate.tokenizers.metre import MetreLayer
from generate.tokenizers.music import MusicTokenizer, metre_settings


class PolyphonicTokenizer(MusicTokenizer):
    """Vocabulary: 0 SEP (between pieces), 1 STEP (end of a time step), then one token per pitch.

    A step with no pitch is a lone STEP (silence). Every step ends with exactly one STEP and its
    pitches come in one order, ascending (the bass first, as RNN-NADE reads a frame) or, with
    `pitch_order="descending"`, the top voice first (the tune, then the harmony under it), or with
    `pitch_order="outer"` the top, then the bass, then the inner voices upward (the outer-voice frame first), so each
    sequence of pitch sets has exactly one token sequence; the summed negative log-likelihood divided
    by `count_time_steps` is the NLL per time step that the polyphonic music literature reports
    (Boulanger-Lewandowski et al. 2012). The model also gives some mass to orders that never occur
    (a pitch on the wrong side of the step's last), so that figure is an upper bound;
    `canonical_bounds` is the rule evaluation renormalizes over to get the exact NLL of a proper
    distribution over frames (generate/scoring.py, FrameSums). All orders describe the same frames,
    so their models can be mixed frame by frame (scoring.mix_frames).

    Like the benchmark piano rolls, a held note and a repeated note look the same: consecutive
    steps with the same pitch decode as one held note.

    Decoding rule for any id sequence (it never raises): the pitches since the last STEP form the
    step's set (order and repeats ignored); SEP closes a step that has pitches and takes no time;
    pitches left after the last STEP form a final step; ids outside the vocabulary are ignored.

    With `metre` ("bar" or "position") and `controls`, the ids of generate/tokenizers/metre.py follow
    (bar lines, metre, key and tempo; a POS goes before each step where a pitch starts); they take no
    time and are not time steps. An older checkpoint's dict (without these fields) gives the tokenizer
    without them, id for id.
    """

    kind: ClassVar[str] = "polyphonic"
    STEP: ClassVar[int] = 1
    FIRST_PITCH: ClassVar[int] = 2
    ORDERS: ClassVar[tuple[str, ...]] = ("ascending", "descending", "outer")

    def __init__(self, min_pitch: int = 21, max_pitch: int = 108, steps_per_quarter: int = 4, metre: str = "none",
                 controls: bool = False, pitch_order: str = "ascending"):
        super().__init__(min_pitch, max_pitch)
        self.steps_per_quarter = int(steps_per_quarter)
        if pitch_order not in self.ORDERS:
            raise UserError(f"dataset.pitch_order={pitch_order} is not one of {', '.join(self.ORDERS)}")
        self.pitch_order = pitch_order
        self.layer = MetreLayer(self.FIRST_PITCH + self.num_pitches, self.steps_per_quarter, str(metre), bool(controls))

    @property
    def vocab_size(self) -> int:
        return self.layer.end

    def encode_roll(self, roll: Iterable[Iterable[int]]) -> list[int]:
        """Time steps, each the MIDI pitches sounding in it → tokens (pitches must be in range; no bars)."""
        return [token for step in self._roll_steps(roll) for token in step]

    def _roll_steps(self, roll: Iterable[Iterable[int]]) -> list[list[int]]:
        steps: list[list[int]] = []
        for step in roll:
            tokens = []
            for pitch in self._ordered(step):
                if not self.in_range(pitch):
                    raise ValueError(f"pitch {pitch} is outside {self.min_pitch}..{self.max_pitch}")
                tokens.append(self.FIRST_PITCH + pitch - self.min_pitch)
            steps.append([*tokens, self.STEP])
        return steps

    def _ordered(self, step: Iterable[int]) -> list[int]:
        pitches = sorted(set(step))
        if self.pitch_order == "descending":
            return pitches[::-1]
        if self.pitch_order == "outer" and len(pitches) > 1:  # the top, the bass, then the inner voices upward
            return [pitches[-1], pitches[0], *pitches[1:-1]]
        return pitches

    def to_roll(self, piece: Piece) -> list[set[int]]:
        """A piece in quarter notes → the set of pitches sounding at each grid step."""
        steps = to_steps(piece.notes, self.steps_per_quarter)
        length = max([round(piece.duration * self.steps_per_quarter)] + [end for _, end, _, _ in steps])
        roll: list[set[int]] = [set() for _ in range(length)]
        for start, end, pitch, _ in steps:
            for t in range(start, end):
                roll[t].add(pitch)
        return roll

    def encode(self, item: Piece) -> list[int]:
        roll = self.to_roll(item)
        onsets = {t for t, pitches in enumerate(roll) if pitches - (roll[t - 1] if t else set())}
        return self.layer.weave(item, self._roll_steps(roll), onsets)

    def decode_roll(self, ids: Sequence[int]) -> list[set[int]]:
        ids = self.layer.unweave(ids, lambda token: int(token == self.STEP))[0]
        roll: list[set[int]] = []
        pending: set[int] = set()
        for token in ids:
            token = int(token)
            if token == self.STEP:
                roll.append(pending)
                pending = set()
            elif token == self.SEP:
                if pending:
                    roll.append(pending)
                    pending = set()
            elif self.FIRST_PITCH <= token < self.layer.base:
                pending.add(token - self.FIRST_PITCH + self.min_pitch)
        if pending:
            roll.append(pending)
        return roll

    def decode(self, ids: Sequence[int]) -> Piece:
        roll = self.decode_roll(ids)
        meters, key, qpm = self.layer.unweave(ids, lambda token: int(token == self.STEP))[1:]
        spq = self.steps_per_quarter
        notes: list[Note] = []
        started: dict[int, int] = {}  # pitch → the step its run began
        for t, pitches in enumerate([*roll, set()]):  # the empty sentinel ends every run
            for pitch in [p for p in started if p not in pitches]:
                notes.append(Note(pitch, started.pop(pitch) / spq, t / spq))
            for pitch in pitches:
                started.setdefault(pitch, t)
        return Piece(notes, len(roll) / spq, meters=meters, key=key, qpm=qpm)

    def count_time_steps(self, ids: Sequence[int]) -> int:
        """Time steps in a document: one per STEP token (evaluate divides the NLL by this)."""
        return sum(1 for token in ids if int(token) == self.STEP)

    @property
    def canonical_order(self) -> bool:
        """Whether canonical_bounds applies: without metre and control tokens every id is SEP, STEP or a pitch."""
        return self.layer.base == self.layer.end

    def canonical_bounds(self, context: np.ndarray, carry: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The grammar of canonical order: after each position of `context` (B, T ids), the next token is STEP or a
        pitch id in [low, high) (B, T each); SEP never, as evaluation conditions on the piece going on.

        Within a step pitches move one way, so the bound is the step's last pitch (none after a STEP or SEP): in
        ascending order the next is above it, in descending order below it. Both are one running maximum that
        restarts at each STEP, taken over the pitch ids read upward (ascending) or mirrored (descending). `carry`
        (B,) is that running bound entering the window (None: a fresh piece); the third value is it leaving.
        """
        if not self.canonical_order:
            raise UserError(
                f"canonical-order scoring needs a polyphonic model without metre or control tokens (this one has "
                f"metre={self.layer.metre}, controls={self.layer.controls}); evaluate it with canonical=false"
            )
        ids = np.asarray(context, dtype=np.int64)
        if self.pitch_order == "outer":
            return self._outer_bounds(ids, carry)
        rows, top = ids.shape[0], self.layer.base  # pitch ids are FIRST_PITCH .. top - 1
        is_pitch = ids >= self.FIRST_PITCH
        if self.pitch_order == "descending":
            ids = np.where(is_pitch, self.FIRST_PITCH + top - 1 - ids, ids)  # mirrored: descending reads as ascending
        start = np.full((rows, 1), self.FIRST_PITCH, dtype=np.int64) if carry is None else np.reshape(carry, (rows, 1))
        values = np.concatenate([start, np.where(is_pitch, ids + 1, self.FIRST_PITCH)], axis=1)
        # Offsetting each step's values by (steps so far) * span makes one running maximum restart at every STEP.
        segment = np.concatenate([np.zeros((rows, 1), dtype=np.int64), np.cumsum(~is_pitch, axis=1)], axis=1)
        span = self.vocab_size + 1
        lowest = (np.maximum.accumulate(values + segment * span, axis=1) - segment * span)[:, 1:]
        if self.pitch_order == "descending":  # mirrored id >= lowest  <=>  id < FIRST_PITCH + top - lowest
            low, high = np.full_like(lowest, self.FIRST_PITCH), self.FIRST_PITCH + top - lowest
        else:
            low, high = lowest, np.full_like(lowest, top)
        return low, high, lowest[:, -1].copy()

    def _outer_bounds(self, ids: np.ndarray, carry: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """canonical_bounds for the outer order: after a step's first pitch (its top) the next is below it; after
        the second (the bass) and later ones, above the last and below the top. The carry is (B, 3): the step's
        top, its last pitch and how many it has so far."""
        rows, width = ids.shape
        top, last, count = (np.zeros(rows, dtype=np.int64) for _ in range(3)) if carry is None else carry.T.copy()
        low, high = np.empty_like(ids), np.empty_like(ids)
        for t in range(width):  # a step is a few tokens, so no running reduction does this in one pass
            is_pitch = ids[:, t] >= self.FIRST_PITCH
            count = np.where(is_pitch, count + 1, 0)
            top = np.where(count == 1, ids[:, t], np.where(is_pitch, top, 0))
            last = np.where(is_pitch, ids[:, t], 0)
            low[:, t] = np.where(count <= 1, self.FIRST_PITCH, last + 1)
            high[:, t] = np.where(count == 0, self.layer.base, top)
        return low, high, np.stack([top, last, count], axis=1)

    def same_frames(self, other: object) -> bool:
        """Whether `other` writes the same time steps, perhaps in the other pitch order (mix_frames mixes their models)."""
        def frames(tokenizer: PolyphonicTokenizer) -> dict[str, Any]:
            return {k: v for k, v in tokenizer.definition().items() if k != "pitch_order"}
        return isinstance(other, PolyphonicTokenizer) and frames(self) == frames(other)

    def extract(self, tracks: list[Track], ex: Extraction, counts: Counter) -> list[Piece]:
        return roll_pieces(tracks, ex, counts)

    @classmethod
    def from_settings(cls, settings: Any) -> PolyphonicTokenizer:
        order = getattr(settings, "pitch_order", "ascending")
        return cls(settings.min_pitch, settings.max_pitch, settings.steps_per_quarter, *metre_settings(settings),
                   pitch_order=str(getattr(order, "value", order)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "min_pitch": self.min_pitch,
            "max_pitch": self.max_pitch,
            "steps_per_quarter": self.steps_per_quarter,
            **self.metre_dict(),
            # Only when not the default, so the dicts of ascending models (every one made before) stay as they were.
            **({"pitch_order": self.pitch_order} if self.pitch_order != "ascending" else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolyphonicTokenizer:
        return cls(data["min_pitch"], data["max_pitch"], data["steps_per_quarter"], data.get("metre", "none"),
                   data.get("controls", False), data.get("pitch_order", "ascending"))

    def token_name(self, token_id: int) -> str:
        if self.layer.base <= token_id < self.layer.end:
            return self.layer.name(token_id)
        if token_id == self.SEP:
            return "SEP"
        if token_id == self.STEP:
            return "STEP"
        return f"PITCH({token_id - self.FIRST_PITCH + self.min_pitch})"
