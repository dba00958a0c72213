"""Music out: a decoded Piece → .mid (pretty_midi), .musicxml (music21), .wav, piano-roll .png."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from generate.music.notes import Note, Piece

MIDI_RESOLUTION = 480  # music21's 10080 ticks/quarter makes pretty_midi reject long files as corrupt
SAMPLE_RATE = 44100  # CD rate: a SoundFont's upper harmonics reach past 11 kHz
SPLIT_PITCH = 60  # polyphonic scores: middle C and up on the treble staff, the rest on the bass staff
MELODY_REGISTER = (48, 84)  # a melody whose median pitch falls outside C3..C6 is moved by octaves


def sensible_register(piece: Piece) -> Piece:
    """Move a melody by whole octaves so its median pitch lies in C3..C6."""
    if not piece.notes:
        return piece
    median = statistics.median(n.pitch for n in piece.notes)
    low, high = MELODY_REGISTER
    octaves = 0
    while median + 12 * octaves < low:
        octaves += 1
    while median + 12 * octaves > high:
        octaves -= 1
    return piece.transposed(12 * octaves) if octaves else piece


def to_pretty_midi(piece: Piece, qpm: float, program: int | None = None) -> Any:
    """One instrument playing the piece: General MIDI `program` (None: 0, piano), which the .wav honours too."""
    import pretty_midi

    seconds = piece.in_seconds(qpm)
    pm = pretty_midi.PrettyMIDI(resolution=MIDI_RESOLUTION, initial_tempo=qpm)
    program = program or 0
    piano = pretty_midi.Instrument(program=program, name=pretty_midi.program_to_instrument_name(program))
    piano.notes = [
        pretty_midi.Note(velocity=int(np.clip(n.velocity, 1, 127)), pitch=n.pitch, start=n.start, end=n.end)
        for n in seconds.notes
    ]
    pm.instruments.append(piano)
    return pm


def write_midi(pm: Any, path: Path) -> Path:
    pm.write(str(path))
    return path


def _music21_part(notes: list[Note], name: str, clef: Any) -> Any:
    """Notes (quarters) in one part; overlapping notes become tied chords (music21's chordify)."""
    from music21 import note, stream

    part = stream.Part()
    part.partName = name
    # One insert of (offset, element) pairs: music21 sorts once instead of once per note.
    pairs: list[Any] = [0, clef]
    for n in notes:
        pairs += [n.start, note.Note(n.pitch, quarterLength=n.end - n.start)]
    part.insert(pairs)
    overlapping = any(b.start < a.end for a, b in zip(notes, notes[1:]))
    return part.chordify() if overlapping else part


def write_musicxml(piece: Piece, path: Path, qpm: float, grand_staff: bool = True) -> Path:
    """A score that opens in MuseScore: one part, or treble and bass parts when polyphonic music spans both."""
    from music21 import clef, metadata, meter, note, stream, tempo

    quarters = piece.in_quarters(qpm)
    # Performance timings are not on a grid: notate them to the nearest 16th, at least one 16th long.
    notes = [
        Note(n.pitch, round(n.start * 4) / 4, max(round(n.start * 4) + 1, round(n.end * 4)) / 4, n.velocity)
        for n in quarters.notes
    ]
    score = stream.Score()
    score.insert(0, metadata.Metadata(title=path.stem, composer="generate (GRU sample)"))
    treble = [n for n in notes if n.pitch >= SPLIT_PITCH]
    bass = [n for n in notes if n.pitch < SPLIT_PITCH]
    if grand_staff and treble and bass:
        parts = [_music21_part(treble, "Right hand", clef.TrebleClef()), _music21_part(bass, "Left hand", clef.BassClef())]
    else:
        low = bool(notes) and statistics.median(n.pitch for n in notes) < SPLIT_PITCH - 5
        parts = [_music21_part(notes, "Piano", clef.BassClef() if low else clef.TrebleClef())]
    for part in parts:
        part.insert(0, meter.TimeSignature("4/4"))
        if not part.notes:  # an empty sample is still a valid score: one bar of rest
            part.append(note.Rest(quarterLength=4))
        score.insert(0, part)
    parts[0].insert(0, tempo.MetronomeMark(number=qpm))
    score.write("musicxml", fp=str(path))
    return path


def write_wav(pm: Any, path: Path, duration: float, soundfont: str | None = None) -> Path:
    """16-bit WAV: each instrument's program played by a General MIDI SoundFont, else sine waves (see audio.py)."""
    from generate.music.audio import render_wav

    render_wav(pm, path, soundfont=soundfont, sample_rate=SAMPLE_RATE, min_seconds=duration)
    return path


def write_piano_roll(pm: Any, path: Path, title: str) -> Path:
    """pretty_midi's piano roll drawn with matplotlib (Agg, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fs = 50  # columns per second
    roll = pm.get_piano_roll(fs=fs)  # (128, T) velocities
    pitches = [n.pitch for i in pm.instruments for n in i.notes]
    low, high = (min(pitches) - 2, max(pitches) + 3) if pitches else (57, 72)
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if roll.shape[1]:
        ax.imshow(
            roll[low:high], aspect="auto", origin="lower", cmap="Greys", interpolation="nearest",
            extent=(0, roll.shape[1] / fs, low - 0.5, high - 0.5),
        )
    ax.set_ylim(low - 0.5, high - 0.5)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return path


def write_music(
    piece: Piece, path_stem: str | Path, qpm: float = 120.0, *, grand_staff: bool = True, melody: bool = False,
    label: str = "", instrument: str | int | None = None, soundfont: str | None = None,
) -> list[Path]:
    """One decoded piece → path_stem.mid, .musicxml, .wav and .png; returns the paths written.

    The tokenizer's rendering hints: `melody` moves a melody into a sensible register and writes one
    staff; `grand_staff` lets polyphonic music spread over treble and bass staves. `instrument` (a name or
    General MIDI program) is written into the .mid and played in the .wav, with `soundfont` (None: a system one).
    """
    from generate.music.audio import find_soundfont, program_for

    program = program_for(instrument)
    find_soundfont(soundfont)  # a wrong soundfont= path fails before anything is written
    if melody:
        piece = sensible_register(piece)
    path_stem = Path(path_stem)
    pm = to_pretty_midi(piece, qpm, program)
    seconds = piece.in_seconds(qpm).duration
    title = f"{path_stem.name} ({label})" if label else path_stem.name
    return [
        write_midi(pm, path_stem.with_name(path_stem.name + ".mid")),
        write_musicxml(piece, path_stem.with_name(path_stem.name + ".musicxml"), qpm, grand_staff and not melody),
        write_wav(pm, path_stem.with_name(path_stem.name + ".wav"), seconds, soundfont),
        write_piano_roll(pm, path_stem.with_name(path_stem.name + ".png"), title),
    ]
