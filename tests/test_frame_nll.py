"""Polyphonic evaluation: canonical-order (renormalized) NLL and the first-frame-excluded convention."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from generate.api import Model
from generate.cli import run_evaluate
from generate.config import PROJECT_ROOT
from generate.data import split_for_eval
from generate.errors import UserError
from generate.scoring import canonical_allowed, evaluate_loss, score_documents
from generate.tokenizers.char import CharTokenizer
from generate.tokenizers.polyphonic import PolyphonicTokenizer
from tests.conftest import compose_config

JSB = PROJECT_ROOT / "datasets" / "music" / "jsb_chorales.json.gz"
JSB_MODEL = PROJECT_ROOT / "checkpoints" / "pretrained" / "jsb.pt"
SEP, STEP = PolyphonicTokenizer.SEP, PolyphonicTokenizer.STEP


class TableModel(torch.nn.Module):
    """A fake model whose logits are a fixed row per previous token: hand-computable scores."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, inputs: torch.Tensor, hidden: object = None) -> tuple[torch.Tensor, object]:
        return self.table[inputs], hidden


def brute_allowed(context: list[int], vocab_size: int, order: str = "ascending") -> set[int]:
    """The rule written out token by token: after STEP/SEP any pitch; within a step, ascending: above the last
    pitch; descending: below it; outer: below the first (the top), then above the last and below the top."""
    first = PolyphonicTokenizer.FIRST_PITCH
    step: list[int] = []
    for token in context:
        step = [*step, token] if token >= first else []
    if not step:
        return {STEP} | set(range(first, vocab_size))
    if order == "ascending":
        return {STEP} | set(range(step[-1] + 1, vocab_size))
    if order == "descending":
        return {STEP} | set(range(first, step[-1]))
    return {STEP} | set(range(first, step[0]) if len(step) == 1 else range(step[-1] + 1, step[0]))


def brute_force(table: np.ndarray, doc: list[int], order: str = "ascending") -> dict[str, float]:
    """Exact and canonical NLL of one piece (scored after a SEP), all of it and its first step, in a Python loop."""
    seq = [SEP, *doc]
    out = dict.fromkeys(("exact", "canonical", "first_exact", "first_canonical", "first_tokens"), 0.0)
    in_first = True
    for i in range(1, len(seq)):
        logits = table[seq[i - 1]].astype(np.float64)
        allowed = sorted(brute_allowed(seq[:i], len(logits), order))
        exact = -(logits[seq[i]] - np.log(np.exp(logits).sum()))
        canonical = -(logits[seq[i]] - np.log(np.exp(logits[allowed]).sum()))
        out["exact"] += exact
        out["canonical"] += canonical
        if in_first:
            out["first_exact"] += exact
            out["first_canonical"] += canonical
            out["first_tokens"] += 1
        in_first = in_first and seq[i] != STEP
    return out


def test_hand_computed_uniform_case() -> None:
    # Pitches 60..62 are ids 2, 3, 4; all-zero logits: exact pays log 5 a token, canonical log(#allowed).
    tok = PolyphonicTokenizer(60, 62, 1)
    model = TableModel(np.zeros((5, 5)))
    doc = [2, 4, STEP, 3, STEP]  # {60, 62} then {61}
    result = score_documents(model, tok, [doc], batch_size=1, seq_len=2)
    assert result.nll == pytest.approx(5 * math.log(5))
    # allowed after SEP: STEP + 3 pitches; after 60: STEP, 61, 62; after 62: STEP; after STEP: 4; after 61: STEP, 62
    assert result.nll_canonical == pytest.approx(math.log(4 * 3 * 1 * 4 * 2))
    assert (result.time_steps, result.first_frames, result.first_frame_tokens) == (2, 1, 3)
    assert result.nll_per_time_step_after_first == pytest.approx(2 * math.log(5))  # one step left: two tokens
    assert result.canonical_nll_per_time_step_after_first == pytest.approx(math.log(4 * 2))
    assert result.canonical_nll_per_time_step == pytest.approx(math.log(96) / 2)


