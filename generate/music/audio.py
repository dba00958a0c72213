"""Score → 16-bit WAV with a General MIDI SoundFont (tinysoundfont), or sine waves without one, in bounded memory."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from generate.errors import UserError

# Standard places where distributions install a General MIDI SoundFont, best first. Debian's
# default-GM.sf2/.sf3 are alternatives links to whichever GM font package is installed, so they come first.
SOUNDFONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/sounds/sf2/default-GM.sf2",  # Debian/Ubuntu alternatives link
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",  # Debian/Ubuntu fluid-soundfont-gm
    "/usr/share/sounds/sf2/TimGM6mb.sf2",  # Debian/Ubuntu timgm6mb-soundfont
    "/usr/share/sounds/sf3/default-GM.sf3",  # Debian/Ubuntu alternatives link (compressed fonts)
    "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3",  # Debian/Ubuntu musescore-general-soundfont-small
    "/usr/share/sounds/sf3/MuseScore_General_Full.sf3",  # Debian/Ubuntu musescore-general-soundfont
    "/usr/share/sounds/sf2/MuseScore_General_Full.sf2",  # Debian/Ubuntu musescore-general-soundfont-lossless
    "/usr/share/soundfonts/default.sf2",  # Arch/Fedora convention
    "/usr/share/soundfonts/FluidR3_GM.sf2",  # Arch soundfont-fluid, Fedora fluid-soundfont-gm
    "/usr/share/soundfonts/FluidR3_GM2-2.sf2",  # Fedora/openSUSE
    "/usr/local/share/soundfonts/default.sf2",  # FreeBSD / hand installs
)
NO_SOUNDFONT_HINT = (
    "no SoundFont found, so .wav files are sine waves; for real instruments run "
    "`apt-get install timgm6mb-soundfont` (or fluid-soundfont-gm) or set soundfont=PATH"
)
NO_SYNTH_HINT = (
    "tinysoundfont is not installed, so .wav files are sine waves; for real instruments run "
    "`pip install --no-deps tinysoundfont`"
)

# General MIDI programs by a name a musician would type (instrument=flute); any number 0..127 also works.
INSTRUMENTS = {
    "piano": 0, "harpsichord": 6, "celesta": 8, "vibraphone": 11, "organ": 19, "church-organ": 19, "accordion": 21,
    "guitar": 24, "bass": 32, "violin": 40, "viola": 41, "cello": 42, "contrabass": 43, "harp": 46, "strings": 48,
    "choir": 52, "trumpet": 56, "trombone": 57, "horn": 60, "saxophone": 65, "oboe": 68, "bassoon": 70,
    "clarinet": 71, "piccolo": 72, "flute": 73, "recorder": 74, "pan-flute": 75, "ocarina": 79,
}

_DRUM_CHANNEL = 9  # General MIDI percussion channel (10 in 1-based numbering)
_MELODIC_CHANNELS = tuple(c for c in range(16) if c != _DRUM_CHANNEL)
# Fixed gain instead of normalising over the whole signal (which would need it all in memory). With TimGM6mb a
# velocity-100 scale peaks at -19 dBFS as piano, -13 as violin, -8 as flute; louder scores meet the limiter.
_TSF_GAIN_DB = 0.0
_SINE_VOICE_AMPLITUDE = 0.2  # peak of one velocity-127 sine voice
_LIMIT_KNEE, _LIMIT_CEILING = 0.7, 0.98  # soft limiter: the ceiling keeps even rounding off 32767/-32768
# Rendering stops this long after the last event so release tails are kept; the end fades out to avoid a click.
_TAIL_SECONDS, _FADE_SECONDS = 0.4, 0.1
_hinted: set[str] = set()  # each fallback hint is printed once per process, not once per sample


@dataclass(frozen=True)
class RenderInfo:
    """What render_wav wrote and how."""

    path: str
    synthesizer: str  # "tinysoundfont" or "sine"
    soundfont: str | None  # None when the sine fallback was used
    seconds: float  # duration of the written audio, release tail included
    sample_rate: int
    channels: int  # 2 for SoundFont renders (instrument panning), 1 for sine waves
    note: str | None = None  # one-line hint when the output is not real-instrument sound


def program_for(instrument: str | int | None) -> int | None:
    """A General MIDI program from a name (flute) or a number (73); None or "" keeps the score's own."""
    if instrument is None or instrument == "":
        return None
    text = str(instrument).strip().lower().replace(" ", "-").replace("_", "-")
    if text.isdigit() and 0 <= int(text) <= 127:
        return int(text)
    if text in INSTRUMENTS:
        return INSTRUMENTS[text]
    raise UserError(f"instrument={instrument!r} is not a General MIDI program 0..127 or one of: {', '.join(INSTRUMENTS)}")


