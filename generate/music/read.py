"""Music in: MIDI files (pretty_midi) and notation files (music21) → tracks of notes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from generate.errors import UserError
from generate.music.notes import QUARTER, Note, Track

SAFE_RESOLUTION = 480  # ticks per quarter that over-long, over-fine MIDI files are re-timed to
SCORE_SECONDS_PER_QUARTER = 0.5  # scores have no performance timing: read them at 120 quarters/minute


def midi_tracks(pm: Any, unit: str) -> list[Track]:
    """A pretty_midi.PrettyMIDI → tracks. Quarters come from ticks, so they do not depend on tempo."""
    tracks = []
    for inst in pm.instruments:
        if unit == QUARTER:
            res = pm.resolution
            notes = [
                Note(n.pitch, pm.time_to_tick(n.start) / res, pm.time_to_tick(n.end) / res, n.velocity)
                for n in inst.notes
            ]
        else:
            notes = [Note(n.pitch, n.start, n.end, n.velocity) for n in inst.notes]
        tracks.append(Track(notes, inst.is_drum, inst.name))
    return tracks


def read_midi(path: Path) -> Any:
    """A MIDI file → pretty_midi.PrettyMIDI, also for long files written at a very fine resolution.

    pretty_midi refuses files whose last tick is past its MAX_TICK (1e7) as "likely corrupt";
    music21 writes 10080 ticks per quarter, so a 250-bar piece from it hits that. Such a file is
    re-timed to 480 ticks per quarter first (with mido, which pretty_midi reads through); a file
    that is past the limit even at 480 is left for pretty_midi to refuse.
    """
    import mido
    import pretty_midi

    with warnings.catch_warnings():  # pretty_midi warns about harmless quirks of many real files
        warnings.simplefilter("ignore")
        data = mido.MidiFile(filename=str(path), charset="latin1")
        # pretty_midi fails on a track with no events at all ("max() arg is an empty sequence");
        # such tracks carry nothing, so the rest of the file is still worth reading.
        data.tracks = [track for track in data.tracks if len(track)] or data.tracks[:1]
        last_tick = max((sum(msg.time for msg in track) for track in data.tracks), default=0)
        if last_tick >= pretty_midi.pretty_midi.MAX_TICK and data.ticks_per_beat > SAFE_RESOLUTION:
            _retime(data, SAFE_RESOLUTION)
        return pretty_midi.PrettyMIDI(mido_object=data)


def _retime(data: Any, resolution: int) -> None:
    """Change a mido.MidiFile's ticks per quarter in place, rounding absolute times (no drift)."""
    scale = resolution / data.ticks_per_beat
    for track in data.tracks:
        absolute, placed = 0, 0
        for msg in track:
            absolute += msg.time
            new = round(absolute * scale)
            msg.time, placed = new - placed, new
    data.ticks_per_beat = resolution


def score_tracks(score: Any, unit: str) -> list[Track]:
    """A music21 score → one track per part (ties merged; grace notes and unpitched notes left out)."""
    from music21 import instrument

    scale = 1.0 if unit == QUARTER else SCORE_SECONDS_PER_QUARTER
    tracks = []
    for part in score.parts:
        inst = part.getInstrument(returnDefault=True)
        is_drum = isinstance(inst, instrument.UnpitchedPercussion)
        notes = []
        for el in part.stripTies().flatten().notes:
            length = float(el.quarterLength)
            if length <= 0 or not hasattr(el, "pitches"):
                continue
            start = float(el.offset)
            velocity = el.volume.velocity or 90
            for p in el.pitches:
                notes.append(Note(p.midi, start * scale, (start + length) * scale, velocity))
        tracks.append(Track(notes, is_drum, part.partName or ""))
    return tracks


def read_scores(path: Path) -> list[Any]:
    """A notation file → its scores (an ABC file may hold many tunes)."""
    from music21 import converter, stream

    parsed = converter.parse(str(path))
    if isinstance(parsed, stream.Opus):
        return list(parsed.scores)
    if not isinstance(parsed, stream.Score):  # a lone part or stream: wrap it
        parsed = stream.Score([parsed])
    return [parsed]


def read_primer(path: Path, unit: str) -> tuple[list[Note], float]:
    """A primer MIDI file → its pitched notes, starting at 0, and its length; UserError if unusable."""
    if not path.is_file():
        raise UserError(f"primer file not found: {path}; give primer=FILE.mid")
    try:
        pm = read_midi(path)
    except Exception as err:  # mido/pretty_midi raise many types for non-MIDI bytes
        detail = str(err).strip().splitlines()[0][:80] if str(err).strip() else ""
        raise UserError(
            f"primer {path} is not a readable MIDI file ({type(err).__name__}{': ' + detail if detail else ''}); "
            "give a .mid file"
        ) from None
    notes = [n for t in midi_tracks(pm, unit) if not t.is_drum for n in t.notes]
    if not notes:
        raise UserError(f"primer {path} has no pitched notes (drums are ignored); give a MIDI file with a melody in it")
    first = min(n.start for n in notes)
    notes = [Note(n.pitch, n.start - first, n.end - first, n.velocity) for n in notes]
    return notes, max(n.end for n in notes)
