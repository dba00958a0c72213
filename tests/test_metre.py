"""Bars, metre, key and tempo: reading them, tokenizing them (BAR / position / controls) and getting them back."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pretty_midi
import pytest

from generate.errors import UserError
from generate.music.extract import (
    TRIPLETS,
    Extraction,
    estimate_key,
    fold_into_range,
    key_shift,
    melody_pieces,
    shift_to_c,
)
from generate.music.notes import Key, Meter, Note, Piece, Track, bar_lines, meters_from
from generate.music.read import midi_tracks, read_midi, read_scores, score_tracks
from generate.tokenizers import MelodyTokenizer, PolyphonicTokenizer, tokenizer_from_dict
from generate.tokenizers.metre import parse_key

METRES = [Meter(2, 4), Meter(3, 4), Meter(4, 4), Meter(6, 8), Meter(9, 8)]
SCALE = (0, 2, 4, 5, 7, 9, 11)


def made_piece(meter: Meter, pickup: float, key: Key, seed: int, bars: int = 4, chords: bool = False) -> Piece:
    """A melody on the sixteenth grid: a pickup of `pickup` quarters, then `bars` bars of `meter`, in `key`."""
    rng = random.Random(seed)
    end = pickup + bars * meter.bar_quarters
    notes, t = [], 0.0
    while t < end - 1e-9:
        length = min(rng.choice((0.25, 0.5, 0.5, 0.75, 1.0, 1.5)), end - t)
        if rng.random() < 0.85:
            pitch = 60 + key.tonic + SCALE[rng.randrange(7)]
            notes.append(Note(pitch, t, t + length))
            if chords and rng.random() < 0.5:
                notes.append(Note(pitch - 5, t, t + length))
        t += length
    return Piece(notes, end, meters=[Meter(meter.numerator, meter.denominator, pickup)], key=key, qpm=100.0)


def tokenizers(metre: str) -> list:
    return [MelodyTokenizer(36, 96, 4, "highest", metre, True), PolyphonicTokenizer(36, 96, 4, metre, True)]


def same_notes(a: Piece, b: Piece) -> bool:
    return [(n.pitch, n.start, n.end) for n in a.notes] == [(n.pitch, n.start, n.end) for n in b.notes]


@pytest.mark.parametrize("metre", ["bar", "position"])
@pytest.mark.parametrize("meter", METRES, ids=str)
def test_round_trip_made_pieces(metre: str, meter: Meter) -> None:
    """Pieces in 2/4 .. 9/8 with pickups (none, a sixteenth, an eighth, a beat) and a key come back exactly."""
    for i, pickup in enumerate((0.0, 0.25, 0.5, 1.0)):
        key = Key((2 + 5 * i) % 12, "minor" if i % 2 else "major")
        for tok in tokenizers(metre):
            piece = made_piece(meter, pickup, key, seed=i, chords=tok.kind == "polyphonic")
            back = tok.decode([tok.SEP, *tok.encode(piece)])
            if tok.kind == "polyphonic":  # a roll merges a repeated note with a held one: compare rolls
                assert tok.to_roll(back) == tok.to_roll(piece)
            else:
                assert same_notes(back, piece)
            assert back.meters == piece.meters, (tok.kind, metre, pickup)
            assert back.key == key
            assert bar_lines(back.meters, back.duration) == bar_lines(piece.meters, piece.duration)


def test_round_trip_meter_change_and_bar_tokens() -> None:
    tok = MelodyTokenizer(36, 96, 4, "highest", "bar", True)
    piece = Piece([Note(60 + i % 5, i * 0.5, i * 0.5 + 0.5) for i in range(40)], 20.0,
                  meters=[Meter(3, 4, 0.5), Meter(6, 8, 9.5), Meter(2, 4, 15.5)], key=Key(7), qpm=140.0)
    ids = tok.encode(piece)
    names = [tok.token_name(i) for i in ids]
    assert names[:3] == ["METER(3/4)", "KEY(G)", "TEMPO(142)"]
    assert names.count("BAR") == len(bar_lines(piece.meters, piece.duration))
    back = tok.decode(ids)
    assert back.meters == piece.meters and same_notes(back, piece) and back.qpm == 142.0


def test_unknown_and_other_metres() -> None:
    tok = MelodyTokenizer(36, 96, 4, "highest", "bar", True)
    plain = Piece([Note(60, 0, 1), Note(62, 1, 2)], 8.0)
    assert tok.decode(tok.encode(plain)).meters == []  # no metre known: no bars made up
    five = Piece([Note(60, i, i + 1) for i in range(10)], 10.0, meters=[Meter(5, 4, 0.0)])
    assert tok.token_name(tok.encode(five)[0]) == "METER(other)"
    assert tok.decode(tok.encode(five)).meters == [Meter(5, 4, 0.0)]  # the bar length tells it


def test_old_tokenizer_dicts_are_unchanged() -> None:
    """A shipped checkpoint's dict (no metre fields) rebuilds the same vocabulary and the same ids as before."""
    old = {"kind": "melody", "min_pitch": 36, "max_pitch": 84, "steps_per_quarter": 4, "monophony": "highest"}
    tok = tokenizer_from_dict(old)
    assert tok.to_dict() == old and tok.vocab_size == 3 + 49
    piece = made_piece(Meter(6, 8), 0.5, Key(2), seed=3)
    ids = tok.encode(piece)
    assert len(ids) == round(piece.duration * 4) and max(ids) < 52  # one id a step, no bar or control ids
    assert tok.decode(ids).meters == [] and tok.decode(ids).key is None
    poly = {"kind": "polyphonic", "min_pitch": 21, "max_pitch": 108, "steps_per_quarter": 1}
    assert tokenizer_from_dict(poly).to_dict() == poly and tokenizer_from_dict(poly).vocab_size == 90
    with pytest.raises(UserError, match="needs a model trained with control tokens"):
        tok.control_ids(meter="6/8")


