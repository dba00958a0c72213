"""Music outputs: each file opened by its own reader (pretty_midi, music21, wave, matplotlib), plus beam search."""

from __future__ import annotations

import wave
from pathlib import Path

import matplotlib.image
import numpy as np
import pretty_midi
import pytest
import torch
from music21 import converter

from generate.decoding import beam_search
from generate.model import GRULanguageModel, ModelSpec
from generate.music.notes import Key, Meter, Note, Piece
from generate.music.render import MIDI_RESOLUTION, SAMPLE_RATE, sensible_register, write_music
from generate.tokenizers.events import EventTokenizer
from generate.tokenizers.melody import MelodyTokenizer
from generate.tokenizers.polyphonic import PolyphonicTokenizer

QPM = 90.0


def read_all(paths: list[Path]) -> tuple[pretty_midi.PrettyMIDI, object, wave.Wave_read, object]:
    mid, xml, wav, png = paths
    assert [p.suffix for p in paths] == [".mid", ".musicxml", ".wav", ".png"]
    handle = wave.open(str(wav), "rb")
    return pretty_midi.PrettyMIDI(str(mid)), converter.parse(str(xml)), handle, matplotlib.image.imread(str(png))


def test_melody_sample_files(tmp_path: Path) -> None:
    tok = MelodyTokenizer(48, 84, 4)
    piece = tok.decode([0, tok.note_on(60), 2, 2, 2, tok.note_on(64), 2, 1, 2, tok.note_on(67), 2, 2, 2])  # 13 steps
    pm, score, wav, png = read_all(write_music(piece, tmp_path / "sample_0", QPM, **tok.render_hints()))
    notes = pm.instruments[0].notes
    assert [n.pitch for n in notes] == [60, 64, 67]
    beat = 60 / QPM
    assert notes[1].start == pytest.approx(1 * beat, abs=1e-3) and notes[1].end == pytest.approx(1.5 * beat, abs=1e-3)
    assert pm.resolution == MIDI_RESOLUTION and pm.get_tempo_changes()[1][0] == pytest.approx(QPM, abs=0.01)
    assert [p.midi for n in score.flatten().notes for p in n.pitches] == [60, 64, 67]
    assert score.flatten().notes[1].quarterLength == 0.5
    assert wav.getframerate() == SAMPLE_RATE and wav.getnframes() >= int(13 / 4 * beat * SAMPLE_RATE)
    assert png.ndim == 3 and png.shape[0] > 100


def test_polyphonic_sample_spans_two_staves(tmp_path: Path) -> None:
    tok = PolyphonicTokenizer(21, 108, 1)
    piece = tok.decode(tok.encode_roll([[48, 64, 67, 72], [48, 64, 67, 72], [43, 62, 67, 71], []]))
    pm, score, wav, _ = read_all(write_music(piece, tmp_path / "chorale", QPM, **tok.render_hints()))
    assert sorted(n.pitch for n in pm.instruments[0].notes) == [43, 48, 62, 64, 67, 71, 72]  # held 67 is one note
    assert len(score.parts) == 2
    assert sorted(p.midi for n in score.flatten().notes for p in n.pitches) == [43, 48, 62, 64, 67, 67, 71, 72]
    assert wav.getnframes() >= int(4 * 60 / QPM * SAMPLE_RATE)  # the trailing silent step is kept


def test_event_sample_keeps_velocity_and_timing(tmp_path: Path) -> None:
    tok = EventTokenizer(21, 108)
    piece = Piece([Note(60, 0.0, 0.37, 30), Note(67, 0.25, 1.0, 110)], unit="second")
    pm, score, _, _ = read_all(write_music(tok.decode(tok.encode(piece)), tmp_path / "perf", QPM, **tok.render_hints()))
    notes = sorted(pm.instruments[0].notes, key=lambda n: n.start)
    assert [(n.pitch, round(n.start, 2), round(n.end, 2)) for n in notes] == [(60, 0.0, 0.37), (67, 0.25, 1.0)]
    assert notes[0].velocity < 40 < 100 < notes[1].velocity
    assert score.flatten().notes  # notated to the nearest 16th


def test_empty_sample_still_writes_valid_files(tmp_path: Path) -> None:
    tok = MelodyTokenizer(48, 84, 4)
    pm, score, wav, _ = read_all(write_music(tok.decode([0, 2, 2, 2, 2]), tmp_path / "silence", QPM, **tok.render_hints()))
    assert not any(i.notes for i in pm.instruments) and not score.flatten().notes
    assert wav.getnframes() > 0


def test_melody_written_in_a_sensible_register() -> None:
    tok = MelodyTokenizer(0, 127, 4)
    low = Piece([Note(30, 0, 1), Note(34, 1, 2)])
    assert tok.render_hints()["melody"] and [n.pitch for n in sensible_register(low).notes] == [54, 58]
    middle = Piece([Note(60, 0, 1)])
    assert sensible_register(middle) is middle
    poly = PolyphonicTokenizer()
    assert not poly.render_hints()["melody"]  # a bass part stays where it is: only melodies are moved


