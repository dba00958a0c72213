"""The public Python API used as a notebook would: load a shipped model, sample, score, tokenize, train."""

from __future__ import annotations

import math
import subprocess
import sys
import wave
from pathlib import Path

import pretty_midi
import pytest
from music21 import converter

import generate
from generate.config import PROJECT_ROOT


def test_import_is_light_and_exposes_the_api() -> None:
    code = "import sys, generate; assert 'torch' not in sys.modules, 'import generate pulled in torch'; print(generate.__all__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in ("load", "train", "tokenize", "Model"):
        assert name in done.stdout


def test_shipped_text_model_samples_and_scores() -> None:
    model = generate.load("shakespeare")
    assert model.card()["dataset"] == "shakespeare" and model.card()["parameters"] > 1e6
    first = model.sample("ROMEO:", temperature=0.8, length=60, seed=4)
    again = model.sample("ROMEO:", temperature=0.8, length=60, seed=4)
    assert first == again and first[0].startswith("ROMEO:") and len(first[0]) == len("ROMEO:") + 60
    # A phrase in the model's own style costs far fewer nats than uniform guessing over its characters.
    good = model.score("ROMEO:\nWhat say you, my lord?\n")
    noise = model.score("xq zvk jjq wpx qqz kkx vvz")
    assert good.nats_per_token < 0.6 * math.log(model.tokenizer.vocab_size) < noise.nats_per_token


def test_text_streams_as_it_is_generated() -> None:
    model = generate.load("shakespeare")
    pieces = list(model.stream("ROMEO:", temperature=0.8, length=40, seed=4, block=8))
    assert pieces[0] == "ROMEO:" and len(pieces) == 1 + 5
    assert "".join(pieces) == model.sample("ROMEO:", temperature=0.8, length=40, seed=4)[0]


def test_shipped_music_model_samples_pieces_that_write_themselves(tmp_path: Path) -> None:
    model = generate.load("bach")
    (piece,) = model.sample(length=64, seed=3)
    assert model.is_music and piece.piece.notes
    written = piece.write(tmp_path / "tune")
    assert [p.suffix for p in written] == [".mid", ".musicxml", ".wav", ".png"]
    midi = pretty_midi.PrettyMIDI(str(tmp_path / "tune.mid"))
    assert len(midi.instruments[0].notes) == len(piece.piece.notes)
    assert piece.to_midi().instruments[0].notes[0].pitch == midi.instruments[0].notes[0].pitch
    score = converter.parse(str(piece.to_musicxml(tmp_path / "alone.musicxml")))
    assert [n.pitch.midi for n in score.flatten().notes][:3] == [n.pitch for n in midi.instruments[0].notes][:3]
    with wave.open(str(piece.to_wav(tmp_path / "alone.wav"))) as handle:
        assert handle.getnframes() / handle.getframerate() >= piece.piece.in_seconds(120.0).duration


def test_nanogpt_style_generate_on_the_bare_model() -> None:
    model = generate.load("shakespeare")
    prompt = model.tokenizer.encode("KING:")
    ids = model.net.generate(prompt, 20, temperature=0)  # greedy: the same every time
    assert ids.shape == (1, 20) and ids.tolist() == model.net.generate(prompt, 20, temperature=0).tolist()


def test_train_tokenize_and_load_a_tiny_model(small_text: Path, tmp_path: Path) -> None:
    corpus = generate.tokenize("text", path=str(small_text), cache_dir=str(tmp_path / "cache"))
    assert corpus.tokenizer.kind == "char" and len(corpus.splits["train"][0])
    run = generate.train(
        "text", path=str(small_text), cache_dir=str(tmp_path / "cache"), recipe="smoke", hidden_size=32,
        embedding_size=16, max_steps=20, checkpoints_dir=str(tmp_path / "runs"), run_name="tiny",
    )
    assert run.best_path == tmp_path / "runs" / "tiny" / "best.pt" and run.step == 20
    model = generate.load(run.best_path)
    assert model.card()["steps"] == 20 and model.evaluate("val").tokens > 0
    assert isinstance(model.sample("ANNA", length=10, seed=1)[0], str)


def test_a_model_trained_without_a_test_split_says_so_when_asked_for_one(small_text: Path, tmp_path: Path) -> None:
    # dataset.test_fraction=0 is nanoGPT's split exactly: training is everything before validation.
    run = generate.train(
        "text", path=str(small_text), cache_dir=str(tmp_path / "cache"), recipe="smoke", hidden_size=16,
        embedding_size=8, max_steps=2, checkpoints_dir=str(tmp_path / "runs"), run_name="no_test", test_fraction=0.0,
    )
    model = generate.load(run.best_path)
    corpus = model.dataset(cache_dir=str(tmp_path / "cache"))
    n = sum(len(corpus.splits[s][0]) for s in ("train", "val"))
    assert len(corpus.splits["train"][0]) == int(n * 0.9) and len(corpus.splits["test"][0]) == 0
    with pytest.raises(generate.UserError, match=r"test split .* is empty \(it was trained with dataset.test_fraction=0\); "
                       r"score another split, e.g. split=val"):
        model.evaluate("test", cache_dir=str(tmp_path / "cache"))
    assert model.evaluate("val", cache_dir=str(tmp_path / "cache")).tokens > 0


def test_bad_keywords_are_user_errors(small_text: Path) -> None:
    with pytest.raises(generate.UserError, match="hidden_sise"):
        generate.train("text", path=str(small_text), hidden_sise=3)
    with pytest.raises(generate.UserError, match="no dataset preset 'nope'"):
        generate.tokenize("nope")
    with pytest.raises(generate.UserError, match="temperature"):
        generate.load("shakespeare").sample(temperature=-1)


@pytest.mark.slow
def test_quickstart_example_runs() -> None:
    done = subprocess.run([sys.executable, "examples/quickstart.py"], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ROMEO:" in done.stdout and "chorale_1.mid" in done.stdout and "best.pt" in done.stdout