def test_control_ids_and_names() -> None:
    tok = MelodyTokenizer(36, 96, 4, "highest", "bar", True)
    assert [tok.token_name(i) for i in tok.control_ids("6/8", "Dm")] == ["METER(6/8)", "KEY(Dm)"]
    assert [tok.token_name(i) for i in tok.control_ids(None, "F#m")] == ["KEY(F#m)"]
    assert parse_key("Bb") == Key(10) and parse_key("c# minor") == Key(1, "minor") and parse_key("Db") == Key(1)
    with pytest.raises(UserError, match="key='H' is not a key"):
        tok.control_ids(key="H")
    with pytest.raises(UserError, match="meter='5/4' is not one this model knows"):
        tok.control_ids(meter="5/4")


def test_any_ids_decode_without_raising() -> None:
    rng = random.Random(0)
    for tok in tokenizers("bar") + tokenizers("position"):
        for _ in range(50):
            ids = [rng.randrange(-2, tok.vocab_size + 3) for _ in range(rng.randrange(0, 80))]
            piece = tok.decode(ids)
            assert all(m.start >= 0 for m in piece.meters) or not piece.meters


def real_tunes() -> list[list[Track]]:
    """Each file's tracks: a 6/8 jig with a pickup and a 9/8 slip jig (ABC), a 4/4 chorale with a pickup (MusicXML)."""
    from music21 import corpus

    files = [corpus.getWork("ryansMammoth/BattleTheCashJig"), corpus.getWork("ryansMammoth/AndrewCareysSlipjig"),
             corpus.getWork("bach/bwv66.6")]
    return [score_tracks(read_scores(Path(path))[0], "quarter") for path in files]


def test_music21_corpus_pieces_round_trip() -> None:
    seen = set()
    for tracks in real_tunes():
        assert tracks[0].meters and tracks[0].key is not None
        for tok in tokenizers("bar") + tokenizers("position"):
            counts: Counter = Counter()
            ex = Extraction(36, 96, split_silence_quarters=16)
            pieces = tok.extract(tracks[:1] if tok.kind == "melody" else tracks, ex, counts)
            assert pieces and counts["keys from the score"] == 1
            for piece in pieces:
                back = tok.decode(tok.encode(piece))
                assert back.meters == piece.meters and back.key == piece.key
                if tok.kind == "melody":
                    assert same_notes(back, piece)
                else:
                    assert tok.to_roll(back) == tok.to_roll(piece)
                seen.add((str(piece.meters[0]), piece.meters[0].start > 0))
    assert {("6/8", True), ("9/8", False), ("4/4", True)} <= seen  # the jig and the chorale start with a pickup


def test_midi_time_and_key_signatures_are_read(tmp_path: Path) -> None:
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=90)
    lead = pretty_midi.Instrument(0)
    beat = 60 / 90
    for i in range(24):  # an eighth-note pickup, then 6/8 bars
        lead.notes.append(pretty_midi.Note(90, 62 + SCALE[i % 7], i * 0.5 * beat, (i + 1) * 0.5 * beat))
    pm.instruments.append(lead)
    pm.time_signature_changes = [pretty_midi.TimeSignature(6, 8, 0.0), pretty_midi.TimeSignature(3, 4, 6.5 * beat)]
    pm.key_signature_changes = [pretty_midi.KeySignature(14, 0.0)]  # 14 = D minor in pretty_midi's numbering
    pm.write(str(tmp_path / "t.mid"))
    tracks = midi_tracks(read_midi(tmp_path / "t.mid"), "quarter")
    assert tracks[0].meters == [Meter(6, 8, 0.0), Meter(3, 4, 6.5)]
    assert tracks[0].key == Key(2, "minor") and round(tracks[0].qpm) == 90
    counts: Counter = Counter()
    melody_pieces(tracks, Extraction(48, 84), counts)
    assert counts["keys from the MIDI key signature"] == 1
    # A fragment starting mid-bar keeps its bar lines: the first downbeat after its first note.
    assert meters_from(tracks[0].meters, 1.0, 12.0) == [Meter(6, 8, 2.0), Meter(3, 4, 5.5)]


