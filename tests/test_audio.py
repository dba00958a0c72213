"""Real-instrument audio: level, clipping, length and timbre of rendered WAVs, instruments, fallback, bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from generate.config import PROJECT_ROOT
from generate.errors import UserError
from generate.music import audio
from generate.music.notes import Note, Piece
from generate.music.render import SAMPLE_RATE, write_music

SYNTHS = [pytest.param("sine", id="sine"), pytest.param("tinysoundfont", id="tinysoundfont")]


def _need(synth: str) -> None:
    """Skip (saying how to get it) where the SoundFont path cannot run; .ci/run installs both pieces."""
    if synth == "sine":
        return
    if not audio.has_synthesizer():
        pytest.skip("tinysoundfont is not installed (pip install --no-deps tinysoundfont)")
    if audio.find_soundfont(None) is None:
        pytest.skip("no General MIDI SoundFont installed (apt-get install timgm6mb-soundfont)")


def c_major_scale(program: int = 0) -> pretty_midi.PrettyMIDI:
    """C4..C5 as eight quarter notes at 120 qpm: 0.5 s each, ending at 4.0 s."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(program=program)
    for i, pitch in enumerate((60, 62, 64, 65, 67, 69, 71, 72)):
        inst.notes.append(pretty_midi.Note(velocity=100, pitch=pitch, start=i * 0.5, end=(i + 1) * 0.5))
    pm.instruments.append(inst)
    return pm


