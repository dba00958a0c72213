"""Expressive performance events: NOTE_ON, NOTE_OFF, TIME_SHIFT (10 ms steps up to 1 s), VELOCITY (32 bins)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from generate.music.extract import Extraction, performance_pieces
from generate.music.notes import SECOND, Note, Piece, Track
from generate.tokenizers.music import MusicTokenizer

TICKS_PER_SECOND = 100  # one TIME_SHIFT step is 10 ms
MAX_SHIFT = 100  # the longest single shift: 1 s; longer gaps are several shifts
VELOCITY_BINS = 32
DEFAULT_VELOCITY = 64  # used by decode until the first VELOCITY token


def velocity_bin(velocity: int) -> int:
    return min(VELOCITY_BINS - 1, max(0, int(velocity)) * VELOCITY_BINS // 128)


def bin_velocity(index: int) -> int:
    # The middle of the bin (4 MIDI velocities wide), so re-encoding gives the same bin.
    return index * 128 // VELOCITY_BINS + 128 // VELOCITY_BINS // 2


class EventTokenizer(MusicTokenizer):
    """Vocabulary: 0 SEP, then NOTE_ON(p) and NOTE_OFF(p) for p in min..max pitch, TIME_SHIFT(1..100
    ticks of 10 ms) and VELOCITY(0..31), the performance representation of Oore et al. (2018).

    Encoding is canonical: times are rounded to 10 ms; at one instant note-offs come before
    note-ons, each group in ascending pitch; VELOCITY appears only before a NOTE_ON whose bin
    differs from the current one. A note shorter than 10 ms lasts 10 ms; a note is cut where the
    next note of the same pitch starts.

    Decoding rule for any id sequence (it never raises): SEP ends every sounding note and takes no
    time; NOTE_ON of a pitch already sounding ends that note first (a re-strike); NOTE_OFF of a
    pitch not sounding is ignored; a note that would last no time at all is dropped; notes still
    sounding at the end last to the end; ids outside the vocabulary are ignored.
    """

    kind: ClassVar[str] = "events"
    unit: ClassVar[str] = SECOND

    @property
    def first_note_off(self) -> int:
        return 1 + self.num_pitches

    @property
    def first_shift(self) -> int:
        return 1 + 2 * self.num_pitches

    @property
    def first_velocity(self) -> int:
        return self.first_shift + MAX_SHIFT

    @property
    def vocab_size(self) -> int:
        return self.first_velocity + VELOCITY_BINS

    def _shifts(self, ticks: int) -> list[int]:
        tokens = []
        while ticks > 0:
            step = min(ticks, MAX_SHIFT)
            tokens.append(self.first_shift + step - 1)
            ticks -= step
        return tokens

    def encode(self, item: Piece) -> list[int]:
        """A piece in seconds → event tokens (pitches must be in range)."""
        by_pitch: dict[int, list[tuple[int, int, int]]] = {}
        for n in item.notes:
            if not self.in_range(n.pitch):
                raise ValueError(f"pitch {n.pitch} is outside {self.min_pitch}..{self.max_pitch}")
            start = round(n.start * TICKS_PER_SECOND)
            end = max(start + 1, round(n.end * TICKS_PER_SECOND))
            by_pitch.setdefault(n.pitch, []).append((start, end, n.velocity))
        events: list[tuple[int, int, int, int]] = []  # (tick, 0 = off / 1 = on, pitch, velocity)
        for pitch, notes in by_pitch.items():
            notes.sort()
            for i, (start, end, velocity) in enumerate(notes):
                if i + 1 < len(notes):
                    end = min(end, notes[i + 1][0])
                if end > start:  # two notes of one pitch starting together: the later one wins
                    events.append((start, 1, pitch, velocity))
                    events.append((end, 0, pitch, velocity))
        events.sort()
        tokens: list[int] = []
        now, current_bin = 0, None
        for tick, is_on, pitch, velocity in events:
            tokens += self._shifts(tick - now)
            now = tick
            if is_on:
                if velocity_bin(velocity) != current_bin:
                    current_bin = velocity_bin(velocity)
                    tokens.append(self.first_velocity + current_bin)
                tokens.append(1 + pitch - self.min_pitch)
            else:
                tokens.append(self.first_note_off + pitch - self.min_pitch)
        tokens += self._shifts(round(item.duration * TICKS_PER_SECOND) - now)
        return tokens

    def decode(self, ids: Sequence[int]) -> Piece:
        notes: list[Note] = []
        now, velocity = 0, DEFAULT_VELOCITY
        sounding: dict[int, tuple[int, int]] = {}  # pitch → (start tick, velocity)

        def end(pitch: int) -> None:
            start, vel = sounding.pop(pitch)
            if now > start:
                notes.append(Note(pitch, start / TICKS_PER_SECOND, now / TICKS_PER_SECOND, vel))

        for token in ids:
            token = int(token)
            if token == self.SEP:
                for pitch in list(sounding):
                    end(pitch)
            elif 1 <= token < self.first_note_off:
                pitch = token - 1 + self.min_pitch
                if pitch in sounding:
                    end(pitch)
                sounding[pitch] = (now, velocity)
            elif self.first_note_off <= token < self.first_shift:
                pitch = token - self.first_note_off + self.min_pitch
                if pitch in sounding:
                    end(pitch)
            elif self.first_shift <= token < self.first_velocity:
                now += token - self.first_shift + 1
            elif self.first_velocity <= token < self.vocab_size:
                velocity = bin_velocity(token - self.first_velocity)
        for pitch in list(sounding):
            end(pitch)
        return Piece(notes, now / TICKS_PER_SECOND, SECOND)

    def extract(self, tracks: list[Track], ex: Extraction, counts: Counter) -> list[Piece]:
        return performance_pieces(tracks, ex, counts)

    @classmethod
    def from_settings(cls, settings: Any) -> EventTokenizer:
        return cls(settings.min_pitch, settings.max_pitch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "min_pitch": self.min_pitch,
            "max_pitch": self.max_pitch,
            "ticks_per_second": TICKS_PER_SECOND,
            "max_shift": MAX_SHIFT,
            "velocity_bins": VELOCITY_BINS,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventTokenizer:
        return cls(data["min_pitch"], data["max_pitch"])

    def token_name(self, token_id: int) -> str:
        if token_id == self.SEP:
            return "SEP"
        if token_id < self.first_note_off:
            return f"NOTE_ON({token_id - 1 + self.min_pitch})"
        if token_id < self.first_shift:
            return f"NOTE_OFF({token_id - self.first_note_off + self.min_pitch})"
        if token_id < self.first_velocity:
            return f"TIME_SHIFT({(token_id - self.first_shift + 1) * 10}ms)"
        return f"VELOCITY({token_id - self.first_velocity})"