@pytest.mark.parametrize("order", PolyphonicTokenizer.ORDERS)
def test_canonical_matches_numpy_over_windows_and_batches(order: str) -> None:
    # Several pieces, short windows and small batches: the carries across windows and batches must be right.
    tok = PolyphonicTokenizer(60, 66, 1, pitch_order=order)  # vocabulary 9
    rng = np.random.default_rng(0)
    table = rng.normal(0, 2, size=(tok.vocab_size, tok.vocab_size))
    rolls = [[{60, 63, 66}, set(), {61}, {62, 64}], [set(), {65}], [{60, 61, 62, 63, 64, 65, 66}, {66}, {60}]]
    docs = [tok.encode_roll(roll) for roll in rolls]
    for seq_len in (1, 3, 50):
        result = score_documents(TableModel(table), tok, docs, batch_size=2, seq_len=seq_len)
        expected = [brute_force(table, doc, order) for doc in docs]
        assert result.nll == pytest.approx(sum(e["exact"] for e in expected), rel=1e-5)
        assert result.nll_canonical == pytest.approx(sum(e["canonical"] for e in expected), rel=1e-5)
        assert result.first_frame_nll == pytest.approx(sum(e["first_exact"] for e in expected), rel=1e-5)
        assert result.first_frame_nll_canonical == pytest.approx(sum(e["first_canonical"] for e in expected), rel=1e-5)
        assert result.first_frame_tokens == sum(e["first_tokens"] for e in expected) == 4 + 1 + 8
        assert (result.time_steps, result.first_frames) == (9, 3)


def test_exact_figure_is_unchanged_and_canonical_is_never_higher() -> None:
    tok = PolyphonicTokenizer(60, 71, 1)
    rng = np.random.default_rng(1)
    for seed in range(10):
        table = rng.normal(0, 3, size=(tok.vocab_size, tok.vocab_size))
        roll = [set(rng.choice(np.arange(60, 72), size=rng.integers(0, 5), replace=False).tolist()) for _ in range(6)]
        doc = tok.encode_roll(roll)
        model = TableModel(table)
        result = score_documents(model, tok, [doc], batch_size=1, seq_len=4)
        plain = evaluate_loss(model, [doc], SEP, 1, 4, torch.device("cpu"))  # today's path, without the frame sums
        assert result.nll == pytest.approx(plain.nll) and result.tokens == plain.tokens, seed
        assert result.nll_canonical <= result.nll + 1e-9, seed
        assert result.first_frame_nll_canonical <= result.first_frame_nll + 1e-9, seed
        assert result.nll - result.nll_canonical >= result.first_frame_nll - result.first_frame_nll_canonical - 1e-9


def test_silent_first_step_is_one_token() -> None:
    tok = PolyphonicTokenizer(60, 62, 1)
    result = score_documents(TableModel(np.zeros((5, 5))), tok, [[STEP, 2, STEP], [STEP]], batch_size=4)
    assert (result.first_frame_tokens, result.first_frames, result.time_steps) == (2, 2, 3)
    assert result.nll_per_time_step_after_first == pytest.approx(2 * math.log(5))  # one step of two tokens is left


@pytest.mark.parametrize("order", PolyphonicTokenizer.ORDERS)
def test_allowed_set_and_masked_softmax_on_a_real_jsb_piece(order: str) -> None:
    with gzip.open(JSB, "rt") as f:
        piece = json.load(f)["test"][0]
    tok = PolyphonicTokenizer(21, 108, 1, pitch_order=order)
    ids = tok.encode_roll(piece)
    context = [SEP, *ids[:-1]]
    low, high, _ = tok.canonical_bounds(np.array([context]))
    allowed = canonical_allowed(torch.from_numpy(low), torch.from_numpy(high), STEP, tok.vocab_size)[0]  # (T, V)
    for t in range(len(ids)):
        expected = brute_allowed(context[: t + 1], tok.vocab_size, order)
        assert set(torch.nonzero(allowed[t]).flatten().tolist()) == expected, t
        assert allowed[t, ids[t]], t  # the true next token is always allowed
    logits = torch.randn(len(ids), tok.vocab_size, generator=torch.Generator().manual_seed(0)) * 3
    log_z = torch.logsumexp(logits.masked_fill(~allowed, -math.inf), -1)
    probs = torch.exp(logits - log_z[:, None]) * allowed
    assert torch.allclose(probs.sum(-1), torch.ones(len(ids)))
    # Cut in two with the carry: the same rule as one pass.
    *head, carry = tok.canonical_bounds(np.array([context[:37]]))
    *tail, _ = tok.canonical_bounds(np.array([context[37:]]), carry)
    assert np.array_equal(np.concatenate([head[0], tail[0]], 1), low)
    assert np.array_equal(np.concatenate([head[1], tail[1]], 1), high)


