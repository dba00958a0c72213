"""Music in: MIDI files (symusic, see midifile.py) and notation files (music21) → tracks of notes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from generate.errors import UserError
from generate.music.midifile import MidiContent, MidiSkip, read_midi_file
from generate.music.notes import QUARTER, Key, Meter, Note, Track

SCORE_SECONDS_PER_QUARTER = 0.5  # scores have no performance timing: read them at 120 quarters/minute


def midi_tracks(content: MidiContent, unit: str) -> list[Track]:
    """A read MIDI file → tracks. Quarters come from ticks, so they do not depend on tempo; seconds honour it.

    Every track carries the file's time signatures (as meters), first key signature and first tempo.
    """
    meters = midi_meters(content, unit)
    key = midi_key(content)
    qpm = content.tempos[0][1] if content.tempos and 0 < content.tempos[0][1] < 1000 else None
    tracks = []
    for track in content.tracks:
        starts, ends = content.times(track, in_seconds=unit != QUARTER)
        notes = list(map(Note, track.pitches.tolist(), starts.tolist(), ends.tolist(), track.velocities.tolist()))
        tracks.append(Track(notes, track.is_drum, track.name, meters, key, qpm, "MIDI key signature" if key else ""))
    return tracks


def midi_meters(content: MidiContent, unit: str) -> list[Meter]:
    """Time signature events → meters (of several on one time the last wins; repeats of the same one dropped)."""
    import numpy as np

    at: dict[float, tuple[int, int]] = {}
    for time, numerator, denominator in content.time_signatures:
        if numerator > 0 and denominator > 0:
            at[time] = (numerator, denominator)
    meters: list[Meter] = []
    for time in sorted(at):
        if meters and (meters[-1].numerator, meters[-1].denominator) == at[time]:
            continue
        start = time
        if unit != QUARTER:
            start = float(content.seconds(np.array([round(time * content.ticks_per_quarter)], dtype=np.int64))[0])
        meters.append(Meter(*at[time], start))
    return meters


def midi_key(content: MidiContent) -> Key | None:
    """The first key signature event as a Key (sharps count round the circle of fifths from C, or A minor)."""
    if not content.key_signatures:
        return None
    _, sharps, mode = content.key_signatures[0]
    return Key((7 * sharps + (9 if mode == "minor" else 0)) % 12, mode)


def read_midi(path: Path) -> MidiContent:
    """A MIDI file → its content (symusic: ~10x faster than pretty_midi); MidiSkip says why a file has none."""
    return read_midi_file(path)


def score_tracks(score: Any, unit: str) -> list[Track]:
    """A music21 score → one track per part (ties merged; grace notes and unpitched notes left out),
    each carrying the score's meters (pickup kept: the first starts at the first full bar), key and tempo."""
    from music21 import instrument

    scale = 1.0 if unit == QUARTER else SCORE_SECONDS_PER_QUARTER
    meters = [Meter(m.numerator, m.denominator, m.start * scale) for m in score_meters(score)]
    key, qpm = score_key(score), score_qpm(score)
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
        tracks.append(Track(notes, is_drum, part.partName or "", meters, key, qpm, "score" if key else ""))
    return tracks


def score_meters(score: Any) -> list[Meter]:
    """The time signatures of a score's first part, each from the bar it appears in; a first bar shorter than
    its time signature is a pickup, so the first meter starts at the bar after it."""
    parts = list(score.parts) or [score]
    measures = list(parts[0].getElementsByClass("Measure"))
    meters: list[Meter] = []
    for i, measure in enumerate(measures):
        signature = measure.timeSignature
        if signature is None:
            continue
        start = float(measure.offset)
        bar = float(signature.barDuration.quarterLength)
        if i == 0 and len(measures) > 1 and 0 < float(measure.duration.quarterLength) < bar - 1e-9:
            start = float(measures[1].offset)  # a pickup (anacrusis) bar
        if meters and (meters[-1].numerator, meters[-1].denominator) == (signature.numerator, signature.denominator):
            continue
        meters.append(Meter(int(signature.numerator), int(signature.denominator), start))
    return meters


def score_key(score: Any) -> Key | None:
    """A score's first key (or key signature, read as major); modes map to major or minor by their third."""
    from music21 import key as m21key

    found = score.flatten().getElementsByClass(m21key.KeySignature).first()
    if found is None:
        return None
    if not isinstance(found, m21key.Key):
        found = found.asKey("major")
    minor = str(found.mode) in ("minor", "dorian", "phrygian", "aeolian", "locrian")
    return Key(found.tonic.pitchClass, "minor" if minor else "major")


def score_qpm(score: Any) -> float | None:
    """The first metronome mark's quarters per minute, None when the score has none."""
    mark = score.flatten().getElementsByClass("MetronomeMark").first()
    qpm = mark.getQuarterBPM() if mark is not None else None
    return float(qpm) if qpm else None


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


SCORE_PRIMERS = (".xml", ".musicxml", ".mxl", ".abc", ".krn")


def read_primer_tracks(path: Path, unit: str) -> list[Track]:
    """A primer (MIDI, or a MusicXML/ABC/Humdrum score: its first tune) → its pitched tracks with notes, meters
    and key; UserError if unusable."""
    if path.suffix.lower() not in SCORE_PRIMERS:
        read_primer(path, unit)  # the one-line refusals for a missing, unreadable or drum-only MIDI file
        tracks = midi_tracks(read_midi(path), unit)
    else:
        if not path.is_file():
            raise UserError(f"primer file not found: {path}; give primer=FILE (.mid, .musicxml, .abc)")
        try:
            tracks = score_tracks(read_scores(path)[0], unit)
        except Exception as err:  # music21 raises many kinds for a bad file
            raise UserError(f"primer {path} is not readable as a score ({type(err).__name__}); give a .mid file") from None
    tracks = [t for t in tracks if not t.is_drum and t.notes]
    if not tracks:
        raise UserError(f"primer {path} has no pitched notes (drums are ignored); give a file with a melody in it")
    return tracks
