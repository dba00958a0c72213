"""Piano done right: the events tokenizer's full-piano range, per-tokenizer ranges, and the note-length cap."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generate.config import DatasetConfig, TrainRunConfig, to_object
from generate.music.notes import SECOND, Note, Piece
from generate.sources.store import TokenSplit
from generate.tokenizers import tokenizer_from_dict
from generate.tokenizers.events import DEFAULT_MAX_DURATION, EventTokenizer, note_ticks
from tests.conftest import compose_config

# ---------------------------------------------------------------- the decoding rule that closes notes


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(-5, 400), max_size=300),
    st.sampled_from([None, 0.01, 0.3, 1.0, 2.47, 5.0]),
    st.sampled_from([(21, 108), (48, 84), (60, 60)]),
)
def test_decoding_random_ids_never_raises_and_never_drones(ids, cap, span) -> None:
    tok = EventTokenizer(*span, max_duration=cap)
    piece = tok.decode(ids)
    longest = DEFAULT_MAX_DURATION if cap is None else cap
    assert all(0 < n.end - n.start <= longest + 1e-9 for n in piece.notes)
    assert all(tok.in_range(n.pitch) for n in piece.notes)
    assert all(n.end <= piece.duration + 1e-9 for n in piece.notes)
    # Never two sounding notes of one pitch: a re-strike or the cap closes the first.
    for pitch in {n.pitch for n in piece.notes}:
        same = sorted((n.start, n.end) for n in piece.notes if n.pitch == pitch)
        assert all(b[0] >= a[1] - 1e-9 for a, b in zip(same, same[1:]))


def test_the_cap_and_the_next_onset_close_forgotten_notes() -> None:
    tok = EventTokenizer(21, 108, max_duration=2.0)
    on = lambda p: 1 + p - 21  # noqa: E731
    second = tok.first_shift + 99  # TIME_SHIFT(1 s)
    # 60 is struck and never released: it ends after 2 s, though 10 s pass; 64 is re-struck after 1 s.
    ids = [on(60), on(64), second, on(64)] + [second] * 9 + [tok.first_note_off + 64 - 21]
    notes = sorted((n.pitch, n.start, n.end) for n in tok.decode(ids).notes)
    assert notes == [(60, 0.0, 2.0), (64, 0.0, 1.0), (64, 1.0, 3.0)]
    assert tok.decode(ids).duration == 10.0
    # Without a learned figure the cap is 5 s; notes still sounding at the end stop at the cap too.
    plain = EventTokenizer(21, 108)
    assert [(n.start, n.end) for n in plain.decode([on(60)] + [second] * 8).notes] == [(0.0, 5.0)]


def test_notes_within_the_cap_decode_as_encoded() -> None:
    tok = EventTokenizer(21, 108, max_duration=3.0)
    piece = Piece([Note(60, 0, 3.0, 80), Note(62, 0.5, 1.0, 80), Note(60, 3.0, 3.5, 80)], 4.0, SECOND)
    assert [(n.pitch, n.start, n.end) for n in tok.decode(tok.encode(piece)).notes] == [
        (60, 0.0, 3.0), (62, 0.5, 1.0), (60, 3.0, 3.5)]


# ---------------------------------------------------------------- learning the cap, saving it, old checkpoints


def test_the_cap_is_the_training_notes_99_9th_percentile() -> None:
    tok = EventTokenizer()
    rng = random.Random(0)
    pieces, lengths = [], []
    for _ in range(20):
        notes = []
        for _ in range(100):
            start, length = round(rng.uniform(0, 30), 2), round(rng.choice([0.1, 0.25, 0.5, 1.0, rng.uniform(0, 12)]), 2)
            notes.append(Note(rng.randrange(21, 109), start, start + max(length, 0.01), 64))
        pieces.append(Piece(notes, 0, SECOND))
    docs = [tok.encode(p) for p in pieces]
    # What the notes last once encoded (a note is cut where its pitch is struck again): decode with no cap.
    uncapped = EventTokenizer(max_duration=1000.0)
    for ids in docs:
        lengths += [round((n.end - n.start) * 100) for n in uncapped.decode(ids).notes]
    assert sorted(note_ticks(np.concatenate(docs), tok).tolist()) == sorted(lengths)
    tok.learn(TokenSplit.from_docs(docs))
    assert tok.max_duration == pytest.approx(np.ceil(np.percentile(lengths, 99.9)) / 100)
    assert 5.0 < tok.max_duration <= 12.0
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, EventTokenizer) and again.max_duration == tok.max_duration


def test_a_checkpoint_from_before_the_cap_still_loads() -> None:
    old = {"kind": "events", "min_pitch": 48, "max_pitch": 84, "ticks_per_second": 100, "max_shift": 100,
           "velocity_bins": 32}
    tok = tokenizer_from_dict(old)
    assert isinstance(tok, EventTokenizer)
    assert (tok.min_pitch, tok.max_pitch, tok.vocab_size) == (48, 84, 1 + 2 * 37 + 100 + 32)
    assert tok.max_duration is None and tok.max_ticks == 500
    assert tok.to_dict() == old  # the same dict: resuming or comparing with the old checkpoint still agrees


def test_an_old_checkpoint_matches_its_rebuilt_dataset_and_resumes(tmp_path: Path) -> None:
    """A corpus rebuilt today learns the cap; an events run saved before the cap still evaluates and resumes."""
    from generate.errors import UserError
    from generate.validate import check_training_state

    old = {"kind": "events", "min_pitch": 21, "max_pitch": 108, "ticks_per_second": 100, "max_shift": 100,
           "velocity_bins": 32}
    rebuilt = tokenizer_from_dict({**old, "max_duration": 7.95})
    assert rebuilt.to_dict() != old and rebuilt.definition() == tokenizer_from_dict(old).definition()
    import torch

    ckpt = {"tokenizer": old, "model_spec": {"n": 1}, "step": 3, "best_val": 1.0, "scheduler": {},
            "optimizer": {"state": {}, "param_groups": []}, "config": {"train": {"batch_size": 2, "seq_len": 8}},
            "rng": [{"torch": torch.get_rng_state()}], "data_state": [{}], "hidden": [None]}
    check_training_state(ckpt, tmp_path / "last.pt", {"n": 1}, rebuilt.to_dict(), rebuilt.learned)  # resumes
    other = tokenizer_from_dict({**old, "min_pitch": 48, "max_duration": 7.95})
    with pytest.raises(UserError, match="different dataset"):
        check_training_state(ckpt, tmp_path / "last.pt", {"n": 1}, other.to_dict(), other.learned)


# ---------------------------------------------------------------- per-tokenizer pitch ranges


@pytest.mark.parametrize(("tokenizer", "expected"), [("melody", (48, 84)), ("polyphonic", (21, 108)), ("events", (21, 108))])
def test_each_tokenizer_has_its_own_default_range(tokenizer: str, expected: tuple[int, int]) -> None:
    for preset in ("midi", "scores"):
        cfg = compose_config("config", [f"dataset={preset}", f"dataset.tokenizer={tokenizer}"])
        assert (cfg.dataset.min_pitch, cfg.dataset.max_pitch) == expected
        run = to_object(cfg, TrainRunConfig)
        assert (run.dataset.min_pitch, run.dataset.max_pitch) == expected
    direct = DatasetConfig(tokenizer=tokenizer)
    assert (direct.min_pitch, direct.max_pitch) == expected
    # A range given explicitly wins, and so does the one a preset names (bach: 36..84).
    cfg = compose_config("config", ["dataset=midi", f"dataset.tokenizer={tokenizer}", "dataset.min_pitch=40"])
    assert (cfg.dataset.min_pitch, cfg.dataset.max_pitch) == (40, expected[1])
    bach = compose_config("config", ["dataset=bach", f"dataset.tokenizer={tokenizer}"])
    assert (bach.dataset.min_pitch, bach.dataset.max_pitch) == (36, 84)


def test_the_python_api_follows_the_tokenizer_too(tmp_path: Path) -> None:
    from generate.api import preset_values
    from generate.config import with_settings

    settings = with_settings(DatasetConfig(), "dataset", {**preset_values("dataset", "midi"), "tokenizer": "events"})
    assert (settings.min_pitch, settings.max_pitch) == (21, 108)
    assert DatasetConfig().min_pitch is None  # text: no pitches at all


def piano_file(path: Path, seed: int) -> None:
    """A left hand in the bass (down to A0) under a right-hand line, with a long held chord at the end."""
    rng = random.Random(seed)
    pm = pretty_midi.PrettyMIDI(initial_tempo=90)
    piano = pretty_midi.Instrument(0, name="piano")
    t = 0.0
    for _ in range(64):
        piano.notes.append(pretty_midi.Note(70, rng.randrange(21, 48), t, t + 0.6))
        piano.notes.append(pretty_midi.Note(80, rng.randrange(60, 96), t, t + 0.3))
        piano.notes.append(pretty_midi.Note(80, rng.randrange(60, 96), t + 0.3, t + 0.6))
        t += 0.6
    piano.notes += [pretty_midi.Note(60, p, t, t + 4.0) for p in (21, 33, 108)]
    pm.instruments.append(piano)
    pm.write(str(path))


def test_a_piano_folder_loses_no_notes_to_the_range_by_default(tmp_path: Path) -> None:
    from generate.data import load_corpus

    folder = tmp_path / "piano"
    folder.mkdir()
    for seed in range(4):
        piano_file(folder / f"piece_{seed}.mid", seed)
    overrides = ["dataset=midi", f"dataset.path={folder}", f"dataset.cache_dir={tmp_path / 'cache'}",
                 "dataset.num_workers=1", "dataset.tokenizer=events", "dataset.transpose=none"]
    corpus = load_corpus(to_object(compose_config("config", overrides), TrainRunConfig).dataset, verbose=False)
    counts = corpus.stats["counts"]
    assert not any(k.startswith("notes outside") for k in counts)
    assert counts["pieces kept"] == 4
    tok = corpus.tokenizer
    assert (tok.min_pitch, tok.max_pitch) == (21, 108)
    assert tok.to_dict()["max_duration"] == pytest.approx(4.0, abs=0.011)  # 3 of 196 notes per file last 4 s: above 99.9%
    # The old range, asked for explicitly, drops the bass and says so.
    narrow = load_corpus(to_object(compose_config("config", [*overrides, "dataset.min_pitch=48", "dataset.max_pitch=84"]),
                                   TrainRunConfig).dataset, verbose=False)
    outside = sum(1 for f in folder.iterdir() for n in pretty_midi.PrettyMIDI(str(f)).instruments[0].notes
                  if not 48 <= n.pitch <= 84)
    assert outside > 4 * 64  # every bass note, the held chord's A0, A1 and C8, the right hand above C6
    assert narrow.stats["counts"]["notes outside the pitch range dropped"] == outside


@pytest.mark.slow
def test_a_sampled_performance_never_outlasts_the_training_notes(tmp_path: Path) -> None:
    """Done-when of issue 11: a piano-performance model sampled for 60 s has no note longer than the training
    data's 99.9th-percentile duration (a tiny, briefly trained model: the worst case for stuck notes)."""
    import generate
    from generate.cli import run_train
    from tests.conftest import train_overrides

    folder = tmp_path / "piano"
    folder.mkdir()
    for seed in range(8):
        piano_file(folder / f"piece_{seed}.mid", seed)
    run_train(compose_config("config", train_overrides(
        tmp_path, "dataset=midi", f"dataset.path={folder}", "dataset.tokenizer=events", "dataset.num_workers=1")))
    model = generate.load(tmp_path / "checkpoints" / "midi" / "best.pt")
    tok = model.tokenizer
    assert (tok.min_pitch, tok.max_pitch) == (21, 108)
    # The cap is the training notes' own 99.9th percentile, computed here again from the training split.
    train_split = model.dataset(cache_dir=str(tmp_path / "cache")).splits["train"]
    training = note_ticks(np.asarray(train_split.tokens), tok) / 100
    assert tok.max_duration == pytest.approx(np.ceil(np.percentile(training * 100, 99.9)) / 100)
    pieces = [s.piece for s in model.sample(length=6000, num_samples=2, seed=3, temperature=1.0)]
    for piece in pieces:
        assert piece.duration >= 60.0  # a minute of music at least
        minute = [n for n in piece.notes if n.start < 60.0]
        assert minute and max(n.end - n.start for n in minute) <= tok.max_duration + 1e-9