def find_soundfont(explicit: str | None = None) -> str | None:
    """`explicit` if given (it must exist: a typo must not quietly give sine waves), else the first standard one."""
    if explicit:
        path = os.path.expanduser(explicit)
        if not os.path.isfile(path):
            raise UserError(f"soundfont={explicit} does not exist; give the path of a .sf2/.sf3 file")
        return path
    return next((c for c in SOUNDFONT_CANDIDATES if os.path.isfile(c)), None)  # isfile skips dangling links


def has_synthesizer() -> bool:
    return importlib.util.find_spec("tinysoundfont") is not None


def describe(soundfont: str | None = None) -> str:
    """One line: how .wav files will sound here (the synthesizer and font, or how to get real instruments)."""
    font = find_soundfont(soundfont)
    if font is None:
        return NO_SOUNDFONT_HINT
    if not has_synthesizer():
        return NO_SYNTH_HINT
    return f"real instruments: tinysoundfont with {font}"


class _Backend(Protocol):
    name: str
    channels: int

    def program(self, chan: int, program: int, is_drum: bool) -> None: ...
    def note_on(self, chan: int, key: int, velocity: int) -> None: ...
    def note_off(self, chan: int, key: int) -> None: ...
    def control(self, chan: int, number: int, value: int) -> None: ...
    def pitch_bend(self, chan: int, value: int) -> None: ...  # pretty_midi's range, -8192..8191
    def render(self, frames: int) -> np.ndarray: ...  # float32 (frames, channels), full scale = 1.0


class _TinySoundFont:
    """tinysoundfont: a 200 kB wheel with TinySoundFont compiled in, no system library, float output."""

    name = "tinysoundfont"
    channels = 2

    def __init__(self, soundfont: str, sample_rate: int) -> None:
        import tinysoundfont  # optional dependency, imported only when a font is there to use

        self._synth = tinysoundfont.Synth(gain=_TSF_GAIN_DB, samplerate=sample_rate)
        self._sfid = self._synth.sfload(soundfont)

    def program(self, chan: int, program: int, is_drum: bool) -> None:
        bank = 128 if is_drum else 0
        try:
            self._synth.program_select(chan, self._sfid, bank, program, is_drums=is_drum)
        except RuntimeError:  # small fonts lack some presets: the bank's first one beats silence
            self._synth.program_select(chan, self._sfid, bank, 0, is_drums=is_drum)

    def note_on(self, chan: int, key: int, velocity: int) -> None:
        self._synth.noteon(chan, key, velocity)

    def note_off(self, chan: int, key: int) -> None:
        self._synth.noteoff(chan, key)

    def control(self, chan: int, number: int, value: int) -> None:
        self._synth.control_change(chan, number, value)

    def pitch_bend(self, chan: int, value: int) -> None:
        self._synth.pitchbend(chan, min(max(value + 8192, 0), 16383))  # tsf wants 0..16383, centre 8192

    def render(self, frames: int) -> np.ndarray:
        # generate_simple: events are scheduled by our own loop, not tinysoundfont's sequencer
        return np.frombuffer(self._synth.generate_simple(frames), dtype=np.float32).reshape(frames, 2)


