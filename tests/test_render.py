"""Music outputs: each file opened by its own reader (pretty_midi, music21, wave, matplotlib), plus beam search."""

from __future__ import annotations

import wave
from pathlib import Path

import matplotlib.image
import pretty_midi
import pytest
import torch
from music21 import converter

from generate.decoding import beam_search
from generate.model import GRULanguageModel, ModelSpec
from generate.music.notes import Note, Piece
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
