"""MIDI bytes → tracks, tempos and time/key signatures (symusic's C++ parser), or the true reason there are none."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MSPQ = 500_000  # the tempo a file without a tempo event plays at (120 quarters a minute), as the MIDI spec says
SMPTE_RATES = {24: 24.0, 25: 25.0, 29: 30000 / 1001, 30: 30.0}  # frames a second; "29" is 29.97 drop-frame
SMPTE_QPM = 120.0  # an SMPTE file counts time, not beats: its quarters are read as half seconds (scores are too)
HEADER = struct.Struct(">4sIHHH")  # "MThd", header length, format, track count, division


class SkipReason(str, Enum):
    """Why a file gives no music; the value is the text a dataset summary counts."""

    EMPTY = "empty file (0 bytes)"
    NOT_MIDI = "not a MIDI file (no MThd header)"
    TRUNCATED = "truncated MIDI file (ends inside its header or a chunk)"
    CORRUPT = "corrupt MIDI file (has a header, but its data does not parse)"
    SMPTE_TIMING = "unsupported timing (SMPTE at a frame rate other than 24, 25, 29.97 or 30 frames per second)"
    NO_TRACKS = "MIDI file with no tracks"


class MidiSkip(Exception):
    """A file that cannot give music, and why; `reason` is what callers count, `detail` what they may log."""

    def __init__(self, reason: SkipReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


@dataclass
class MidiTrack:
    """One instrument: a (MIDI track, channel, program) with notes, as pretty_midi splits them too."""

    name: str
    program: int
    is_drum: bool
    pitches: np.ndarray = field(repr=False)  # int, one per note
    velocities: np.ndarray = field(repr=False)
    start_ticks: np.ndarray = field(repr=False)  # int64: quarters are ticks / ticks_per_quarter (tempo-independent)
    end_ticks: np.ndarray = field(repr=False)


@dataclass
class MidiContent:
    """What a MIDI file says, in quarter notes (times of tempos and signatures too)."""

    ticks_per_quarter: float  # an SMPTE-timed file's is ticks per half second (see SMPTE_QPM), possibly fractional
    tracks: list[MidiTrack]
    tempos: list[tuple[float, float]]  # (time, quarters per minute); the first is at 0
    time_signatures: list[tuple[float, int, int]]  # (time, numerator, denominator)
    key_signatures: list[tuple[float, int, str]]  # (time, sharps (flats < 0) as music21 counts them, major|minor)
    _tempo_ticks: np.ndarray = field(repr=False)  # int64 tick each tempo starts at, 0 first
    _tempo_seconds: np.ndarray = field(repr=False)  # float64 second each tempo starts at
    _seconds_per_tick: np.ndarray = field(repr=False)  # float64, one per tempo

    def seconds(self, ticks: np.ndarray) -> np.ndarray:
        """Ticks → seconds, honouring every tempo change (vectorised: one search for all the ticks)."""
        at = np.searchsorted(self._tempo_ticks, ticks, side="right") - 1
        return self._tempo_seconds[at] + (ticks - self._tempo_ticks[at]) * self._seconds_per_tick[at]

    def times(self, track: MidiTrack, in_seconds: bool) -> tuple[np.ndarray, np.ndarray]:
        """A track's note starts and ends (float64) in quarters, or in seconds via the tempo map."""
        if in_seconds:
            return self.seconds(track.start_ticks), self.seconds(track.end_ticks)
        return track.start_ticks / self.ticks_per_quarter, track.end_ticks / self.ticks_per_quarter

    def duration_seconds(self) -> float:
        last = max((int(t.end_ticks.max()) for t in self.tracks if len(t.end_ticks)), default=0)
        return float(self.seconds(np.array([last], dtype=np.int64))[0])


def read_midi_file(path: str | Path) -> MidiContent:
    """A MIDI file → its content; raises MidiSkip (never anything else for bad data) when it has none to give."""
    return read_midi_bytes(Path(path).read_bytes())


