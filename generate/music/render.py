"""Music out: a decoded Piece → .mid (pretty_midi), .musicxml (music21), .wav, piano-roll .png."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from generate.music.notes import Key, Meter, Note, Piece

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


def tempo(piece: Piece, qpm: float) -> float:
    """The tempo a piece is written at: its own (piece.qpm) when it has one, else `qpm`."""
    return piece.qpm if piece.qpm and piece.qpm > 0 else qpm


def key_sharps(key: Key) -> int:
    """A key's signature as sharps (flats < 0), -5..6: the major key (or the minor's relative major) round the fifths."""
    major = (key.tonic + (3 if key.mode == "minor" else 0)) % 12
    sharps = major * 7 % 12
    return sharps - 12 if sharps > 6 else sharps


def lead_in(piece: Piece, qpm: float) -> float:
    """Seconds of rest a .mid puts before a pickup, so that it ends a full first bar: MIDI has no pickup
    measure, and a time signature must fall on a bar line for players and notation programs to count bars."""
    quarters = piece.in_quarters(qpm)
    return measures(quarters.meters, 0.0)[0].padding * 60.0 / qpm if quarters.meters else 0.0


def to_pretty_midi(piece: Piece, qpm: float, program: int | None = None) -> Any:
    """One instrument playing the piece: General MIDI `program` (None: 0, piano), which the .wav honours too.

    The file also carries the piece's tempo, its key signature and a time signature at the start of each
    meter (the first at 0: a pickup is preceded by the rest that fills its bar, see lead_in; without meters
    the time signature is 4/4).
    """
    import pretty_midi

    qpm = tempo(piece, qpm)
    seconds = piece.in_seconds(qpm)
    lead = lead_in(piece, qpm)
    pm = pretty_midi.PrettyMIDI(resolution=MIDI_RESOLUTION, initial_tempo=qpm)
    program = program or 0
    piano = pretty_midi.Instrument(program=program, name=pretty_midi.program_to_instrument_name(program))
    piano.notes = [
        pretty_midi.Note(velocity=int(np.clip(n.velocity, 1, 127)), pitch=n.pitch, start=n.start + lead, end=n.end + lead)
        for n in seconds.notes
    ]
    pm.instruments.append(piano)
    starts = [0.0] + [m.start + lead for m in seconds.meters[1:]]
    pm.time_signature_changes = [
        pretty_midi.TimeSignature(m.numerator, m.denominator, t) for m, t in zip(seconds.meters, starts)
    ]
    if piece.key is not None:
        pm.key_signature_changes = [pretty_midi.KeySignature(piece.key.tonic + 12 * (piece.key.mode == "minor"), 0.0)]
    return pm


def write_midi(pm: Any, path: Path) -> Path:
    pm.write(str(path))
    return path


# Durations one notehead (with at most one dot) can show; longer or odd spans are written as tied pieces.
NOTATABLE = (4.0, 3.0, 2.0, 1.5, 1.0, 0.75, 0.5, 0.25)
COMMON_TIME = Meter(4, 4, 0.0)  # the meter of a piece that has none


@dataclass(frozen=True)
class Measure:
    """One bar of the score: where it starts and how long it is (quarters), its meter, and for a pickup
    the part of the notional bar before it (music21's paddingLeft)."""

    start: float
    length: float
    meter: Meter
    padding: float = 0.0


def measures(meters: list[Meter], end: float) -> list[Measure]:
    """The bars covering 0..end (quarters): before the first meter's start whole bars of it counted back
    from there, the earliest a pickup; then each meter's bars to the next meter (a bar it cuts short stays
    short) and the last meter's to the end, the last bar filled out. Without meters: 4/4 from 0. Linear in
    the number of bars."""
    usable = sorted((m for m in meters if m.numerator > 0 and m.denominator > 0), key=lambda m: m.start)
    by_start = {round(max(0.0, m.start) * 4) / 4: m for m in usable}  # on the notation's 16th grid; the last wins
    starts = sorted(by_start) or [0.0]
    chosen = [replace(by_start[t], start=t) for t in starts] if by_start else [COMMON_TIME]
    first = chosen[0]
    out: list[Measure] = []
    t = first.start
    while t > 1e-9:  # the pickup, and any whole bars before it
        begin = max(0.0, t - first.bar_quarters)
        out.append(Measure(begin, t - begin, first, first.bar_quarters - (t - begin)))
        t = begin
    out.reverse()
    for i, meter in enumerate(chosen):
        stop = chosen[i + 1].start if i + 1 < len(chosen) else end
        t = meter.start
        while t < stop - 1e-9:
            last = i + 1 == len(chosen)  # the piece's last bar is filled out with rest; a bar a change cuts is not
            out.append(Measure(t, meter.bar_quarters if last else min(meter.bar_quarters, stop - t), meter))
            t += meter.bar_quarters
    return out or [Measure(first.start, first.bar_quarters, first)]  # an empty piece: one bar of rest


def _spans(length: float) -> list[float]:
    """A length in quarters (a multiple of a 16th, within one bar) → notatable lengths, longest first."""
    out = []
    while length > 1e-9:
        out.append(next((q for q in NOTATABLE if q <= length + 1e-9), NOTATABLE[-1]))
        length -= out[-1]
    return out


def _slices(notes: list[Note], bar_lines: list[float]) -> Iterator[tuple[float, float, list[Note]]]:
    """(start, stop, sounding notes by pitch) for every stretch between note boundaries and barlines: one sweep."""
    bounds = sorted({n.start for n in notes} | {n.end for n in notes} | set(bar_lines))
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


def _element(sounding: list[Note], a: float, length: float, bar: float | None) -> Any:
    """A rest, a note or a chord of `length` quarters at `a`, tied to its neighbours where its notes go on."""
    from music21 import chord, note

    if not sounding:
        return note.Rest(quarterLength=length, fullMeasure=length == bar)  # set: else music21 searches the part
    if len(sounding) == 1:
        element = note.Note(sounding[0].pitch, quarterLength=length)
        element.tie = _tie(sounding[0], a, a + length)
        return element
    element = chord.Chord([n.pitch for n in sounding], quarterLength=length)
    for head, n in zip(element.notes, sounding):
        head.tie = _tie(n, a, a + length)
    return element


def _music21_part(notes: list[Note], name: str, clef: Any, bars: list[Measure], key: Key | None) -> Any:
    """Notes (quarters, on a 16th grid) → a Part of the given measures, built in one pass (linear in length).

    music21's own route (Part.insert per element, then makeNotation's makeMeasures, chordify and makeBeams)
    recomputes the part's extent or searches the whole part for context on every element: quadratic, 33 s at
    40k tokens. Here notes are cut at barlines and at each other's boundaries (overlaps become tied chords),
    every measure is filled with coreInsert and settled once, and beams come from its time signature.
    """
    from music21 import bar, beam, meter, stream
    from music21 import key as m21key

    part = stream.Part()
    part.partName = name
    pickup = bars[0].padding > 0
    measures_ = [stream.Measure(number=i if pickup else i + 1) for i in range(len(bars))]
    signatures: list[Any] = []
    for i, (measure, b) in enumerate(zip(measures_, bars)):
        if i == 0 or str(b.meter) != str(bars[i - 1].meter):  # a time signature only where the metre changes
            signatures.append(meter.TimeSignature(str(b.meter)))
        else:
            signatures.append(signatures[-1])
        measure.paddingLeft = b.padding
    measures_[0].coreInsert(0, clef)
    if key is not None:
        measures_[0].coreInsert(0, m21key.KeySignature(key_sharps(key)).asKey(key.mode))
    for i, measure in enumerate(measures_):
        if i == 0 or signatures[i] is not signatures[i - 1]:
            measure.coreInsert(0, signatures[i])
    end = bars[-1].start + bars[-1].length
    current = 0
    for a, b, sounding in _slices(notes, [m.start for m in bars] + [end]):
        while current + 1 < len(bars) and bars[current + 1].start <= a + 1e-9:
            current += 1
        measure, offset = measures_[current], a - bars[current].start
        whole = bars[current].meter.bar_quarters
        full = whole if bars[current].length == whole else None  # a pickup's or a cut bar's rest is not a whole-bar rest
        for length in _spans(b - a):
            measure.coreInsert(offset, _element(sounding, a, length, full))
            a, offset = a + length, offset + length
    measures_[-1].rightBarline = bar.Barline("final")
    for measure, b, signature in zip(measures_, bars, signatures):
        measure.coreElementsChanged()
        heads = measure.notesAndRests.stream()
        if len(heads) > 1:
            try:
                beams = signature.getBeams(heads, measureStartOffset=b.padding)
            except Exception:  # a bar cut short by a meter change can defeat music21's beaming: leave it unbeamed
                beams = [None] * len(heads)
            for head, group in zip(heads, beams):
                head.beams = group if group is not None else beam.Beams()
        part.coreInsert(b.start, measure)
    part.coreElementsChanged()
    return part


def write_musicxml(piece: Piece, path: Path, qpm: float, grand_staff: bool = True) -> Path:
    """A score that opens in MuseScore: one part, or treble and bass parts when polyphonic music spans both.

    Its bars follow the piece's meters (time signatures where they change, a pickup measure when the first
    meter starts after 0; 4/4 without meters), with the piece's key signature and tempo.
    """
    from music21 import clef, metadata, stream
    from music21 import tempo as m21tempo

    qpm = tempo(piece, qpm)
    quarters = piece.in_quarters(qpm)
    # Performance timings are not on a grid: notate them to the nearest 16th, at least one 16th long.
    notes = [
        Note(n.pitch, round(n.start * 4) / 4, max(round(n.start * 4) + 1, round(n.end * 4)) / 4, n.velocity)
        for n in quarters.notes
    ]
    bars = measures(quarters.meters, max([n.end for n in notes] + [quarters.duration]))
    score = stream.Score()
    score.insert(0, metadata.Metadata(title=path.stem, composer="generate (GRU sample)"))
    treble = [n for n in notes if n.pitch >= SPLIT_PITCH]
    bass = [n for n in notes if n.pitch < SPLIT_PITCH]
    if grand_staff and treble and bass:
        parts = [_music21_part(treble, "Right hand", clef.TrebleClef(), bars, piece.key),
                 _music21_part(bass, "Left hand", clef.BassClef(), bars, piece.key)]
    else:
        low = bool(notes) and statistics.median(n.pitch for n in notes) < SPLIT_PITCH - 5
        parts = [_music21_part(notes, "Piano", clef.BassClef() if low else clef.TrebleClef(), bars, piece.key)]
    parts[0].getElementsByClass(stream.Measure).first().insert(0, m21tempo.MetronomeMark(number=qpm))
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


NOTE_GAP = 2  # blank columns at the end of a note (a shorter note keeps at least half): repeated notes stay apart
MAX_LINES_PER_ROW = 200  # beat lines are left out where more would crowd a row (bar lines too, past this)


def roll_image(pm: Any, columns: int) -> tuple[np.ndarray, float, int]:
    """Every note as a bar of its velocity on a (pitches, columns) grid covering the piece → (grid, seconds, low pitch).

    Drawn note by note (no dense 50-per-second roll: that is 128 × 50 floats per second, 1 GB for 5 hours).
    Each note stops up to NOTE_GAP columns short of its end, so two notes of one pitch in a row show as two.
    """
    notes = [n for i in pm.instruments for n in i.notes]
    low, high = (min(n.pitch for n in notes) - 2, max(n.pitch for n in notes) + 3) if notes else (57, 72)
    seconds = max([n.end for n in notes] + [1e-3])
    grid = np.zeros((high - low, columns), dtype=np.float32)
    scale = columns / seconds
    for n in notes:
        first = min(int(n.start * scale), columns - 1)
        stop = max(first + 1, int(np.ceil(n.end * scale)))
        grid[n.pitch - low, first : stop - min(NOTE_GAP, (stop - first) // 2)] = n.velocity
    return grid, seconds, low


def bar_and_beat_seconds(piece: Piece, qpm: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the piece's bars and beats fall, in seconds at `qpm` (4/4 without meters): the roll's vertical lines.

    A beat is the meter's denominator, or a dotted one in compound meters (6/8, 9/8, 12/8: three eighths).
    """
    quarters = piece.in_quarters(qpm)
    bars = measures(quarters.meters, quarters.duration)
    beats = []
    for b in bars:
        m = b.meter
        beat = 4 / m.denominator * (3 if m.numerator % 3 == 0 and m.numerator > 3 and m.denominator >= 8 else 1)
        count = math.ceil((b.padding + b.length) / beat - 1e-9)
        beats.append(b.start - b.padding + beat * np.arange(count))
    beat_times = np.concatenate(beats) if beats else np.zeros(0)
    beat_times = beat_times[beat_times >= bars[0].start - bars[0].padding - 1e-9]
    spq, lead = 60.0 / qpm, bars[0].padding * 60.0 / qpm if quarters.meters else 0.0  # the .mid's time (lead_in)
    return np.array([bars[0].start - bars[0].padding] + [b.start for b in bars[1:]]) * spq + lead, beat_times * spq + lead


def write_piano_roll(pm: Any, path: Path, title: str, lines: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """The notes drawn with matplotlib (Agg, no display needed); a long piece wraps into rows, as many as MAX_ROWS.

    `lines` (bar and beat times in seconds, see bar_and_beat_seconds) are drawn as vertical lines behind the notes.
    """
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
    bars, beats = lines if lines is not None else (np.zeros(0), np.zeros(0))
    for row, ax in enumerate(axes):
        start = row * ROLL_WIDTH * column_seconds
        stop = start + ROLL_WIDTH * column_seconds
        if end > 0:
            ax.imshow(
                # silence masked (transparent), so the bar and beat lines behind the notes show through
                np.ma.masked_equal(grid[:, row], 0), aspect="auto", origin="lower", cmap="Greys",
                interpolation="nearest", vmin=0, vmax=127, extent=(start, stop, low - 0.5, low + grid.shape[0] - 0.5),
                zorder=2,
            )
        for times, colour, width in ((beats, "#9ecae1", 0.5), (bars, "#3182bd", 1.0)):
            shown = times[(times >= start) & (times < stop)]
            if 0 < len(shown) <= MAX_LINES_PER_ROW:
                ax.vlines(shown, low - 0.5, low + grid.shape[0] - 0.5, colors=colour, linewidth=width, zorder=1)
        ax.set_xlim(start, stop)
        ax.set_ylim(low - 0.5, low + grid.shape[0] - 0.5)
        ax.set_ylabel("MIDI pitch" if rows == 1 else "pitch")
    axes[-1].set_xlabel("time (s)" + (" — bar lines dark, beats light" if len(bars) else ""))
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
    qpm = tempo(piece, qpm)
    path_stem = Path(path_stem)
    pm = to_pretty_midi(piece, qpm, program)
    seconds = piece.in_seconds(qpm).duration + lead_in(piece, qpm)
    title = f"{path_stem.name} ({label})" if label else path_stem.name
    return [
        write_midi(pm, path_stem.with_name(path_stem.name + ".mid")),
        write_musicxml(piece, path_stem.with_name(path_stem.name + ".musicxml"), qpm, grand_staff and not melody),
        write_wav(pm, path_stem.with_name(path_stem.name + ".wav"), seconds, soundfont),
        write_piano_roll(pm, path_stem.with_name(path_stem.name + ".png"), title, bar_and_beat_seconds(piece, qpm)),
    ]
