"""Test-time transposition: a polyphonic model scored as the mixture of its transposed views (scoring.py)."""

from __future__ import annotations

import gzip
import itertools
import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from generate.api import Model
from generate.cli import run_evaluate
from generate.errors import UserError
from generate.model import GRULanguageModel, ModelSpec
from generate.music.extract import Extraction
from generate.scoring import Mixture, score_documents
from generate.tokenizers.char import CharTokenizer
from generate.tokenizers.events import EventTokenizer
from generate.tokenizers.polyphonic import PolyphonicTokenizer
from tests.conftest import compose_config
from tests.test_frame_nll import JSB, JSB_MODEL, SEP, STEP, TableModel, brute_allowed
from tests.test_metre import real_tunes, tokenizers

Logits = Callable[[np.ndarray], np.ndarray]  # a whole sequence of input ids (T,) → logits (T, V)


def brute_mixture(logits_of: Logits | list[Logits], tok: PolyphonicTokenizer, doc: list[int],
                  semitones: int) -> dict[str, float]:
    """The mixture written out in float64 loops: each view's (of each model's) log-probabilities of every id,
    averaged in probability, then renormalized over the vocabulary (exact) or over the ids canonical order allows."""
    seq = np.array([SEP, *doc])
    views = []
    models = logits_of if isinstance(logits_of, list) else [logits_of]
    for model, k in itertools.product(models, range(-semitones, semitones + 1)):
        moved = tok.transposition_ids(k)
        reads = np.where(moved < 0, np.arange(len(moved)), moved)
        logits = model(reads[seq[:-1]]).astype(np.float64)
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        view = np.full_like(log_p, -np.inf)
        for y, g in enumerate(moved):
            if g >= 0:
                view[:, y] = log_p[:, g]
        views.append(view)
    mixture = np.log(np.mean(np.exp(np.stack(views)), axis=0))  # (T, V)
    out = {"exact": 0.0, "canonical": 0.0, "first_exact": 0.0}
    in_first = True
    for t in range(len(doc)):
        allowed = sorted(brute_allowed(list(seq[: t + 1]), tok.vocab_size))
        exact = -(mixture[t, seq[t + 1]] - np.log(np.exp(mixture[t]).sum()))
        out["exact"] += exact
        out["canonical"] += -(mixture[t, seq[t + 1]] - np.log(np.exp(mixture[t, allowed]).sum()))
        out["first_exact"] += exact if in_first else 0.0
        in_first = in_first and seq[t + 1] != STEP
    return out


def test_transposition_ids_move_pitches_only() -> None:
    tok = PolyphonicTokenizer(60, 66, 1, metre="bar")  # ids: SEP 0, STEP 1, pitches 60..66 at 2..8, then bar ids
    up, down = tok.transposition_ids(1), tok.transposition_ids(-2)
    assert np.array_equal(tok.transposition_ids(0), np.arange(tok.vocab_size))
    assert up[:9].tolist() == [0, 1, 3, 4, 5, 6, 7, 8, -1]  # 66 + 1 leaves the range
    assert down[:9].tolist() == [0, 1, -1, -1, 2, 3, 4, 5, 6]
    assert np.array_equal(up[9:], np.arange(9, tok.vocab_size)) and tok.vocab_size > 9  # bar ids stay


def test_moving_the_ids_is_encoding_the_moved_piece_on_real_tunes() -> None:
    """A jig, a slip jig (ABC) and a chorale (MusicXML), as melody and polyphony with bars and METER/KEY/TEMPO."""
    moved_keys = set()
    for tracks in real_tunes():
        for tok in tokenizers("bar") + tokenizers("position"):
            pieces = tok.extract(tracks[:1] if tok.kind == "melody" else tracks, Extraction(36, 96), Counter())
            for piece, semitones in itertools.product(pieces, (-7, -1, 2, 6)):
                low, high = piece.pitch_range()
                if not (tok.in_range(low + semitones) and tok.in_range(high + semitones)):
                    continue
                ids = np.array(tok.encode(piece))
                assert np.array_equal(tok.transposition_ids(semitones)[ids], tok.encode(piece.transposed(semitones)))
                moved_keys.add((tok.kind, str(piece.key), str(piece.key.transposed(semitones))))
    assert len({kind for kind, _, _ in moved_keys}) == 2 and len(moved_keys) >= 12  # both kinds, the keys moved
    with pytest.raises(UserError, match="transpositions= is for the polyphonic and melody tokenizers"):
        EventTokenizer().transposition_ids(1)


