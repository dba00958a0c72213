"""Music tokenizers: round trips on synthesized MIDI and a chorale, decoding rules for ill-formed ids, saving."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generate.music.notes import Note, Piece
from generate.sources.music import process_midi_file, process_score_file
from generate.tokenizers import tokenizer_from_dict
from generate.tokenizers.events import EventTokenizer, bin_velocity, velocity_bin
from generate.tokenizers.melody import MelodyTokenizer
from generate.tokenizers.polyphonic import PolyphonicTokenizer
from tests.music_helpers import song

TOKENIZERS = {
    "melody": MelodyTokenizer(36, 96, 4),
    "polyphonic": PolyphonicTokenizer(21, 108, 4),
    "events": EventTokenizer(21, 108),
}


@pytest.fixture(scope="module")
def synthesized_midi(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("midi") / "song.mid"
    song(3, bars=8, tonic=62).write(str(path))
    return path


@pytest.fixture(scope="module")
def chorale_path() -> str:
    from music21 import corpus

    return str(corpus.getWork("bwv269"))


def assert_round_trip(tokenizer, ids: list[int]) -> None:
    """encode(decode(ids)) == ids for ids that came from encode (well-formed)."""
    ids = [int(i) for i in ids]  # a file's pieces come as int32 arrays
    assert ids, "nothing was tokenized"
    piece = tokenizer.decode(ids)
    assert piece.notes
    assert tokenizer.encode(piece) == ids


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_round_trip_on_synthesized_midi(kind: str, synthesized_midi: Path) -> None:
    tokenizer = TOKENIZERS[kind]
    result = process_midi_file(("song.mid", str(synthesized_midi)), tokenizer, tokenizer.extraction(min_melody_steps=4))
    assert result.reason is None
    for docs in result.docs:
        assert_round_trip(tokenizer, docs[0])


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_round_trip_on_a_music21_chorale(kind: str, chorale_path: str) -> None:
    tokenizer = TOKENIZERS[kind]
    result = process_score_file(("bwv269", chorale_path), tokenizer, tokenizer.extraction(part="soprano"))
    assert result.reason is None and result.docs
    for docs in result.docs:
        assert_round_trip(tokenizer, docs[0])


def test_chorale_melody_is_the_soprano_line(chorale_path: str) -> None:
    tokenizer = TOKENIZERS["melody"]
    result = process_score_file(("bwv269", chorale_path), tokenizer, tokenizer.extraction(part="soprano"))
    piece = tokenizer.decode(result.docs[0][0])
    # bwv269 opens G4 G4 D5 B4 in the soprano (music21's corpus); the alto starts on D4.
    assert [n.pitch for n in piece.notes[:4]] == [67, 67, 74, 71]


# ---------------------------------------------------------------- property-based round trips

grid_notes = st.lists(
    st.tuples(st.integers(0, 63), st.integers(1, 8), st.integers(36, 96), st.integers(1, 127)), max_size=40
)


@settings(max_examples=60, deadline=None)
@given(grid_notes, st.integers(0, 8))
def test_melody_round_trip_property(notes, tail: int) -> None:
    tok = TOKENIZERS["melody"]
    piece = Piece([Note(p, s / 4, (s + d) / 4, v) for s, d, p, v in notes], tail / 4)
    ids = tok.encode(piece)
    assert tok.encode(tok.decode(ids)) == ids
    assert len(ids) == round(tok.decode(ids).duration * 4)  # one token per grid step


@settings(max_examples=60, deadline=None)
@given(grid_notes)
def test_polyphonic_round_trip_property(notes) -> None:
    tok = TOKENIZERS["polyphonic"]
    ids = tok.encode(Piece([Note(p, s / 4, (s + d) / 4, v) for s, d, p, v in notes]))
    assert tok.encode(tok.decode(ids)) == ids


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 2.5), st.integers(21, 108), st.integers(1, 127)), max_size=40))
def test_events_round_trip_property(notes) -> None:
    tok = TOKENIZERS["events"]
    ids = tok.encode(Piece([Note(p, s, s + d, v) for s, d, p, v in notes], unit="second"))
    assert tok.encode(tok.decode(ids)) == ids


# ---------------------------------------------------------------- decoding rules for ill-formed ids


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_decode_never_raises(kind: str) -> None:
    tok = TOKENIZERS[kind]
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(-3, tok.vocab_size + 3) for _ in range(rng.randrange(0, 60))]
        piece = tok.decode(ids)
        assert all(n.end > n.start for n in piece.notes)
        assert all(tok.in_range(n.pitch) for n in piece.notes)


def test_melody_decoding_rules() -> None:
    tok = MelodyTokenizer(60, 72, 4)
    on = tok.note_on
    # HOLD first is a rest; NOTE_OFF with nothing sounding is a rest step; SEP ends the note, takes no time.
    piece = tok.decode([tok.HOLD, tok.NOTE_OFF, on(60), tok.HOLD, tok.SEP, tok.HOLD, on(64), 999])
    assert [(n.pitch, n.start * 4, n.end * 4) for n in piece.notes] == [(60, 2, 4), (64, 5, 7)]
    assert piece.duration * 4 == 7
    assert tok.decode([]).notes == []


def test_melody_encoding_uses_note_off_and_hold() -> None:
    tok = MelodyTokenizer(60, 72, 4)
    # C for one quarter, a quarter rest, then E: ON HOLD HOLD HOLD OFF HOLD HOLD HOLD ON
    piece = Piece([Note(60, 0, 1), Note(64, 2, 2.25)])
    assert tok.encode(piece) == [tok.note_on(60)] + [tok.HOLD] * 3 + [tok.NOTE_OFF] + [tok.HOLD] * 3 + [tok.note_on(64)]


def test_melody_monophony_rule() -> None:
    chord = [Note(60, 0, 1), Note(64, 0, 1), Note(67, 0.5, 1)]
    high = MelodyTokenizer(48, 84, 4, "highest").decode(MelodyTokenizer(48, 84, 4, "highest").encode(Piece(chord)))
    low = MelodyTokenizer(48, 84, 4, "lowest").decode(MelodyTokenizer(48, 84, 4, "lowest").encode(Piece(chord)))
    # At a shared onset one note wins; a later onset cuts the sounding note off.
    assert [(n.pitch, n.start, n.end) for n in high.notes] == [(64, 0, 0.5), (67, 0.5, 1)]
    assert [(n.pitch, n.start, n.end) for n in low.notes] == [(60, 0, 0.5), (67, 0.5, 1)]


def test_polyphonic_steps_and_decoding_rules() -> None:
    tok = PolyphonicTokenizer(48, 84, 1)
    ids = tok.encode(Piece([Note(60, 0, 2), Note(64, 0, 1), Note(67, 1, 2)], 3))
    p = tok.FIRST_PITCH - 48
    assert ids == [p + 60, p + 64, tok.STEP, p + 60, p + 67, tok.STEP, tok.STEP]
    assert tok.count_time_steps(ids) == 3
    # Order and repeats inside a step do not matter; pitches after the last STEP form a final step.
    messy = tok.decode([p + 67, p + 60, p + 67, tok.STEP, tok.SEP, p + 62])
    assert [(n.pitch, n.start, n.end) for n in messy.notes] == [(60, 0, 1), (67, 0, 1), (62, 1, 2)]


def test_events_encoding_details() -> None:
    tok = EventTokenizer(21, 108)
    ids = tok.encode(Piece([Note(60, 0.0, 2.5, 100), Note(60, 1.0, 3.0, 40)], unit="second"))
    names = [tok.token_name(i) for i in ids]
    # The same pitch struck again is cut, gaps over 1 s are several shifts, velocity only when it changes.
    assert names == [
        "VELOCITY(25)", "NOTE_ON(60)", "TIME_SHIFT(1000ms)", "NOTE_OFF(60)", "VELOCITY(10)", "NOTE_ON(60)",
        "TIME_SHIFT(1000ms)", "TIME_SHIFT(1000ms)", "NOTE_OFF(60)",
    ]
    assert all(velocity_bin(bin_velocity(b)) == b for b in range(32))
    # NOTE_OFF of a silent pitch is ignored; a NOTE_ON that re-strikes ends the sounding note first.
    on, shift = 1 + 60 - 21, tok.first_shift + 9  # NOTE_ON(60), TIME_SHIFT(100 ms)
    piece = tok.decode([tok.first_note_off + 5, on, shift, on, shift])
    assert [(n.pitch, round(n.start, 2), round(n.end, 2)) for n in piece.notes] == [(60, 0.0, 0.1), (60, 0.1, 0.2)]


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_saved_and_rebuilt(kind: str) -> None:
    tok = TOKENIZERS[kind]
    again = tokenizer_from_dict(tok.to_dict())
    assert type(again) is type(tok) and again.to_dict() == tok.to_dict()
    assert again.vocab_size == tok.vocab_size
    assert tok.start_ids() == [tok.separator_id()] == [0]
    assert tok.modality == "music"
    assert len({tok.token_name(i) for i in range(tok.vocab_size)}) == tok.vocab_size


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_encode_primer(kind: str, synthesized_midi: Path) -> None:
    tok = TOKENIZERS[kind]
    ids = tok.encode_primer(synthesized_midi)
    assert ids[0] == tok.separator_id()
    piece = tok.decode(ids)
    assert piece.notes[0].start == 0
    pitches = {n.pitch for n in piece.notes}
    if kind == "melody":  # all tracks merged into one line: one note at a time, drums ignored
        assert all(b.start >= a.end for a, b in zip(piece.notes, piece.notes[1:]))
    else:  # lead and bass sound together
        assert min(pitches) < 50 and max(pitches) > 60