class _Sine:
    """Additive sine synthesis of the sounding voices only, so memory does not grow with the piece.

    pretty_midi's synthesize() allocates the whole signal at once. Drums, bends and controllers are ignored.
    """

    name = "sine"
    channels = 1
    _ATTACK, _RELEASE = 0.005, 0.03  # seconds: short ramps so notes neither start nor stop with a click

    def __init__(self, sample_rate: int) -> None:
        self._sr = sample_rate
        self._drum_channels: set[int] = set()
        # voice = [chan, key, omega (rad/sample), amplitude, phase, age in samples, release samples done or -1]
        self._voices: list[list[float]] = []

    def program(self, chan: int, program: int, is_drum: bool) -> None:
        if is_drum:
            self._drum_channels.add(chan)

    def note_on(self, chan: int, key: int, velocity: int) -> None:
        omega = 2.0 * math.pi * 440.0 * 2.0 ** ((key - 69) / 12) / self._sr
        if chan in self._drum_channels or omega >= math.pi:  # above Nyquist it would alias
            return
        self._voices.append([chan, key, omega, _SINE_VOICE_AMPLITUDE * velocity / 127.0, 0.0, 0, -1])

    def note_off(self, chan: int, key: int) -> None:
        for voice in self._voices:
            if voice[0] == chan and voice[1] == key and voice[6] < 0:
                voice[6] = 0
                return  # the oldest matching voice only, so a re-struck note keeps sounding

    def control(self, chan: int, number: int, value: int) -> None:
        pass

    def pitch_bend(self, chan: int, value: int) -> None:
        pass

    def render(self, frames: int) -> np.ndarray:
        out = np.zeros((frames, 1), dtype=np.float32)
        n = np.arange(frames, dtype=np.float64)
        attack, release = max(1, int(self._ATTACK * self._sr)), max(1, int(self._RELEASE * self._sr))
        alive: list[list[float]] = []
        for voice in self._voices:
            _, _, omega, amp, phase, age, rel = voice
            env = np.minimum((age + n) / attack, 1.0)
            if rel >= 0:
                env *= np.clip(1.0 - (rel + n) / release, 0.0, None)
                voice[6] = rel + frames
            out[:, 0] += (amp * env * np.sin(phase + omega * n)).astype(np.float32)
            voice[4] = (phase + omega * frames) % (2.0 * math.pi)  # a small phase keeps float64 precise
            voice[5] = age + frames
            if voice[6] < release:
                alive.append(voice)
        self._voices = alive
        return out


# Events at one sample apply in this order: set up the channel before sounding notes, and end a note before a
# re-strike of the same key so the new note is not cut off by the old one's note-off.
_PROGRAM, _CONTROL, _BEND, _OFF, _ON = range(5)
Event = tuple[int, int, int, int, int]  # (sample, kind, channel, a, b)


def _assign_channels(instruments: list[Any]) -> list[int]:
    """A channel per instrument: drums share 9; melodic parts get their own while the 15 free ones last,
    then share one already playing the same program, else the least used one."""
    assigned: list[int] = []
    used: dict[int, int] = {}  # channel -> program
    load: dict[int, int] = dict.fromkeys(_MELODIC_CHANNELS, 0)
    for inst in instruments:
        if inst.is_drum:
            assigned.append(_DRUM_CHANNEL)
            continue
        free = [c for c in _MELODIC_CHANNELS if c not in used]
        same = [c for c, p in used.items() if p == inst.program]
        chan = free[0] if free else same[0] if same else min(load, key=load.__getitem__)
        used.setdefault(chan, inst.program)
        load[chan] += 1
        assigned.append(chan)
    return assigned


def _events(pm: Any, sample_rate: int) -> list[Event]:
    """Every event of the score, sorted. Memory is O(notes), never O(audio length)."""
    events: list[Event] = []
    programs: dict[int, tuple[int, bool]] = {}
    for inst, chan in zip(pm.instruments, _assign_channels(pm.instruments)):
        programs.setdefault(chan, (inst.program, inst.is_drum))
        events += [(round(cc.time * sample_rate), _CONTROL, chan, cc.number, cc.value) for cc in inst.control_changes]
        events += [(round(b.time * sample_rate), _BEND, chan, b.pitch, 0) for b in inst.pitch_bends]
        for note in inst.notes:
            if note.velocity <= 0 or not 0 <= note.pitch <= 127:
                continue
            start = round(note.start * sample_rate)
            end = max(round(note.end * sample_rate), start + 1)  # zero-length notes still sound
            events += [(start, _ON, chan, note.pitch, min(note.velocity, 127)), (end, _OFF, chan, note.pitch, 0)]
    events += [(0, _PROGRAM, chan, prog, int(is_drum)) for chan, (prog, is_drum) in programs.items()]
    return sorted(events)


def _apply(backend: _Backend, event: Event) -> None:
    _, kind, chan, a, b = event
    if kind == _ON:
        backend.note_on(chan, a, b)
    elif kind == _OFF:
        backend.note_off(chan, a)
    elif kind == _PROGRAM:
        backend.program(chan, a, bool(b))
    elif kind == _CONTROL:
        backend.control(chan, a, b)
    else:
        backend.pitch_bend(chan, a)