def test_mixture_matches_numpy_over_windows_and_batches() -> None:
    tok = PolyphonicTokenizer(60, 66, 1)
    table = np.random.default_rng(3).normal(0, 2, size=(tok.vocab_size, tok.vocab_size))
    rolls = [[{60, 63, 66}, set(), {61}, {62, 64}], [set(), {65}], [{60, 61, 62, 63, 64, 65, 66}, {66}, {60}]]
    docs = [tok.encode_roll(roll) for roll in rolls]
    expected = [brute_mixture(lambda ids: table[ids], tok, doc, 2) for doc in docs]
    for seq_len in (1, 3, 50):
        result = score_documents(TableModel(table), tok, docs, batch_size=2, seq_len=seq_len, transpositions=2)
        assert result.transpositions == 2
        assert result.nll == pytest.approx(sum(e["exact"] for e in expected), rel=1e-5)
        assert result.nll_canonical == pytest.approx(sum(e["canonical"] for e in expected), rel=1e-5)
        assert result.first_frame_nll == pytest.approx(sum(e["first_exact"] for e in expected), rel=1e-5)
        assert (result.time_steps, result.first_frames) == (9, 3)


def test_an_ensemble_mixes_every_view_of_every_model_equally() -> None:
    tok = PolyphonicTokenizer(60, 66, 1)
    tables = [np.random.default_rng(seed).normal(0, 2, size=(tok.vocab_size, tok.vocab_size)) for seed in (7, 8, 9)]
    docs = [tok.encode_roll(roll) for roll in ([{60, 64}, {61}, set(), {62, 65, 66}], [{66}, {60, 61}])]
    models = [TableModel(table) for table in tables]
    for semitones in (0, 2):
        expected = [brute_mixture([lambda ids, t=t: t[ids] for t in tables], tok, doc, semitones) for doc in docs]
        for seq_len in (1, 4, 50):
            result = score_documents(models[0], tok, docs, batch_size=2, seq_len=seq_len, transpositions=semitones,
                                     ensemble=models[1:])
            assert (result.models, result.transpositions) == (3, semitones)
            assert result.nll == pytest.approx(sum(e["exact"] for e in expected), rel=1e-5)
            assert result.nll_canonical == pytest.approx(sum(e["canonical"] for e in expected), rel=1e-5)
            assert result.first_frame_nll == pytest.approx(sum(e["first_exact"] for e in expected), rel=1e-5)


def test_an_ensemble_of_text_grus_carries_each_state_across_windows() -> None:
    text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text(encoding="utf-8")[:400]
    tok = CharTokenizer(text)
    doc = tok.encode(text)
    nets = []
    for seed, hidden in ((0, 24), (1, 16)):  # two sizes: each model keeps its own state
        torch.manual_seed(seed)
        nets.append(GRULanguageModel(ModelSpec(vocab_size=tok.vocab_size, embedding_size=8, hidden_size=hidden,
                                               dropout=0.0)).eval())
    with torch.no_grad():
        whole = [torch.log_softmax(net(torch.tensor(doc)[None])[0][0].double(), -1) for net in nets]
    mixed = torch.logsumexp(torch.stack(whole), 0) - math.log(2)  # (T, V)
    expected = -float(mixed[torch.arange(len(doc) - 1), torch.tensor(doc[1:])].sum())
    result = score_documents(nets[0], tok, [doc], batch_size=1, seq_len=37, ensemble=nets[1:])
    assert result.models == 2 and result.tokens == len(doc) - 1
    assert result.nll == pytest.approx(expected, rel=1e-5)
    alone = [score_documents(net, tok, [doc], batch_size=1, seq_len=37).nll for net in nets]
    assert result.nll < max(alone)  # log-mean-exp is concave: never worse than the worse model


def test_a_gru_on_a_real_jsb_piece_carries_every_view_state_across_windows() -> None:
    with gzip.open(JSB, "rt") as f:
        piece = json.load(f)["test"][0]
    tok = PolyphonicTokenizer(21, 108, 1)
    doc = tok.encode_roll(piece)
    torch.manual_seed(0)
    net = GRULanguageModel(ModelSpec(vocab_size=tok.vocab_size, embedding_size=16, hidden_size=24, dropout=0.0)).eval()

    def logits_of(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(ids)[None])[0][0].double().numpy()

    expected = brute_mixture(logits_of, tok, doc, 3)
    result = score_documents(net, tok, [doc], batch_size=1, seq_len=16, transpositions=3)  # many windows
    assert result.nll == pytest.approx(expected["exact"], rel=1e-5)
    assert result.nll_canonical == pytest.approx(expected["canonical"], rel=1e-5)
    alone = score_documents(net, tok, [doc], batch_size=1, seq_len=16)
    assert alone.transpositions == 0 and result.nll != pytest.approx(alone.nll, rel=1e-6)


