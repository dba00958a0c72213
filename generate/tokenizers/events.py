"""Expressive performance events: NOTE_ON, NOTE_OFF, TIME_SHIFT (10 ms steps up to 1 s), VELOCITY (32 bins)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from generate.music.extract import Extraction, performance_pieces
from generate.music.notes import SECOND, Note, Piece, Track
from generate.tokenizers.music import MusicTokenizer

TICKS_PER_SECOND = 100  # one TIME_SHIFT step is 10 ms
MAX_SHIFT = 100  # the longest single shift: 1 s; longer gaps are several shifts
VELOCITY_BINS = 32
DEFAULT_VELOCITY = 64  # used by decode until the first VELOCITY token
DEFAULT_MAX_DURATION = 5.0  # seconds a decoded note may last when the training data's figure is unknown
DURATION_PERCENTILE = 99.9  # the cap learned from training: this percentile of the training notes' durations
FULL_PIANO = (21, 108)  # the default range: all 88 keys, so a piano folder loses no bass


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
    pitch not sounding is ignored; a note that would last no time at all is dropped; ids outside the
    vocabulary are ignored. No note lasts longer than `max_duration` seconds: a note whose NOTE_OFF
    has not come by then ends there (so a sample never drones on a forgotten note), and so do notes
    still sounding at the end. `max_duration` is the training notes' 99.9th-percentile duration,
    learned when the corpus is built (`learn`) and kept in the checkpoint; 5 s when unknown.
    """

    kind: ClassVar[str] = "events"
    learned: ClassVar[tuple[str, ...]] = ("max_duration",)  # decoding's cap; encoding never reads it
    unit: ClassVar[str] = SECOND

    def __init__(self, min_pitch: int = FULL_PIANO[0], max_pitch: int = FULL_PIANO[1], max_duration: float | None = None):
        super().__init__(min_pitch, max_pitch)
        self.max_duration = None if max_duration is None else float(max_duration)

    @property
    def max_ticks(self) -> int:
        """The longest a decoded note lasts, in 10 ms ticks (at least one)."""
        seconds = DEFAULT_MAX_DURATION if self.max_duration is None else self.max_duration
        return max(1, round(seconds * TICKS_PER_SECOND))

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
        now, velocity, cap = 0, DEFAULT_VELOCITY, self.max_ticks
        deadline = cap  # no sounding note can reach the cap before this tick
        sounding: dict[int, tuple[int, int]] = {}  # pitch → (start tick, velocity)

        def end(pitch: int) -> None:
            start, vel = sounding.pop(pitch)
            stop = min(now, start + cap)  # a note past the cap ended at the cap
            if stop > start:
                notes.append(Note(pitch, start / TICKS_PER_SECOND, stop / TICKS_PER_SECOND, vel))

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
                deadline = min(deadline, now + cap)
            elif self.first_note_off <= token < self.first_shift:
                pitch = token - self.first_note_off + self.min_pitch
                if pitch in sounding:
                    end(pitch)
            elif self.first_shift <= token < self.first_velocity:
                now += token - self.first_shift + 1
                if now >= deadline:  # some note may have reached the cap (the deadline is never late, may be early)
                    for pitch in [p for p, (start, _) in sounding.items() if now - start >= cap]:
                        end(pitch)  # ends at start + cap
                    deadline = min((start for start, _ in sounding.values()), default=now) + cap
            elif self.first_velocity <= token < self.vocab_size:
                velocity = bin_velocity(token - self.first_velocity)
        for pitch in list(sounding):
            end(pitch)
        return Piece(notes, now / TICKS_PER_SECOND, SECOND)

    def extract(self, tracks: list[Track], ex: Extraction, counts: Counter) -> list[Piece]:
        return performance_pieces(tracks, ex, counts)

    def learn(self, train: Any) -> None:
        """Take the note-length cap from the training split (a TokenSplit): its notes' 99.9th-percentile duration."""
        durations = note_ticks(np.asarray(train.tokens), self)
        if len(durations):
            self.max_duration = float(np.ceil(np.percentile(durations, DURATION_PERCENTILE))) / TICKS_PER_SECOND

    @classmethod
    def from_settings(cls, settings: Any) -> EventTokenizer:
        low, high = (FULL_PIANO[0] if settings.min_pitch is None else settings.min_pitch,
                     FULL_PIANO[1] if settings.max_pitch is None else settings.max_pitch)
        return cls(low, high)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "kind": self.kind,
            "min_pitch": self.min_pitch,
            "max_pitch": self.max_pitch,
            "ticks_per_second": TICKS_PER_SECOND,
            "max_shift": MAX_SHIFT,
            "velocity_bins": VELOCITY_BINS,
        }
        if self.max_duration is not None:  # absent (a checkpoint from before the cap, or nothing learned): 5 s
            data["max_duration"] = self.max_duration
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventTokenizer:
        return cls(data["min_pitch"], data["max_pitch"], data.get("max_duration"))

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


def note_ticks(tokens: np.ndarray, tok: EventTokenizer) -> np.ndarray:
    """Every note's length in ticks in a canonical event stream (documents back to back), vectorised.

    Each NOTE_ON is paired with the next event of its pitch when that is a NOTE_OFF, as encode writes them.
    """
    tokens = tokens.astype(np.int64)
    is_shift = (tokens >= tok.first_shift) & (tokens < tok.first_velocity)
    now = np.cumsum(np.where(is_shift, tokens - tok.first_shift + 1, 0))
    on = (tokens >= 1) & (tokens < tok.first_note_off)
    off = (tokens >= tok.first_note_off) & (tokens < tok.first_shift)
    at = np.flatnonzero(on | off)
    pitch = np.where(on[at], tokens[at] - 1, tokens[at] - tok.first_note_off)
    order = at[np.argsort(pitch, kind="stable")]  # by pitch, each pitch's events in time order
    pitch = np.sort(pitch, kind="stable")
    pair = on[order[:-1]] & off[order[1:]] & (pitch[:-1] == pitch[1:])
    return now[order[1:][pair]] - now[order[:-1][pair]]
