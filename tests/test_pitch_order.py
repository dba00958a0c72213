"""Pitch order: a polyphonic step's pitches low to high, high to low or outer voices first; orders mixed frame by frame."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from generate.api import Model
from generate.cli import run_evaluate
from generate.config import DatasetConfig
from generate.errors import UserError
from generate.scoring import mix_frames, score_documents
from generate.sources.music import settings_key
from generate.tokenizers import tokenizer_from_dict
from generate.tokenizers.polyphonic import PolyphonicTokenizer
from tests.conftest import compose_config
from tests.test_frame_nll import JSB, JSB_MODEL, SEP, STEP, TableModel, brute_allowed


def jsb_pieces(split: str, count: int) -> list[list[set[int]]]:
    with gzip.open(JSB, "rt") as f:
        return [[set(step) for step in piece] for piece in json.load(f)[split][:count]]


def test_outer_writes_the_top_then_the_bass_then_the_inner_voices_upward() -> None:
    up, outer = PolyphonicTokenizer(21, 108, 1), PolyphonicTokenizer(21, 108, 1, pitch_order="outer")
    assert outer.encode_roll([{60, 64, 67, 72}, {55}, {48, 52}, set()]) == [
        2 + 72 - 21, 2 + 60 - 21, 2 + 64 - 21, 2 + 67 - 21, STEP, 2 + 55 - 21, STEP, 2 + 52 - 21, 2 + 48 - 21, STEP,
        STEP]
    assert tokenizer_from_dict(outer.to_dict()).pitch_order == "outer" and up.same_frames(outer)
    for piece in jsb_pieces("test", 20):
        ids = outer.encode_roll(piece)
        assert outer.decode_roll(ids) == piece and sorted(ids) == sorted(up.encode_roll(piece))
        # Every real token lies inside the canonical bounds of the context before it, in one window or in many.
        context = np.array([[SEP, *ids[:-1]]])
        low, high, _ = outer.canonical_bounds(context)
        targets = np.array(ids)
        assert np.all((targets == STEP) | ((targets >= low[0]) & (targets < high[0])))
        carry, pieces = None, []
        for start in range(0, context.shape[1], 7):
            low_part, high_part, carry = outer.canonical_bounds(context[:, start:start + 7], carry)
            pieces.append(np.stack([low_part, high_part]))
        assert np.array_equal(np.concatenate(pieces, axis=2), np.stack([low, high]))


def test_descending_writes_each_step_high_to_low_and_decodes_to_the_same_rolls() -> None:
    up, down = PolyphonicTokenizer(21, 108, 1), PolyphonicTokenizer(21, 108, 1, pitch_order="descending")
    assert down.encode_roll([{60, 64, 67}, set(), {48}]) == [2 + 67 - 21, 2 + 64 - 21, 2 + 60 - 21, STEP, STEP,
                                                             2 + 48 - 21, STEP]
    for piece in jsb_pieces("test", 20):
        ids = down.encode_roll(piece)
        assert down.decode_roll(ids) == up.decode_roll(up.encode_roll(piece)) == piece
        assert sorted(ids) == sorted(up.encode_roll(piece)) and ids != up.encode_roll(piece)
        assert down.count_time_steps(ids) == len(piece)
    # The dict names the order only when it is not the default, so every older model's dict reads as before.
    assert "pitch_order" not in up.to_dict() and down.to_dict()["pitch_order"] == "descending"
    assert tokenizer_from_dict(down.to_dict()).pitch_order == "descending"
    assert tokenizer_from_dict(up.to_dict()).pitch_order == "ascending"
    assert up.same_frames(down) and not up.same_frames(PolyphonicTokenizer(21, 108, 2, pitch_order="descending"))
    with pytest.raises(UserError, match="pitch_order=sideways is not one of ascending, descending"):
        PolyphonicTokenizer(21, 108, 1, pitch_order="sideways")


def test_the_setting_is_checked_and_keys_its_own_token_cache() -> None:
    ascending = DatasetConfig(tokenizer="polyphonic")
    descending = DatasetConfig(tokenizer="polyphonic", pitch_order="descending")
    assert "pitch_order" not in settings_key(ascending)  # the caches of every ascending dataset keep their keys
    assert "pitch_order=descending" in settings_key(descending)
    outer = compose_config("config", ["dataset=jsb", "dataset.pitch_order=outer"]).dataset
    assert outer.pitch_order == "outer" and "pitch_order=outer" in settings_key(DatasetConfig(**outer))
    with pytest.raises(UserError, match="dataset.pitch_order=descending .* needs dataset.tokenizer=polyphonic"):
        DatasetConfig(tokenizer="melody", pitch_order="descending")
    with pytest.raises(Exception, match="sideways"):
        compose_config("config", ["dataset=jsb", "dataset.pitch_order=sideways"])


def brute_frames(tables: list[np.ndarray], doc: list[int], order: str) -> np.ndarray:
    """(frames, 2): each step's exact and canonical NLL of one piece under TableModels mixed token by token."""
    seq, rows, current = [SEP, *doc], [], [0.0, 0.0]
    for i in range(1, len(seq)):
        probs = np.mean([np.exp(t[seq[i - 1]]) / np.exp(t[seq[i - 1]]).sum() for t in tables], axis=0)
        allowed = sorted(brute_allowed(seq[:i], len(probs), order))
        current[0] -= np.log(probs[seq[i]])
        current[1] -= np.log(probs[seq[i]] / probs[allowed].sum())
        if seq[i] == STEP:
            rows.append(current)
            current = [0.0, 0.0]
    return np.array(rows)


