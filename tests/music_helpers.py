"""MIDI that the music tests synthesize with pretty_midi: songs, and folders with every kind of bad file."""

from __future__ import annotations

import random
from pathlib import Path

import pretty_midi

C_MAJOR = (0, 2, 4, 5, 7, 9, 11)


def song(seed: int, bars: int = 8, tonic: int = 60, qpm: float = 100.0, chords: bool = True) -> pretty_midi.PrettyMIDI:
    """A melody (with some chords in it), a bass line and a drum track, in the major key of `tonic`."""
    rng = random.Random(seed)
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=qpm)
    beat = 60.0 / qpm
    lead = pretty_midi.Instrument(program=0, name="lead")
    degree, t = 7, 0.0
    while t < bars * 4 - 1e-9:
        length = rng.choice((0.5, 0.5, 1.0, 1.0, 1.5, 2.0))
        degree = max(0, min(14, degree + rng.choice((-2, -1, -1, 1, 1, 2))))
        pitch = tonic + 12 * (degree // 7) + C_MAJOR[degree % 7]
        lead.notes.append(pretty_midi.Note(90, pitch, t * beat, (t + length) * beat))
        if chords and rng.random() < 0.25:  # a lower chord tone: the monophony rule must drop it
            lead.notes.append(pretty_midi.Note(70, pitch - 4, t * beat, (t + length) * beat))
        t += length
    bass = pretty_midi.Instrument(program=32, name="bass")
    for bar in range(bars):
        root = tonic - 24 + (0, 5, 7, 0)[bar % 4]
        bass.notes.append(pretty_midi.Note(80, root, bar * 4 * beat, (bar * 4 + 3.5) * beat))
    drums = pretty_midi.Instrument(program=0, is_drum=True, name="drums")
    for quarter in range(bars * 4):
        drums.notes.append(pretty_midi.Note(100, 36 if quarter % 2 == 0 else 38, quarter * beat, (quarter + 0.25) * beat))
    pm.instruments += [lead, bass, drums]
    return pm


def write_songs(folder: Path, count: int, start_seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"song_{start_seed + i:03d}.mid"
        song(start_seed + i, tonic=60 + (i % 5)).write(str(path))
        paths.append(path)
    return paths


def write_bad_files(folder: Path) -> dict[str, Path]:
    """One file of each kind a real folder has: corrupt, truncated, no notes, drums only, zero bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good_for_truncation.tmp"
    song(99).write(str(good))
    data = good.read_bytes()
    good.unlink()
    files = {
        "corrupt": folder / "corrupt.mid",
        "truncated": folder / "sub" / "truncated.MID",
        "no_notes": folder / "no_notes.midi",
        "drums": folder / "drums.mid",
        "zero": folder / "zero.mid",
    }
    files["corrupt"].write_bytes(b"this is not a MIDI file at all" * 10)
    files["truncated"].parent.mkdir(exist_ok=True)
    files["truncated"].write_bytes(data[: len(data) // 3])
    pretty_midi.PrettyMIDI().write(str(files["no_notes"]))
    drums_only = song(98)
    drums_only.instruments = [i for i in drums_only.instruments if i.is_drum]
    drums_only.write(str(files["drums"]))
    files["zero"].write_bytes(b"")
    return files


def melody_midi(path: Path, pitches: list[int], quarter: float = 0.5) -> Path:
    """One instrument playing `pitches` one after another, each `quarter` seconds (120 qpm: a quarter note)."""
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120)
    inst = pretty_midi.Instrument(program=0)
    for i, pitch in enumerate(pitches):
        inst.notes.append(pretty_midi.Note(80, pitch, i * quarter, (i + 1) * quarter))
    pm.instruments.append(inst)
    pm.write(str(path))
    return path
