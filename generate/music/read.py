"""Music in: MIDI files (symusic, see midifile.py) and notation files (music21) → tracks of notes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from generate.errors import UserError
from generate.music.midifile import MidiContent, MidiSkip, read_midi_file
from generate.music.notes import QUARTER, Note, Track

SCORE_SECONDS_PER_QUARTER = 0.5  # scores have no performance timing: read them at 120 quarters/minute


def midi_tracks(content: MidiContent, unit: str) -> list[Track]:
    """A read MIDI file → tracks. Quarters come from ticks, so they do not depend on tempo; seconds honour it."""
    tracks = []
    for track in content.tracks:
        starts, ends = content.times(track, in_seconds=unit != QUARTER)
        notes = list(map(Note, track.pitches.tolist(), starts.tolist(), ends.tolist(), track.velocities.tolist()))
        tracks.append(Track(notes, track.is_drum, track.name))
    return tracks


def read_midi(path: Path) -> MidiContent:
    """A MIDI file → its content (symusic: ~10x faster than pretty_midi); MidiSkip says why a file has none."""
    return read_midi_file(path)


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
        content = read_midi(path)
    except MidiSkip as skip:
        raise UserError(f"primer {path} is not a readable MIDI file ({skip.reason.value}); give a .mid file") from None
    except OSError as err:
        raise UserError(f"primer {path} cannot be read ({err.strerror}); give a readable .mid file") from None
    notes = [n for t in midi_tracks(content, unit) if not t.is_drum for n in t.notes]
    if not notes:
        raise UserError(f"primer {path} has no pitched notes (drums are ignored); give a MIDI file with a melody in it")
    first = min(n.start for n in notes)
    notes = [Note(n.pitch, n.start - first, n.end - first, n.velocity) for n in notes]
    return notes, max(n.end for n in notes)