def sustained_a4(program: int = 0, seconds: float = 2.0) -> pretty_midi.PrettyMIDI:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(program=program)
    inst.notes.append(pretty_midi.Note(velocity=100, pitch=69, start=0.0, end=seconds))
    pm.instruments.append(inst)
    return pm


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """int16 samples as (frames, channels) and the sample rate."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data.reshape(-1, w.getnchannels()), w.getframerate()


def harmonic_ratio(mono: np.ndarray, sr: int, f0: float = 440.0) -> float:
    """Spectral peak at 2*f0 and 3*f0 relative to f0: ~0 for a pure sine, large for a real instrument."""
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    freqs = np.fft.rfftfreq(len(mono), 1.0 / sr)

    def band(f: float) -> float:
        return float(spectrum[(freqs > f - 20) & (freqs < f + 20)].max())

    return (band(2 * f0) + band(3 * f0)) / band(f0)


@pytest.mark.parametrize("synth", SYNTHS)
def test_scale_is_audible_unclipped_and_as_long_as_the_score(synth: str, tmp_path: Path) -> None:
    _need(synth)
    pm = c_major_scale()
    info = audio.render_wav(pm, tmp_path / "scale.wav", synthesizer=synth, sample_rate=22050, chunk_seconds=1.3)
    samples, sr = read_wav(info.path)
    assert info.synthesizer == synth and sr == 22050 and samples.shape[1] == info.channels
    x = samples.astype(np.float64) / 32768.0
    assert np.sqrt(np.mean(x**2)) > 0.005  # non-silent: above -46 dBFS RMS
    assert int(np.abs(samples.astype(np.int32)).max()) < 32767  # no sample at (or beyond) full scale
    end = pm.get_end_time()  # the MIDI's length plus a short faded release tail, never shorter
    assert end <= info.seconds <= end + 0.5 and abs(len(samples) / sr - info.seconds) < 1e-6
    for i in range(8):  # every note sounds: the middle of each quarter note carries signal
        assert np.abs(samples[int((i * 0.5 + 0.2) * sr) : int((i * 0.5 + 0.3) * sr)].astype(np.int32)).max() > 100


@pytest.mark.parametrize("program", [0, 40, 73])  # piano, violin, flute
def test_soundfont_has_instrument_harmonics(program: int, tmp_path: Path) -> None:
    _need("tinysoundfont")
    info = audio.render_wav(sustained_a4(program), tmp_path / "a4.wav")
    assert info.synthesizer == "tinysoundfont" and info.soundfont is not None and info.channels == 2
    samples, sr = read_wav(info.path)
    steady = samples[int(0.3 * sr) : int(1.8 * sr)].astype(np.float64).mean(axis=1)
    assert harmonic_ratio(steady, sr) > 0.1  # measured 0.5-0.95 with TimGM6mb; a sine gives < 0.001


def test_sine_fallback_has_no_harmonics(tmp_path: Path) -> None:
    samples, sr = read_wav(audio.render_wav(sustained_a4(), tmp_path / "a4.wav", synthesizer="sine").path)
    assert harmonic_ratio(samples[int(0.3 * sr) : int(1.8 * sr), 0].astype(np.float64), sr) < 1e-3


def test_each_instrument_plays_its_own_program(tmp_path: Path) -> None:
    _need("tinysoundfont")
    violin, _ = read_wav(audio.render_wav(sustained_a4(40, 1.0), tmp_path / "violin.wav").path)
    again, _ = read_wav(audio.render_wav(sustained_a4(40, 1.0), tmp_path / "again.wav").path)
    piano, _ = read_wav(audio.render_wav(sustained_a4(0, 1.0), tmp_path / "piano.wav").path)
    assert np.array_equal(violin, again) and not np.array_equal(violin, piano)


def test_sample_instrument_setting_reaches_midi_and_wav(tmp_path: Path) -> None:
    """write_music(instrument=...) is the setting the CLI and the app use: the .mid says flute, the .wav plays it."""
    _need("tinysoundfont")
    piece = Piece([Note(69, 0.0, 4.0, 100)], duration=4.0)
    flute = write_music(piece, tmp_path / "flute", 120.0, melody=True, instrument="flute")
    piano = write_music(piece, tmp_path / "piano", 120.0, melody=True)
    assert pretty_midi.PrettyMIDI(str(flute[0])).instruments[0].program == 73
    assert pretty_midi.PrettyMIDI(str(piano[0])).instruments[0].program == 0
    (f, sr), (p, _) = read_wav(flute[2]), read_wav(piano[2])
    assert sr == SAMPLE_RATE and not np.array_equal(f, p)
    assert 2.0 <= len(f) / sr <= 2.5  # 4 quarters at 120 qpm = 2 s, plus the release tail


def test_program_for_names_numbers_and_mistakes() -> None:
    assert audio.program_for("Flute") == 73 and audio.program_for("40") == 40 and audio.program_for(0) == 0
    assert audio.program_for("") is None and audio.program_for(None) is None
    for bad in ("kazoo", "128", "-1"):
        with pytest.raises(UserError, match="General MIDI program"):
            audio.program_for(bad)


def test_sample_cli_refuses_a_bad_instrument_or_soundfont_before_generating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from generate import api, cli

    monkeypatch.setattr(api.Model, "from_pretrained", lambda *a, **k: pytest.fail("loaded a model before checking"))
    for key, value, message in (("instrument", "kazoo", "instrument='kazoo' is not a General MIDI program"),
                                ("soundfont", str(tmp_path / "typo.sf2"), "soundfont=.*typo.sf2 does not exist")):
        with pytest.raises(UserError, match=message):
            cli.run_sample({"checkpoint": "bach", "out_dir": str(tmp_path / "out"), key: value})
    assert not (tmp_path / "out").exists()


def test_channel_assignment_keeps_drums_apart() -> None:
    insts = [pretty_midi.Instrument(program=p, is_drum=d) for p, d in ((40, False), (0, True), (73, False))]
    assert audio._assign_channels(insts) == [0, 9, 1]
    channels = audio._assign_channels([pretty_midi.Instrument(program=p) for p in range(20)])
    assert 9 not in channels and set(channels) == set(range(16)) - {9}


@pytest.mark.parametrize("synth", SYNTHS)
def test_output_does_not_depend_on_chunk_size(synth: str, tmp_path: Path) -> None:
    _need(synth)
    a, _ = read_wav(audio.render_wav(c_major_scale(), tmp_path / "a.wav", synthesizer=synth, chunk_seconds=4.0).path)
    b, _ = read_wav(audio.render_wav(c_major_scale(), tmp_path / "b.wav", synthesizer=synth, chunk_seconds=0.37).path)
    assert a.shape == b.shape
    # TinySoundFont updates envelopes per 64-sample block, so a block split elsewhere shifts them a little:
    # allow 0.2 % of the peak (measured: 5 LSB of 5308). Sine output is bit-identical.
    peak = int(np.abs(a.astype(np.int32)).max())
    assert np.abs(a.astype(np.int32) - b.astype(np.int32)).max() <= max(2, 0.002 * peak)


def test_dense_fortissimo_is_limited_not_clipped(tmp_path: Path) -> None:
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=0)
    inst.notes += [pretty_midi.Note(velocity=127, pitch=p, start=0.0, end=1.0) for p in range(40, 88, 2)]
    pm.instruments.append(inst)
    samples, _ = read_wav(audio.render_wav(pm, tmp_path / "loud.wav", synthesizer="sine").path)
    assert 20000 < int(np.abs(samples.astype(np.int32)).max()) < 32767  # 24 voices sum far past full scale


def test_min_seconds_pads_trailing_rests(tmp_path: Path) -> None:
    info = audio.render_wav(sustained_a4(seconds=0.5), tmp_path / "pad.wav", synthesizer="sine", min_seconds=3.0)
    samples, sr = read_wav(info.path)
    assert len(samples) == 3 * sr and np.abs(samples[int(1.5 * sr) :]).max() == 0


def test_find_soundfont_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, system = tmp_path / "mine.sf2", tmp_path / "system.sf2"
    explicit.write_bytes(b"RIFF")
    system.write_bytes(b"RIFF")
    monkeypatch.setattr(audio, "SOUNDFONT_CANDIDATES", (str(tmp_path / "missing.sf2"), str(system)))
    assert audio.find_soundfont(str(explicit)) == str(explicit)
    assert audio.find_soundfont(None) == str(system)
    with pytest.raises(UserError, match="soundfont=.*does not exist"):
        audio.find_soundfont(str(tmp_path / "typo.sf2"))
    monkeypatch.setattr(audio, "SOUNDFONT_CANDIDATES", ())
    assert audio.find_soundfont(None) is None


def test_no_soundfont_falls_back_to_sine_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(audio, "SOUNDFONT_CANDIDATES", ())
    monkeypatch.setattr(audio, "_hinted", set())
    info = audio.render_wav(c_major_scale(), tmp_path / "s.wav")
    audio.render_wav(c_major_scale(), tmp_path / "t.wav")  # a second sample does not repeat the hint
    assert info.synthesizer == "sine" and info.soundfont is None and info.note == audio.NO_SOUNDFONT_HINT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install" in err and "soundfont=PATH" in err
    assert audio.describe() == audio.NO_SOUNDFONT_HINT


def test_sample_cli_writes_a_flute_wav(tmp_path: Path) -> None:
    """python -m generate.sample instrument=flute soundfont=...: the keys reach the written files."""
    _need("tinysoundfont")
    from tests.conftest import run_cli

    font = audio.find_soundfont(None)
    done = run_cli("sample", "checkpoint=bach", "length=40", "instrument=flute", f"soundfont={font}",
                   f"out_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert pretty_midi.PrettyMIDI(str(tmp_path / "sample_0.mid")).instruments[0].program == 73
    samples, _ = read_wav(tmp_path / "sample_0.wav")
    assert samples.shape[1] == 2 and np.abs(samples.astype(np.int32)).max() > 100
    bad = run_cli("sample", "checkpoint=bach", "length=5", "instrument=kazoo", f"out_dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: instrument='kazoo'")


# Peak memory: one subprocess per run, reading its own VmHWM (ru_maxrss would carry pytest's peak over exec).
_MEMORY_SCRIPT = r"""
import re, sys
import pretty_midi
from generate.music import audio