def test_the_mixture_gives_each_position_a_distribution() -> None:
    tok = PolyphonicTokenizer(60, 64, 1)
    table = np.random.default_rng(4).normal(0, 3, size=(tok.vocab_size, tok.vocab_size))
    mixture = Mixture([TableModel(table)], tok, 2)
    log_q, _ = mixture(torch.tensor([[SEP, 2, 6, STEP, 4]]))
    mass = torch.exp(log_q).sum(-1)
    assert torch.all(mass <= 1 + 1e-6) and torch.all(mass > 0)  # the views' mass off the range is lost, not made up
    assert torch.isfinite(log_q[..., STEP]).all()


def test_zero_transpositions_is_the_model_alone_and_text_models_refuse() -> None:
    tok = PolyphonicTokenizer(60, 66, 1)
    table = np.random.default_rng(5).normal(0, 2, size=(tok.vocab_size, tok.vocab_size))
    doc = tok.encode_roll([{60, 62}, {61}, set(), {66}])
    alone = score_documents(TableModel(table), tok, [doc], batch_size=1)
    assert score_documents(TableModel(table), tok, [doc], batch_size=1, transpositions=0).nll == alone.nll
    char = CharTokenizer("ab")
    with pytest.raises(UserError, match="transpositions= is for music models; this one has char tokens"):
        score_documents(TableModel(np.zeros((char.vocab_size,) * 2)), char, [[0, 1, 0]], transpositions=1)


@pytest.fixture(scope="module")
def jsb_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jsb_cache")


def test_evaluate_labels_the_mixture_and_checks_its_range(jsb_cache: Path, capsys) -> None:
    base = [f"checkpoint={JSB_MODEL}", "split=test", f"cache_dir={jsb_cache}", "max_tokens=2000"]
    alone = run_evaluate(compose_config("evaluate", base))
    mixed = run_evaluate(compose_config("evaluate", [*base, "transpositions=2"]))
    out = capsys.readouterr().out
    assert "scored as the mixture of 5 transposed views of the model (-2..+2 semitones)" in out
    assert (mixed.tokens, mixed.time_steps) == (alone.tokens, alone.time_steps)
    # The shipped model was trained on 13 keys: its transposed views are good and their mixture scores better.
    assert mixed.nll_per_time_step < alone.nll_per_time_step - 0.05
    assert mixed.canonical_nll_per_time_step < mixed.nll_per_time_step
    with pytest.raises(UserError, match="transpositions=13 must be an integer at least 0 and at most 12"):
        run_evaluate(compose_config("evaluate", [*base, "transpositions=13"]))
    model = Model.from_pretrained(JSB_MODEL)
    with pytest.raises(UserError, match="transpositions=-1"):
        model.evaluate("test", cache_dir=str(jsb_cache), transpositions=-1)
    assert math.isfinite(mixed.nll)


def test_evaluate_mixes_checkpoints_with_the_same_tokens_only(jsb_cache: Path, capsys) -> None:
    base = [f"checkpoint={JSB_MODEL}", "split=test", f"cache_dir={jsb_cache}", "max_tokens=2000"]
    alone = run_evaluate(compose_config("evaluate", base))
    twice = run_evaluate(compose_config("evaluate", [*base, "ensemble=[jsb]", "transpositions=1"]))
    assert "scored as the equal mixture of 2 models (jsb.pt and jsb), 3 transposed views of each (-1..+1 semitones)" \
        in capsys.readouterr().out
    once = Model.from_pretrained(JSB_MODEL).evaluate("test", cache_dir=str(jsb_cache), max_tokens=2000,
                                                     transpositions=1)
    # A model mixed with itself is the model: the same figures to float precision, whatever the views.
    assert twice.models == 2 and twice.nll == pytest.approx(once.nll, rel=1e-5) and once.nll != alone.nll
    with pytest.raises(UserError, match=r"ensemble: .*shakespeare.pt has other tokens than .*jsb.pt"):
        run_evaluate(compose_config("evaluate", [*base, "ensemble=[shakespeare]"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_mixture_and_an_ensemble_on_cuda_match_cpu() -> None:
    tok = PolyphonicTokenizer(60, 66, 1)
    table = np.random.default_rng(6).normal(0, 2, size=(tok.vocab_size, tok.vocab_size))
    docs = [tok.encode_roll([{60, 63}, set(), {61, 66}]), tok.encode_roll([{62}, {62, 64, 65}])]
    other = np.random.default_rng(7).normal(0, 2, size=table.shape)
    for ensemble in ([], [other]):  # the model alone, then an ensemble of two
        cpu = score_documents(TableModel(table), tok, docs, batch_size=2, seq_len=3, transpositions=2,
                              ensemble=[TableModel(t) for t in ensemble])
        cuda = score_documents(TableModel(table).cuda(), tok, docs, batch_size=2, seq_len=3, device="cuda",
                               transpositions=2, ensemble=[TableModel(t).cuda() for t in ensemble])
        for field in ("nll", "nll_canonical", "first_frame_nll"):
            assert getattr(cuda, field) == pytest.approx(getattr(cpu, field), rel=1e-5), field