def test_key_estimate_and_source_counted() -> None:
    d_major = [Note(62 + s, i, i + 1) for i, s in enumerate((0, 2, 4, 5, 7, 9, 11, 12, 7, 4, 0))]
    assert estimate_key(d_major) == Key(2) and key_shift(d_major) == shift_to_c(Key(2)) == -2
    assert shift_to_c(Key(2, "minor")) == -5  # D minor → A minor
    counts: Counter = Counter()
    melody_pieces([Track(d_major * 2)], Extraction(48, 84, min_melody_steps=4), counts)
    assert counts["keys estimated (none in the file)"] == 1
    counts = Counter()
    pieces = melody_pieces([Track(d_major, key=Key(11, "minor"), key_source="score")], Extraction(48, 84, min_melody_steps=4),
                           counts)
    assert counts["keys from the score"] == 1 and pieces[0].key == Key(11, "minor")


def test_triplet_rule_counts_and_skips_or_keeps_at_twelve() -> None:
    """Over 10% of onsets off the grid but on the triplet grid: skipped and counted; steps_per_quarter=12 keeps it."""
    notes = [Note(60 + i % 3, i / 3, (i + 1) / 3) for i in range(48)]  # triplet eighths
    counts: Counter = Counter()
    assert melody_pieces([Track(notes)], Extraction(48, 84), counts) == [] and counts[TRIPLETS] == 1
    counts = Counter()
    kept = melody_pieces([Track(notes)], Extraction(48, 84, steps_per_quarter=12), counts)
    assert len(kept) == 1 and TRIPLETS not in counts
    performed = [Note(60, i * 0.5 + random.Random(i).uniform(-0.1, 0.1), i * 0.5 + 0.4) for i in range(40)]
    assert melody_pieces([Track(performed)], Extraction(48, 84), Counter())  # a performance is quantized as before


def test_wide_fragments_are_folded_not_dropped() -> None:
    """A piano top line spanning four octaves keeps every note: the best octave, the rest folded (counted)."""
    notes = [Note(36 + (i * 7) % 50, i * 0.5, i * 0.5 + 0.5) for i in range(64)]
    counts: Counter = Counter()
    pieces = melody_pieces([Track(notes)], Extraction(48, 84), counts)
    assert len(pieces) == 1 and len(pieces[0].notes) == 64
    assert all(48 <= n.pitch <= 84 for n in pieces[0].notes)
    assert counts["notes moved by an octave into the range (fragment wider than the range)"] > 0
    assert not any(k.startswith("fragments wider") for k in counts)
    assert fold_into_range(Piece([Note(60, 0, 1), Note(61, 1, 2)]), 62, 66, Counter()) is None  # < an octave


def test_primer_goes_through_the_training_pipeline(tmp_path: Path) -> None:
    """A D-minor MIDI primer with a pitch beyond the range: moved to A minor, folded into range, encoded."""
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120)
    lead = pretty_midi.Instrument(0)
    d_minor = (0, 2, 3, 5, 7, 8, 10)
    for i in range(32):
        pitch = 62 + d_minor[i % 7] + (36 if i == 5 else 0)  # one note far above the model's range
        lead.notes.append(pretty_midi.Note(90, pitch, 0.5 + i * 0.25, 0.75 + i * 0.25))
    pm.instruments.append(lead)
    pm.time_signature_changes = [pretty_midi.TimeSignature(4, 4, 0.0)]
    pm.write(str(tmp_path / "p.mid"))
    for tok in tokenizers("bar"):
        ids, shift = tok.primer_ids(tmp_path / "p.mid", to_c=True)
        assert shift == -5 and ids[0] == tok.SEP
        piece = tok.decode(ids)
        assert piece.key == Key(9, "minor")  # A minor: the training key
        assert piece.meters == [Meter(4, 4, 3.0)]  # the first note (0.5 s = 1 quarter) is 3 quarters before a bar
        assert all(36 <= n.pitch <= 96 for n in piece.notes)
        assert piece.transposed(-shift).key == Key(2, "minor")  # what sample moves the output back to