def test_mix_frames_matches_numpy_across_orders_windows_and_batches() -> None:
    rolls = [[{60, 63, 66}, set(), {61}, {62, 64}], [set(), {65}], [{60, 61, 62, 63, 64, 65, 66}, {66}, {60}]]
    toks = [PolyphonicTokenizer(60, 66, 1, pitch_order=order) for order in PolyphonicTokenizer.ORDERS]
    rng = np.random.default_rng(3)
    tables = [rng.normal(0, 2, size=(toks[0].vocab_size,) * 2) for _ in range(4)]  # up, up, down, outer
    # Brute force: the two ascending models mixed token by token (as an ensemble of one order is), the probability
    # of each whole step under that, under the descending and under the outer model, their mean frame by frame
    # with weights 2 : 1 : 1.
    groups = [(tables[:2], toks[0]), (tables[2:3], toks[1]), (tables[3:], toks[2])]
    frames = np.stack([np.concatenate([brute_frames(t, tok.encode_roll(r), tok.pitch_order) for r in rolls])
                       for t, tok in groups])  # (orders, frames, 2)
    mixed = -np.log(np.exp(-frames).T @ np.array([2 / 4, 1 / 4, 1 / 4])).T
    firsts = np.cumsum([0] + [len(r) for r in rolls[:-1]])
    for seq_len, batch_size in ((1, 1), (3, 2), (50, 3)):
        up = score_documents(TableModel(tables[0]), toks[0], [toks[0].encode_roll(r) for r in rolls], batch_size,
                             seq_len, ensemble=[TableModel(tables[1])], keep_frames=True)
        down = score_documents(TableModel(tables[2]), toks[1], [toks[1].encode_roll(r) for r in rolls], batch_size,
                               seq_len, keep_frames=True)
        outer = score_documents(TableModel(tables[3]), toks[2], [toks[2].encode_roll(r) for r in rolls], batch_size,
                                seq_len, keep_frames=True)
        assert np.allclose(np.concatenate(up.frame_nll), frames[0], rtol=1e-5)
        assert np.allclose(np.concatenate(down.frame_nll), frames[1], rtol=1e-5)
        assert np.allclose(np.concatenate(outer.frame_nll), frames[2], rtol=1e-5)
        result = mix_frames([up, down, outer])
        assert (result.models, result.pitch_orders, result.time_steps, result.first_frames) == (4, 3, 9, 3)
        assert result.nll == pytest.approx(mixed[:, 0].sum(), rel=1e-5)
        assert result.nll_canonical == pytest.approx(mixed[:, 1].sum(), rel=1e-5)
        assert result.first_frame_nll == pytest.approx(mixed[firsts, 0].sum(), rel=1e-5)
        assert result.first_frame_nll_canonical == pytest.approx(mixed[firsts, 1].sum(), rel=1e-5)
    # A model mixed frame by frame with itself is itself.
    alone = score_documents(TableModel(tables[2]), toks[1], [toks[1].encode_roll(r) for r in rolls], keep_frames=True)
    assert mix_frames([alone, alone]).nll == pytest.approx(alone.nll, rel=1e-6)
    short = score_documents(TableModel(tables[2]), toks[1], [toks[1].encode_roll(r[:-1]) for r in rolls],
                            keep_frames=True)
    with pytest.raises(UserError, match="different numbers of time steps"):
        mix_frames([alone, short])