def read_midi_bytes(data: bytes) -> MidiContent:
    from symusic import Score  # imported here so importing this module stays cheap for tools that only list reasons

    data, chunk_overrun = check_header(data)
    smpte = smpte_ticks_per_second(data)
    if smpte:  # MiniMidi (inside symusic) refuses SMPTE division: hand it the ticks as if per quarter, time them here
        data = data[:12] + struct.pack(">H", int(HEADER.unpack_from(data)[4] & 0xFF) * (256 - (data[12]))) + data[14:]
    try:
        score = Score.from_midi(data)
    except Exception as err:  # symusic raises RuntimeError/range_error with MiniMidi's message; which one varies
        reason = SkipReason.TRUNCATED if chunk_overrun else SkipReason.CORRUPT
        raise MidiSkip(reason, str(err)) from err
    return _content(score, smpte)


def smpte_ticks_per_second(data: bytes) -> float:
    """An SMPTE-timed file's ticks a second (frames a second × ticks a frame); 0 for one timed in ticks a quarter."""
    division = HEADER.unpack_from(data)[4]
    return SMPTE_RATES[256 - (division >> 8)] * (division & 0xFF) if division & 0x8000 else 0.0


def check_header(data: bytes) -> tuple[bytes, bool]:
    """Sort out the files that are not readable MIDI from their 14-byte header and chunk headers alone.

    Returns the bytes to parse (a longer-than-6-byte header, which the MIDI spec allows but symusic refuses,
    is cut back to 6) and whether a chunk claims to run past the end of the file, so that a parse failure
    can be told as truncation rather than corruption.
    """
    if not data:
        raise MidiSkip(SkipReason.EMPTY)
    if not data.startswith(b"MThd"):
        # RIFF-wrapped MIDI (.rmi) lands here too: neither symusic nor mido unwraps it
        raise MidiSkip(SkipReason.NOT_MIDI, repr(data[:4]))
    if len(data) < HEADER.size:
        raise MidiSkip(SkipReason.TRUNCATED, f"{len(data)} bytes, the header alone is {HEADER.size}")
    _, length, _, tracks, division = HEADER.unpack_from(data)
    if length < 6:
        raise MidiSkip(SkipReason.CORRUPT, f"header length {length}")
    if division & 0x8000:
        # Frames per second and ticks per frame instead of ticks per quarter: read, as time, at the four real rates.
        fps, per_frame = 256 - (division >> 8), division & 0xFF
        if fps not in SMPTE_RATES:
            raise MidiSkip(SkipReason.SMPTE_TIMING, f"{fps} frames/s")
        if per_frame == 0:
            raise MidiSkip(SkipReason.CORRUPT, f"SMPTE timing with 0 ticks per frame ({fps} frames/s)")
    if division == 0:
        raise MidiSkip(SkipReason.CORRUPT, "0 ticks per quarter")
    if length > 6:
        data = data[:4] + struct.pack(">I", 6) + data[8:14] + data[8 + length :]
    if tracks == 0:
        raise MidiSkip(SkipReason.NO_TRACKS, "the header counts 0 tracks")
    # Walk the chunk headers (8 bytes each, a handful per file) to see whether the file stops short.
    found, at, overrun = 0, HEADER.size, False
    while at + 8 <= len(data):
        kind, size = struct.unpack_from(">4sI", data, at)
        if at + 8 + size > len(data):
            overrun = True
            break
        found += kind == b"MTrk"
        at += 8 + size
    if not found and not overrun:
        # The header promises tracks but none follows: the file was cut right after its header.
        raise MidiSkip(SkipReason.TRUNCATED, f"the header counts {tracks} tracks, the file has none")
    # Cut inside a chunk header, or at a chunk boundary before all the tracks the header counts: should the
    # parse fail, the file stopped short (a file whose header merely overcounts parses, and is read).
    overrun = overrun or 0 < len(data) - at < 8 or found < tracks
    return data, overrun


