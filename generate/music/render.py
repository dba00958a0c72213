"""Music out: a decoded Piece → .mid (pretty_midi), .musicxml (music21), .wav, piano-roll .png."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
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


# Durations one notehead (with at most one dot) can show; longer or odd spans are written as tied pieces.
NOTATABLE = (4.0, 3.0, 2.0, 1.5, 1.0, 0.75, 0.5, 0.25)
BAR = 4.0  # quarters per 4/4 bar


def _spans(length: float) -> list[float]:
    """A length in quarters (a multiple of a 16th, within one bar) → notatable lengths, longest first."""
    out = []
    while length > 1e-9:
        out.append(next((q for q in NOTATABLE if q <= length + 1e-9), NOTATABLE[-1]))
        length -= out[-1]
    return out


def _slices(notes: list[Note], end: float) -> Iterator[tuple[float, float, list[Note]]]:
    """(start, stop, sounding notes by pitch) for every stretch between note boundaries and barlines: one sweep."""
    bounds = sorted({n.start for n in notes} | {n.end for n in notes} | {BAR * i for i in range(int(end // BAR) + 1)})
    ordered = sorted(notes, key=lambda n: n.start)
    sounding: dict[int, Note] = {}
    i = 0
    for a, b in zip(bounds, bounds[1:]):
        while i < len(ordered) and ordered[i].start <= a:
            n, i = ordered[i], i + 1
            if n.end > a and (n.pitch not in sounding or sounding[n.pitch].end < n.end):
                sounding[n.pitch] = n
        for pitch in [p for p, n in sounding.items() if n.end <= a]:
            del sounding[pitch]
        yield a, b, sorted(sounding.values(), key=lambda n: n.pitch)


def _tie(n: Note, a: float, b: float) -> Any:
    """The tie of note `n` on the notehead covering [a, b): it started before and/or goes on after."""
    from music21 import tie

    before, after = n.start < a - 1e-9, n.end > b + 1e-9
    kind = "continue" if before and after else "stop" if before else "start" if after else None
    return tie.Tie(kind) if kind else None


def _element(sounding: list[Note], a: float, length: float) -> Any:
    """A rest, a note or a chord of `length` quarters at `a`, tied to its neighbours where its notes go on."""
    from music21 import chord, note

    if not sounding:
        return note.Rest(quarterLength=length, fullMeasure=length == BAR)  # set: else music21 searches the part
    if len(sounding) == 1:
        element = note.Note(sounding[0].pitch, quarterLength=length)
        element.tie = _tie(sounding[0], a, a + length)
        return element
    element = chord.Chord([n.pitch for n in sounding], quarterLength=length)
    for head, n in zip(element.notes, sounding):
        head.tie = _tie(n, a, a + length)
    return element


def _music21_part(notes: list[Note], name: str, clef: Any, end: float) -> Any:
    """Notes (quarters, on a 16th grid) → a Part of 4/4 measures, built in one pass (linear in length).

    music21's own route (Part.insert per element, then makeNotation's makeMeasures, chordify and makeBeams)
    recomputes the part's extent or searches the whole part for context on every element: quadratic, 33 s at
    40k tokens. Here notes are cut at barlines and at each other's boundaries (overlaps become tied chords),
    every measure is filled with coreInsert and settled once, and beams come from the one time signature.
    """
    from music21 import bar, beam, meter, stream

    part = stream.Part()
    part.partName = name
    time_signature = meter.TimeSignature("4/4")
    measures = [stream.Measure(number=i + 1) for i in range(max(1, math.ceil(end / BAR - 1e-9)))]
    measures[0].coreInsert(0, clef)
    measures[0].coreInsert(0, time_signature)
    for a, b, sounding in _slices(notes, len(measures) * BAR):
        measure, offset = measures[int(a // BAR)], a % BAR
        for length in _spans(b - a):
            measure.coreInsert(offset, _element(sounding, a, length))
            a, offset = a + length, offset + length
    measures[-1].rightBarline = bar.Barline("final")
    for i, measure in enumerate(measures):
        measure.coreElementsChanged()
        heads = measure.notesAndRests.stream()
        if len(heads) > 1:
            for head, beams in zip(heads, time_signature.getBeams(heads, measureStartOffset=0.0)):
                head.beams = beams if beams is not None else beam.Beams()
        part.coreInsert(i * BAR, measure)
    part.coreElementsChanged()
    return part


def write_musicxml(piece: Piece, path: Path, qpm: float, grand_staff: bool = True) -> Path:
    """A score that opens in MuseScore: one part, or treble and bass parts when polyphonic music spans both."""
    from music21 import clef, metadata, stream, tempo

    quarters = piece.in_quarters(qpm)
    # Performance timings are not on a grid: notate them to the nearest 16th, at least one 16th long.
    notes = [
        Note(n.pitch, round(n.start * 4) / 4, max(round(n.start * 4) + 1, round(n.end * 4)) / 4, n.velocity)
        for n in quarters.notes
    ]
    end = max([n.end for n in notes] + [quarters.duration])
    score = stream.Score()
    score.insert(0, metadata.Metadata(title=path.stem, composer="generate (GRU sample)"))
    treble = [n for n in notes if n.pitch >= SPLIT_PITCH]
    bass = [n for n in notes if n.pitch < SPLIT_PITCH]
    if grand_staff and treble and bass:
        parts = [_music21_part(treble, "Right hand", clef.TrebleClef(), end), _music21_part(bass, "Left hand", clef.BassClef(), end)]
    else:
        low = bool(notes) and statistics.median(n.pitch for n in notes) < SPLIT_PITCH - 5
        parts = [_music21_part(notes, "Piano", clef.BassClef() if low else clef.TrebleClef(), end)]
    parts[0].measure(1).insert(0, tempo.MetronomeMark(number=qpm))
    for part in parts:
        score.insert(0, part)
    # The parts are complete scores already (measures, ties, beams): music21's makeNotation would redo them slowly.
    score.write("musicxml", fp=str(path), makeNotation=False)
    return path


def write_wav(pm: Any, path: Path, duration: float, soundfont: str | None = None) -> Path:
    """16-bit WAV: each instrument's program played by a General MIDI SoundFont, else sine waves (see audio.py)."""
    from generate.music.audio import render_wav

    render_wav(pm, path, soundfont=soundfont, sample_rate=SAMPLE_RATE, min_seconds=duration)
    return path


