"""The one-pass MusicXML builder and the row-wrapped piano roll: right notation at any length (speed is bench/render_speed.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pretty_midi
from music21 import converter, stream

from generate.music.notes import Note, Piece
from generate.music.render import MAX_ROWS, _spans, write_musicxml, write_piano_roll

QPM = 120.0


def measures_of(path: Path) -> list[stream.Measure]:
    score = converter.parse(str(path))
    return list(score.parts[0].getElementsByClass(stream.Measure))


def test_notes_across_barlines_are_tied_and_every_bar_is_full(tmp_path: Path) -> None:
    # 7 sixteenths from beat 4.5 over the barline, a rest, then a note of 5 sixteenths (not one notehead).
    piece = Piece([Note(60, 0.0, 1.0), Note(64, 3.5, 5.25), Note(67, 6.0, 7.25)], 8.0)
    bars = measures_of(write_musicxml(piece, tmp_path / "x.musicxml", QPM, grand_staff=False))
    assert len(bars) == 2 and all(m.duration.quarterLength == 4.0 for m in bars)
    joined = converter.parse(str(tmp_path / "x.musicxml")).stripTies().flatten().notes
    assert [(n.pitch.midi, float(n.offset), float(n.quarterLength)) for n in joined] == [
        (60, 0.0, 1.0), (64, 3.5, 1.75), (67, 6.0, 1.25)
    ]
    assert bars[-1].rightBarline is not None and bars[-1].rightBarline.type == "final"


def test_overlapping_notes_become_tied_chords(tmp_path: Path) -> None:
    piece = Piece([Note(60, 0.0, 2.0), Note(64, 1.0, 2.0)], 4.0)
    bars = measures_of(write_musicxml(piece, tmp_path / "x.musicxml", QPM, grand_staff=False))
    heads = list(bars[0].notesAndRests)
    assert [h.quarterLength for h in heads] == [1.0, 1.0, 2.0]  # C alone, then C+E, then a rest
    assert [p.midi for p in heads[1].pitches] == [60, 64]
    assert heads[0].tie is not None and heads[0].tie.type == "start"
    assert heads[1].notes[0].tie.type == "stop" and heads[1].notes[1].tie is None


def test_spans_are_single_noteheads() -> None:
    assert _spans(1.25) == [1.0, 0.25] and _spans(3.75) == [3.0, 0.75] and _spans(4.0) == [4.0]
    assert all(sum(_spans(k / 4)) == k / 4 for k in range(1, 17))


def roll(seconds: float) -> pretty_midi.PrettyMIDI:
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    inst.notes = [pretty_midi.Note(90, 60 + int(t) % 12, t, t + 0.5) for t in range(int(seconds))]
    pm.instruments.append(inst)
    return pm


def test_piano_roll_wraps_long_pieces_into_bounded_rows(tmp_path: Path) -> None:
    short = matplotlib.image.imread(str(write_piano_roll(roll(20), tmp_path / "short.png", "short")))
    minutes = matplotlib.image.imread(str(write_piano_roll(roll(150), tmp_path / "minutes.png", "minutes")))
    hours = matplotlib.image.imread(str(write_piano_roll(roll(4 * 3600), tmp_path / "hours.png", "hours")))
    assert short.shape[:2] == (400, 1000)  # one row, as before
    assert minutes.shape[0] > 2 * short.shape[0]  # five rows of 30 s
    assert hours.shape[0] == round(100 * (1.0 + 1.5 * MAX_ROWS))  # capped: each row then covers 6 minutes
    assert (hours[..., :3] < 0.5).any()  # notes were drawn