def _content(score: Any, smpte: float = 0.0) -> MidiContent:
    """symusic's Score → MidiContent; `smpte` (ticks a second) times an SMPTE file, whose tempo events mean nothing."""
    tpq = smpte * 60 / SMPTE_QPM if smpte else score.ticks_per_quarter
    tracks = []
    for track in score.tracks:
        arrays = track.notes.numpy()
        starts = arrays["time"].astype(np.int64)
        ends = starts + arrays["duration"]  # int64 + int32: no 32-bit overflow at the end of a long file
        if len(starts) and starts.min() < 0:
            # symusic adds deltas in 32 bits: a negative time means the file's times overflowed that (pretty_midi
            # refuses such files too, as past its MAX_TICK)
            raise MidiSkip(SkipReason.CORRUPT, "note times overflow 32-bit ticks")
        keep = ends > starts  # a note-off on its note-on's tick makes a 0-length note: nothing sounds
        starts, ends = starts[keep], ends[keep]
        pitches, velocities = arrays["pitch"][keep], arrays["velocity"][keep]
        tracks.append(MidiTrack(track.name, track.program, track.is_drum, pitches, velocities, starts, ends))

    if smpte:
        tempo_ticks, seconds_per_tick, qpm = np.zeros(1, np.int64), np.array([1 / smpte]), np.array([SMPTE_QPM])
    else:
        tempo_ticks, seconds_per_tick, qpm = _tempo_map(score.tempos.numpy(), tpq)
    tempo_seconds = np.concatenate(([0.0], np.cumsum(np.diff(tempo_ticks) * seconds_per_tick[:-1])))
    signatures = score.time_signatures.numpy()
    keys = score.key_signatures.numpy()
    # Key events out of range (a damaged file's) say nothing: mido would refuse the whole file for one.
    valid = (np.abs(keys["key"]) <= 7) & (keys["tonality"] <= 1)
    return MidiContent(
        ticks_per_quarter=tpq,
        tracks=tracks,
        tempos=list(zip((tempo_ticks / tpq).tolist(), qpm.tolist(), strict=True)),
        time_signatures=list(
            zip(
                (signatures["time"] / tpq).tolist(),
                signatures["numerator"].tolist(),
                signatures["denominator"].tolist(),
                strict=True,
            )
        ),
        key_signatures=[
            (t / tpq, k, "minor" if m else "major")
            for t, k, m in zip(
                keys["time"][valid].tolist(),
                keys["key"][valid].tolist(),
                keys["tonality"][valid].tolist(),
                strict=True,
            )
        ],
        _tempo_ticks=tempo_ticks,
        _tempo_seconds=tempo_seconds,
        _seconds_per_tick=seconds_per_tick,
    )


def _tempo_map(tempos: dict[str, np.ndarray], tpq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """symusic's tempo events → (start tick, seconds per tick, quarters per minute), one per tempo in force.

    Of several tempos on one tick the last in the file wins (pretty_midi does the same); before the first one
    the default 120 qpm holds. symusic gathers tempos from every track, where pretty_midi reads track 0 only.
    """
    ticks = tempos["time"].astype(np.int64)
    mspq = tempos["mspq"].astype(np.int64)
    order = np.argsort(ticks, kind="stable")  # symusic sorts them already; stable keeps file order on a tick
    ticks, mspq = ticks[order], mspq[order]
    if len(ticks) and ticks[0] < 0:
        raise MidiSkip(SkipReason.CORRUPT, "tempo times overflow 32-bit ticks")
    last_on_tick = np.append(ticks[1:] != ticks[:-1], True)[: len(ticks)]  # [:0] when there is no tempo at all
    ticks, mspq = ticks[last_on_tick], mspq[last_on_tick]
    if not len(ticks) or ticks[0] > 0:
        ticks = np.insert(ticks, 0, 0)
        mspq = np.insert(mspq, 0, DEFAULT_MSPQ)
    seconds_per_tick = mspq / 1e6 / tpq
    with np.errstate(divide="ignore"):  # a 0 µs tempo (a damaged file's) is infinitely fast; times still work
        qpm = 6e7 / mspq
    return ticks, seconds_per_tick, qpm