def _soft_limit(block: np.ndarray) -> np.ndarray:
    """Samples below the knee pass unchanged; louder ones bend smoothly towards (never onto) the ceiling."""
    mag = np.abs(block)
    over = mag > _LIMIT_KNEE
    if over.any():
        room = _LIMIT_CEILING - _LIMIT_KNEE
        block[over] = np.sign(block[over]) * (_LIMIT_KNEE + room * np.tanh((mag[over] - _LIMIT_KNEE) / room))
    return block


def _blocks(backend: _Backend, events: list[Event], total: int, chunk: int) -> Iterator[np.ndarray]:
    """Float blocks of at most `chunk` frames, each event applied exactly at its sample."""
    buf = np.zeros((chunk, backend.channels), dtype=np.float32)  # reused: peak memory is one chunk
    pos = i = 0
    while pos < total:
        n = min(chunk, total - pos)
        filled = 0
        while filled < n:
            now = pos + filled
            while i < len(events) and events[i][0] <= now:
                _apply(backend, events[i])
                i += 1
            step = n - filled if i == len(events) else min(n - filled, events[i][0] - now)
            buf[filled : filled + step] = backend.render(step)
            filled += step
        yield buf[:n]
        pos += n


def _backend(synthesizer: str, soundfont: str | None, sample_rate: int) -> tuple[_Backend, str | None, str | None]:
    """The synthesizer to use, its font, and the one-line hint when it falls back to sine waves."""
    if synthesizer not in ("auto", "tinysoundfont", "sine"):
        raise UserError(f"synthesizer={synthesizer!r} is not one of auto, tinysoundfont, sine")
    if synthesizer == "sine":
        return _Sine(sample_rate), None, None
    font = find_soundfont(soundfont)
    if font is not None and (synthesizer == "tinysoundfont" or has_synthesizer()):
        return _TinySoundFont(font, sample_rate), font, None
    return _Sine(sample_rate), None, NO_SOUNDFONT_HINT if font is None else NO_SYNTH_HINT


def render_wav(
    pm: Any, path: str | os.PathLike[str], *, soundfont: str | None = None, sample_rate: int = 44100,
    min_seconds: float = 0.0, chunk_seconds: float = 4.0, synthesizer: str = "auto",
) -> RenderInfo:
    """Write a pretty_midi score to a 16-bit PCM WAV, `chunk_seconds` at a time; each instrument plays its program.

    soundfont: a .sf2/.sf3 path; None searches SOUNDFONT_CANDIDATES. Without a font or tinysoundfont the score
        is rendered with sine waves and a one-line hint (printed once per process) says how to get real sound.
    min_seconds: pad with silence to at least this length (a piece's trailing rests).
    synthesizer: "auto", or force "tinysoundfont" or "sine".
    """
    if chunk_seconds <= 0 or sample_rate <= 0:
        raise ValueError("chunk_seconds and sample_rate must be positive")
    backend, font, note = _backend(synthesizer, soundfont, sample_rate)
    if note and note not in _hinted:
        _hinted.add(note)
        print(note, file=sys.stderr)
    events = _events(pm, sample_rate)
    end = max(pm.get_end_time(), events[-1][0] / sample_rate if events else 0.0)
    total = max(round((end + _TAIL_SECONDS) * sample_rate), round(min_seconds * sample_rate))
    fade = min(round(_FADE_SECONDS * sample_rate), total)
    written = 0
    with wave.open(os.fspath(path), "wb") as out:
        out.setnchannels(backend.channels)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        for block in _blocks(backend, events, total, max(1, round(chunk_seconds * sample_rate))):
            block = block.copy()  # the backend buffer is reused; fade and limiter work in place
            if written + len(block) > total - fade:  # the fade-out may straddle chunk boundaries
                gain = np.clip((total - np.arange(written, written + len(block))) / fade, 0.0, 1.0)
                block *= gain.astype(np.float32)[:, None]
            out.writeframes(np.round(_soft_limit(block) * 32767.0).astype("<i2").tobytes())
            written += len(block)
    return RenderInfo(os.fspath(path), backend.name, font, written / sample_rate, sample_rate, backend.channels, note)