def test_metre_tokens_and_other_tokenizers_refuse_canonical_scoring() -> None:
    tok = PolyphonicTokenizer(60, 62, 1, metre="bar")
    model = TableModel(np.zeros((tok.vocab_size, tok.vocab_size)))
    doc = tok.encode_roll([{60}, {61, 62}])
    with pytest.raises(UserError, match="metre=bar"):
        score_documents(model, tok, [doc], batch_size=1, canonical=True)
    result = score_documents(model, tok, [doc], batch_size=1)  # by default: the exact figures only
    assert result.nll_canonical is None and result.first_frames == 1
    char = CharTokenizer("ab")
    with pytest.raises(UserError, match="canonical=true is for polyphonic models"):
        score_documents(TableModel(np.zeros((char.vocab_size,) * 2)), char, [[0, 1, 0]], canonical=True)


@pytest.fixture(scope="module")
def jsb_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jsb_cache")


def test_shipped_jsb_model_canonical_is_slightly_lower(jsb_cache: Path) -> None:
    result = Model.from_pretrained(JSB_MODEL).evaluate("test", cache_dir=str(jsb_cache))
    assert result.first_frames == 77 and result.time_steps == 4725  # Boulanger-Lewandowski's test split
    for exact, canonical in ((result.nll_per_time_step, result.canonical_nll_per_time_step),
                             (result.nll_per_time_step_after_first, result.canonical_nll_per_time_step_after_first)):
        assert canonical < exact < canonical + 0.1


def test_evaluate_prints_the_four_figures_and_can_be_bounded(jsb_cache: Path, capsys) -> None:
    cfg = compose_config("evaluate", [f"checkpoint={JSB_MODEL}", "split=test", f"cache_dir={jsb_cache}"])
    full = run_evaluate(cfg)
    out = capsys.readouterr().out
    assert "first step excluded (4,648 steps)" in out
    assert f"exact{full.nll_per_time_step:>39.4f}{full.nll_per_time_step_after_first:>36.4f}" in out
    assert f"canonical-renormalized{full.canonical_nll_per_time_step:>22.4f}" in out
    overrides = [f"checkpoint={JSB_MODEL}", "split=test", f"cache_dir={jsb_cache}", "max_tokens=2000"]
    bounded = run_evaluate(compose_config("evaluate", overrides))
    docs = Model.from_pretrained(JSB_MODEL).dataset(cache_dir=str(jsb_cache)).splits["test"]
    picked = split_for_eval(docs, 64, 2000)
    assert bounded.tokens == sum(map(len, picked)) < full.tokens
    assert bounded.first_frames == len(picked) and bounded.time_steps == sum(tok == STEP for d in picked for tok in d)
    assert bounded.nll_canonical < bounded.nll


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_frame_figures_on_cuda_match_cpu() -> None:
    tok = PolyphonicTokenizer(60, 66, 1)
    table = np.random.default_rng(2).normal(0, 2, size=(tok.vocab_size, tok.vocab_size))
    docs = [tok.encode_roll([{60, 63}, set(), {61, 66}]), tok.encode_roll([{62}, {62, 64, 65}])]
    cpu = score_documents(TableModel(table), tok, docs, batch_size=2, seq_len=3)
    cuda = score_documents(TableModel(table).cuda(), tok, docs, batch_size=2, seq_len=3, device="cuda")
    for field in ("nll", "nll_canonical", "first_frame_nll", "first_frame_nll_canonical"):
        assert getattr(cuda, field) == pytest.approx(getattr(cpu, field), rel=1e-5), field
    assert (cuda.first_frames, cuda.first_frame_tokens, cuda.time_steps) == (cpu.first_frames, cpu.first_frame_tokens,
                                                                             cpu.time_steps)