ROLL_WIDTH = 1000  # pixel columns per row of the piano roll
ROW_SECONDS = 30.0  # a longer piece wraps into rows of this many seconds, like lines of a page
MAX_ROWS = 40  # beyond 40 rows a row covers more seconds instead: image size, memory and time stay bounded


def roll_image(pm: Any, columns: int) -> tuple[np.ndarray, float, int]:
    """Every note as a bar of its velocity on a (pitches, columns) grid covering the piece → (grid, seconds, low pitch).

    Drawn note by note (no dense 50-per-second roll: that is 128 × 50 floats per second, 1 GB for 5 hours).
    """
    notes = [n for i in pm.instruments for n in i.notes]
    low, high = (min(n.pitch for n in notes) - 2, max(n.pitch for n in notes) + 3) if notes else (57, 72)
    seconds = max([n.end for n in notes] + [1e-3])
    grid = np.zeros((high - low, columns), dtype=np.float32)
    scale = columns / seconds
    for n in notes:
        first = min(int(n.start * scale), columns - 1)
        grid[n.pitch - low, first : max(first + 1, int(np.ceil(n.end * scale)))] = n.velocity
    return grid, seconds, low


def write_piano_roll(pm: Any, path: Path, title: str) -> Path:
    """The notes drawn with matplotlib (Agg, no display needed); a long piece wraps into rows, as many as MAX_ROWS."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    end = max([n.end for i in pm.instruments for n in i.notes] + [0.0])
    row_seconds = max(ROW_SECONDS, end / MAX_ROWS) if end > ROW_SECONDS else max(end, 1e-3)
    rows = max(1, math.ceil(end / row_seconds - 1e-9))
    grid, seconds, low = roll_image(pm, rows * ROLL_WIDTH)
    grid = grid.reshape(grid.shape[0], rows, ROLL_WIDTH)
    column_seconds = seconds / (rows * ROLL_WIDTH)
    fig = Figure(figsize=(10, 4 if rows == 1 else 1.0 + 1.5 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    for row, ax in enumerate(axes):
        start = row * ROLL_WIDTH * column_seconds
        if end > 0:
            ax.imshow(
                grid[:, row], aspect="auto", origin="lower", cmap="Greys", interpolation="nearest", vmin=0, vmax=127,
                extent=(start, start + ROLL_WIDTH * column_seconds, low - 0.5, low + grid.shape[0] - 0.5),
            )
        ax.set_ylim(low - 0.5, low + grid.shape[0] - 0.5)
        ax.set_ylabel("MIDI pitch" if rows == 1 else "pitch")
    axes[-1].set_xlabel("time (s)")
    axes[0].set_title(title)
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