@pytest.fixture(scope="module")
def jsb_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jsb_cache")


def as_descending(path: Path, **dataset: object) -> Path:
    """The shipped JSB checkpoint relabelled to read descending steps (its weights unchanged; a test model)."""
    checkpoint = torch.load(JSB_MODEL, weights_only=True)
    checkpoint["tokenizer"]["pitch_order"] = "descending"
    checkpoint["config"]["dataset"].update(pitch_order="descending", **dataset)
    checkpoint.pop("weights_sha256", None)
    torch.save(checkpoint, path)
    return path


def test_evaluate_mixes_models_of_both_orders_frame_by_frame(jsb_cache: Path, tmp_path: Path, capsys) -> None:
    down = as_descending(tmp_path / "down.pt")
    base = [f"checkpoint={JSB_MODEL}", "split=test", f"cache_dir={jsb_cache}", "max_tokens=2000"]
    mixed = run_evaluate(compose_config("evaluate", [*base, f"ensemble=[{down}]"]))
    assert f"scored as the equal mixture of 2 models (jsb.pt and {down}), frame by frame across 2 pitch orders" \
        in capsys.readouterr().out
    alone = [Model.from_pretrained(path).evaluate("test", cache_dir=str(jsb_cache), max_tokens=2000,
                                                  **({"ensemble": []} if path == JSB_MODEL else {}))
             for path in (JSB_MODEL, down)]
    assert alone[1].tokens == alone[0].tokens and alone[1].nll != alone[0].nll  # other tokens, the same pieces
    # The mean of two distributions never scores worse than the mean of their scores (per frame, so in sum).
    assert mixed.nll < (alone[0].nll + alone[1].nll) / 2
    assert (mixed.time_steps, mixed.first_frames, mixed.models) == (alone[0].time_steps, alone[0].first_frames, 2)
    assert mixed.canonical_nll_per_time_step_after_first < mixed.nll_per_time_step_after_first
    with pytest.raises(UserError, match=r"ensemble: .*other.pt reads other pieces than .*jsb.pt"):
        Model.from_pretrained(JSB_MODEL).evaluate("test", cache_dir=str(jsb_cache), max_tokens=2000,
                                                  ensemble=[as_descending(tmp_path / "other.pt", max_files=20)])


def test_a_descending_model_samples_and_decodes_pieces(tmp_path: Path) -> None:
    model = Model.from_pretrained(as_descending(tmp_path / "down.pt"))
    assert model.tokenizer.pitch_order == "descending"
    sample = model.sample(length=120, seed=5)[0]
    assert sample.piece.notes and all(21 <= note.pitch <= 108 for note in sample.piece.notes)


def test_the_shipped_jsb_models_of_three_orders_mix_below_each_alone(jsb_cache: Path, capsys) -> None:
    """The real models of each order (dataset.pitch_order ascending, descending, outer) on a sample of JSB's test."""
    names = ("jsb", "jsb_descending", "jsb_outer")
    models = [Model.from_pretrained(name) for name in names]
    assert [m.tokenizer.pitch_order for m in models] == ["ascending", "descending", "outer"]
    alone = [m.evaluate("test", cache_dir=str(jsb_cache), max_tokens=3000) for m in models]
    assert len({(r.tokens, r.time_steps) for r in alone}) == 1  # the same steps, each order's own tokens
    base = ["checkpoint=jsb", "split=test", f"cache_dir={jsb_cache}", "max_tokens=3000"]
    mixed = run_evaluate(compose_config("evaluate", [*base, "ensemble=[jsb_descending,jsb_outer]"]))
    assert "frame by frame across 3 pitch orders" in capsys.readouterr().out
    assert (mixed.models, mixed.pitch_orders, mixed.time_steps) == (3, 3, alone[0].time_steps)
    assert mixed.nll < min(r.nll for r in alone)  # here the orders' errors differ enough to beat the best alone
    assert mixed.canonical_nll_per_time_step_after_first < mixed.nll_per_time_step_after_first