@pytest.fixture(scope="module")
def tiny_model() -> GRULanguageModel:
    torch.manual_seed(0)
    return GRULanguageModel(ModelSpec(vocab_size=12, embedding_size=8, hidden_size=16, num_layers=2, dropout=0.0)).eval()


@torch.no_grad()
def sequence_log_prob(model: GRULanguageModel, prime: list[int], row: list[int]) -> float:
    tokens = torch.tensor([prime + row])
    logits, _ = model(tokens[:, :-1])
    log_probs = logits.log_softmax(-1)[0, len(prime) - 1 :]
    return float(log_probs.gather(-1, torch.tensor(row).unsqueeze(-1)).sum())


def test_beam_search_finds_likelier_sequences_than_greedy(tiny_model: GRULanguageModel) -> None:
    greedy = tiny_model.generate([0], 6, temperature=0)[0].tolist()
    beam = beam_search(tiny_model, [0], 6, 8, temperature=0)
    assert beam.shape == (1, 6)
    assert sequence_log_prob(tiny_model, [0], beam[0].tolist()) >= sequence_log_prob(tiny_model, [0], greedy) - 1e-5
    assert beam_search(tiny_model, [0], 6, 1, temperature=0)[0].tolist() == greedy  # width 1 is greedy


def test_wide_beam_is_exhaustive_search(tiny_model: GRULanguageModel) -> None:
    import itertools

    # A beam as wide as vocab**(length-1) keeps every prefix, so it must find the most likely sequence.
    found = beam_search(tiny_model, [0], 3, 144, temperature=0)[0].tolist()
    best = max(itertools.product(range(12), repeat=3), key=lambda row: sequence_log_prob(tiny_model, [0], list(row)))
    assert found == list(best)


def test_stochastic_beam_search_follows_the_seed(tiny_model: GRULanguageModel) -> None:
    settings = {"num_samples": 3, "temperature": 1.0, "top_p": 0.9, "seed": 5}
    first = beam_search(tiny_model, [0, 3], 10, 3, **settings)
    assert torch.equal(first, beam_search(tiny_model, [0, 3], 10, 3, **settings))
    assert first.shape == (3, 10) and int(first.max()) < 12
    zeros = torch.zeros(2, 1, 16)
    assert torch.equal(first, beam_search(tiny_model, [0, 3], 10, 3, **settings, hidden=zeros))
    other = beam_search(tiny_model, [0, 3], 10, 3, **settings, hidden=torch.ones(2, 1, 16))
    assert not torch.equal(first, other)  # the starting state is used


# ---------------------------------------------------------------- metre, key and tempo in every output


def jig_with_pickup() -> Piece:
    """6/8 in G major with a one-eighth pickup (the first downbeat at 0.5 quarters), at 100 qpm."""
    line = [Note(62, 0.0, 0.5)] + [Note((67, 71, 74, 72, 71, 69)[i % 6], 0.5 + i / 2, 1.0 + i / 2) for i in range(12)]
    return Piece(line, 6.5, meters=[Meter(6, 8, 0.5)], key=Key(7, "major"), qpm=100.0)


def waltz_in_f_minor() -> Piece:
    """3/4 in F minor, no pickup, two bars; a repeated C in the bass."""
    notes = [Note(65, 0, 1), Note(68, 1, 2), Note(72, 2, 3), Note(67, 3, 6), Note(48, 0, 3), Note(48, 3, 6)]
    return Piece(notes, 6.0, meters=[Meter(3, 4, 0.0)], key=Key(5, "minor"))


def changing_metre() -> Piece:
    """A bar of 4/4, two of 3/4, one of 6/8 (a meter change at 4 and at 10 quarters), in D major."""
    notes = [Note(62 + i % 5, i * 0.5, i * 0.5 + 0.5) for i in range(26)]
    return Piece(notes, 13.0, meters=[Meter(4, 4, 0.0), Meter(3, 4, 4.0), Meter(6, 8, 10.0)], key=Key(2, "major"))


