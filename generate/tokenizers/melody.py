"""Monophonic melodies on a grid of `steps_per_quarter` steps: one token per step (NOTE_ON, NOTE_OFF or HOLD)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from generate.music.extract import Extraction, melody_pieces
from generate.music.notes import Note, Piece, Track, grid_line, line_piece
from generate.tokenizers.metre import MetreLayer
from generate.tokenizers.music import MusicTokenizer, metre_settings


def to_grid(notes: list[Note], spq: int) -> list[tuple[int, int, int, int]]:
    """Notes already on the grid → grid tuples (exact: times are multiples of 1/spq)."""
    return [(round(n.start * spq), round(n.end * spq), n.pitch, n.velocity) for n in notes]


class MelodyTokenizer(MusicTokenizer):
    """Vocabulary: 0 SEP (between pieces), 1 NOTE_OFF, 2 HOLD, then NOTE_ON(p) for p in min..max pitch.

    Every grid step is exactly one token: NOTE_ON starts a note (ending any sounding one), NOTE_OFF
    ends the sounding note, HOLD keeps what the previous step had (a note or a rest).

    Decoding rule for any id sequence (it never raises):
    - SEP ends any sounding note and takes no time (a leading SEP is the usual start);
    - NOTE_OFF with nothing sounding is a rest step; HOLD with nothing sounding (e.g. first) is a rest;
    - an id outside the vocabulary counts as HOLD;
    - a note still sounding at the end lasts to the end of the sequence.

    With `metre` ("bar" or "position") and `controls`, the ids of generate/tokenizers/metre.py follow
    (bar lines, metre, key and tempo); they take no time, and an older checkpoint's dict (without
    these fields) gives the tokenizer without them, id for id.
    """

    kind: ClassVar[str] = "melody"
    monophonic: ClassVar[bool] = True
    NOTE_OFF: ClassVar[int] = 1
    HOLD: ClassVar[int] = 2
    FIRST_PITCH: ClassVar[int] = 3

    def __init__(self, min_pitch: int = 21, max_pitch: int = 108, steps_per_quarter: int = 4, monophony: str = "highest",
                 metre: str = "none", controls: bool = False):
        super().__init__(min_pitch, max_pitch)
        self.steps_per_quarter = int(steps_per_quarter)
        self.monophony = str(getattr(monophony, "value", monophony))
        self.layer = MetreLayer(self.FIRST_PITCH + self.num_pitches, self.steps_per_quarter, str(metre), bool(controls))

    @property
    def vocab_size(self) -> int:
        return self.layer.end

    def note_on(self, pitch: int) -> int:
        if not self.in_range(pitch):
            raise ValueError(f"pitch {pitch} is outside {self.min_pitch}..{self.max_pitch}")
        return self.FIRST_PITCH + pitch - self.min_pitch

    def encode(self, item: Piece) -> list[int]:
        """A monophonic piece in quarter notes → one token per grid step (overlaps cut by `monophony`)."""
        spq = self.steps_per_quarter
        # Extraction already made the piece one line on this grid: it is quantized once, there.
        line = to_grid(item.notes, spq) if item.line_grid == spq else grid_line(item.notes, spq, self.monophony)
        length = max([round(item.duration * self.steps_per_quarter)] + [end for _, end, _, _ in line])
        tokens = [self.HOLD] * length
        sounding_until = None  # the step the previous note ends at
        for start, end, pitch, _ in line:
            if sounding_until is not None and sounding_until < start:
                tokens[sounding_until] = self.NOTE_OFF
            tokens[start] = self.note_on(pitch)
            sounding_until = end
        if sounding_until is not None and sounding_until < length:
            tokens[sounding_until] = self.NOTE_OFF
        onsets = {t for t, token in enumerate(tokens) if token >= self.FIRST_PITCH}
        return self.layer.weave(item, [[token] for token in tokens], onsets)

    def decode(self, ids: Sequence[int]) -> Piece:
        ids, meters, key, qpm = self.layer.unweave(ids, lambda token: int(token != self.SEP))
        piece = self._decode_steps(ids)
        piece.meters, piece.key, piece.qpm = meters, key, qpm
        return piece

    def count_time_steps(self, ids: Sequence[int]) -> int:
        """Grid steps in a document (every id but SEP and the bar/control ids): the NLL per time step divides by it."""
        return sum(1 for token in ids if int(token) != self.SEP and not self.layer.base <= int(token) < self.layer.end)

    def _decode_steps(self, ids: Sequence[int]) -> Piece:
        spq = self.steps_per_quarter
        notes: list[Note] = []
        step, current = 0, None  # current: (pitch, start step) of the sounding note

        def close() -> None:
            nonlocal current
            if current is not None:
                notes.append(Note(current[0], current[1] / spq, step / spq))
                current = None

        for token in ids:
            token = int(token)
            if token == self.SEP:
                close()
                continue
            if token == self.NOTE_OFF:
                close()
            elif self.FIRST_PITCH <= token < self.layer.base:
                close()
                current = (token - self.FIRST_PITCH + self.min_pitch, step)
            step += 1  # HOLD and unknown ids just let time pass
        close()
        return Piece(notes, step / spq)

    def piece_from_notes(self, notes: list[Note], duration: float) -> Piece:
        # A primer may be a chord-laden file: it becomes one line by the dataset's monophony rule.
        spq = self.steps_per_quarter
        return line_piece(grid_line(notes, spq, self.monophony), spq, duration)

    def extract(self, tracks: list[Track], ex: Extraction, counts: Counter) -> list[Piece]:
        return melody_pieces(tracks, ex, counts)

    def render_hints(self) -> dict[str, Any]:
        return {"grand_staff": False, "melody": True, "label": self.kind}

    @classmethod
    def from_settings(cls, settings: Any) -> MelodyTokenizer:
        return cls(settings.min_pitch, settings.max_pitch, settings.steps_per_quarter, str(settings.monophony.value),
                   *metre_settings(settings))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "min_pitch": self.min_pitch,
            "max_pitch": self.max_pitch,
            "steps_per_quarter": self.steps_per_quarter,
            "monophony": self.monophony,
            **self.metre_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MelodyTokenizer:
        return cls(data["min_pitch"], data["max_pitch"], data["steps_per_quarter"], data.get("monophony", "highest"),
                   data.get("metre", "none"), data.get("controls", False))

    def token_name(self, token_id: int) -> str:
        if self.layer.base <= token_id < self.layer.end:
            return self.layer.name(token_id)
        if token_id == self.SEP:
            return "SEP"
        if token_id == self.NOTE_OFF:
            return "NOTE_OFF"
        if token_id == self.HOLD:
            return "HOLD"
        return f"NOTE_ON({token_id - self.FIRST_PITCH + self.min_pitch})"