seconds, synth, out = float(sys.argv[1]), sys.argv[2], sys.argv[3]
pm = pretty_midi.PrettyMIDI(initial_tempo=120)
lead, bass = pretty_midi.Instrument(program=73), pretty_midi.Instrument(program=32)
drums = pretty_midi.Instrument(program=0, is_drum=True)
t = 0.0
while t < seconds:  # eighth-note melody, a bass note a second, kick on every beat
    lead.notes.append(pretty_midi.Note(90, 60 + int(t * 4) % 12, t, t + 0.25))
    if t % 1.0 == 0:
        bass.notes.append(pretty_midi.Note(100, 36 + int(t) % 7, t, t + 1.0))
    if t % 0.5 == 0:
        drums.notes.append(pretty_midi.Note(100, 36, t, t + 0.1))
    t += 0.25
pm.instruments += [lead, bass, drums]
audio.render_wav(pm, out, synthesizer=synth)
print(re.search(r'VmHWM:\s+(\d+)', open('/proc/self/status').read()).group(1))  # KiB
"""


def _peak_rss_kib(seconds: float, synth: str, out: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(seconds), synth, str(out)],
                          capture_output=True, text=True, env=env, check=True, timeout=300)
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("synth", SYNTHS)
def test_peak_memory_does_not_grow_with_length(synth: str, tmp_path: Path) -> None:
    _need(synth)
    short = _peak_rss_kib(30, synth, tmp_path / "short.wav")
    long = _peak_rss_kib(300, synth, tmp_path / "long.wav")
    assert (tmp_path / "long.wav").stat().st_size > 9 * (tmp_path / "short.wav").stat().st_size
    # 300 s of 44.1 kHz stereo float32 alone would be ~100 MB; the chunked render stays within noise of 30 s
    assert long < short + 30 * 1024, f"peak RSS 30 s: {short} KiB, 300 s: {long} KiB"