@pytest.mark.parametrize(
    ("make", "qpm", "bars", "pickup", "sharps", "mode"),
    [
        (jig_with_pickup, 100.0, [("6/8", 0.5), ("6/8", 3.0), ("6/8", 3.0)], 0.5, 1, "major"),
        (waltz_in_f_minor, QPM, [("3/4", 3.0), ("3/4", 3.0)], 0.0, -4, "minor"),
        (changing_metre, QPM, [("4/4", 4.0), ("3/4", 3.0), ("3/4", 3.0), ("6/8", 3.0)], 0.0, 2, "major"),
    ],
)
def test_metre_key_and_tempo_reach_the_mid_and_the_musicxml(tmp_path: Path, make, qpm, bars, pickup, sharps, mode) -> None:
    import symusic

    piece = make()
    paths = write_music(piece, tmp_path / "tune", QPM, melody=True)  # the piece's own tempo wins over QPM
    beat = 60 / qpm
    lead = (3.0 - pickup) * beat if pickup else 0.0  # MIDI has no pickup bar: a rest fills the first bar
    # .mid, read by pretty_midi: one time signature where each meter starts, the key, the tempo.
    pm = pretty_midi.PrettyMIDI(str(paths[0]))
    expected_ts = [(m.numerator, m.denominator, round(m.start * beat + lead, 3) if i else 0.0) for i, m in enumerate(piece.meters)]
    assert [(t.numerator, t.denominator, round(t.time, 3)) for t in pm.time_signature_changes] == expected_ts
    assert [k.key_number for k in pm.key_signature_changes] == [piece.key.tonic + 12 * (mode == "minor")]
    assert pm.get_tempo_changes()[1][0] == pytest.approx(qpm, abs=0.01)
    # Every bar line of the piece is a downbeat of the file (pretty_midi counts bars from the time signatures).
    starts = [0.0] + [b * beat + lead for b in np.cumsum([length for _, length in bars])[:-1]]
    assert np.allclose(pm.get_downbeats()[: len(bars)], starts[: len(bars)], atol=1e-3)
    assert pm.instruments[0].notes[0].start == pytest.approx(lead, abs=1e-3)
    # .mid, read by symusic: the same meta events.
    score = symusic.Score(str(paths[0]))
    assert [(t.numerator, t.denominator) for t in score.time_signatures] == [ts[:2] for ts in expected_ts]
    assert [(k.key, k.tonality) for k in score.key_signatures] == [(sharps, int(mode == "minor"))]
    # .musicxml, read by music21: time signature per bar, the key, and the pickup as a short first measure.
    part = converter.parse(str(paths[1])).parts[0]
    measures = list(part.getElementsByClass("Measure"))
    signatures, current = [], None
    for m in measures:
        current = m.timeSignature or current
        signatures.append((current.ratioString, float(m.duration.quarterLength)))
    assert signatures[: len(bars)] == bars
    assert measures[0].duration.quarterLength == (pickup or bars[0][1])
    assert (measures[0].number == 0) == bool(pickup)
    key = part.recurse().getElementsByClass("KeySignature").first()
    assert key.sharps == sharps and key.mode == mode
    assert part.recurse().getElementsByClass("MetronomeMark").first().number == pytest.approx(qpm)
    # The notes sit where they were: the first downbeat note on beat 1 of the first full bar.
    first_full = measures[1] if pickup else measures[0]
    assert first_full.notes.first().offset == 0.0


def test_without_meters_the_outputs_stay_in_four_four(tmp_path: Path) -> None:
    piece = Piece([Note(60, 0, 1), Note(62, 1, 6)])
    pm, score, _, _ = read_all(write_music(piece, tmp_path / "plain", QPM))
    assert [(t.numerator, t.denominator, t.time) for t in pm.time_signature_changes] == [(4, 4, 0.0)]
    assert not pm.key_signature_changes
    measures = list(score.parts[0].getElementsByClass("Measure"))
    assert measures[0].timeSignature.ratioString == "4/4" and measures[0].number == 1
    assert [m.duration.quarterLength for m in measures] == [4.0, 4.0]


def test_piano_roll_separates_repeated_notes_and_draws_bars(tmp_path: Path) -> None:
    from generate.music.render import bar_and_beat_seconds, roll_image, to_pretty_midi

    repeated = Piece([Note(60, 0, 1), Note(60, 1, 2), Note(60, 2, 2.25), Note(60, 2.25, 2.5)])
    grid, _, low = roll_image(to_pretty_midi(repeated, 60.0), 1000)  # 100 columns a second
    row = grid[60 - low] > 0
    onsets = np.flatnonzero(row[1:] & ~row[:-1]) + 1
    assert row[0] and len(onsets) == 3  # four notes, four separate dark runs
    bars, beats = bar_and_beat_seconds(jig_with_pickup(), 100.0)
    # 6/8: a bar every 1.8 s, a beat (dotted quarter) every 0.9 s; the pickup bar's notional start at 0.
    assert np.allclose(bars, [0.0, 1.8, 3.6]) and np.allclose(beats[:4], [0.0, 0.9, 1.8, 2.7])
    plain_bars, plain_beats = bar_and_beat_seconds(Piece([Note(60, 0, 7)]), 120.0)
    assert np.allclose(plain_bars, [0, 2]) and np.allclose(plain_beats[:5], [0, 0.5, 1, 1.5, 2])
    # The drawn roll has the bar lines' colour in it (#3182bd), and without lines it has none.
    png = matplotlib.image.imread(str(write_music(jig_with_pickup(), tmp_path / "jig", QPM)[3]))
    bar_colour = np.array([0x31, 0x82, 0xBD]) / 255
    assert (np.abs(png[..., :3] - bar_colour).max(axis=-1) < 0.02).sum() > 100
