"""The regularizers: off by default and inert then, applied in training only, exact at evaluation and sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import generate.gru
import generate.model
from generate import native, regularize
from generate.cli import run_train as train
from generate.config import ModelConfig
from generate.errors import UserError
from generate.gru import GRU, dropout, gru_layer, gru_stack, layer_weights
from generate.model import GRULanguageModel, ModelSpec
from generate.validate import check_spec, with_defaults
from tests.conftest import compose_config, train_overrides
from tests.test_gru import sigmoid

ALL_ON = dict(embedding_dropout=0.1, variational_dropout=True, weight_drop=0.2, zoneout=0.1, layer_norm=True)
TRAINING_ONLY = [dict(embedding_dropout=0.3), dict(variational_dropout=True), dict(weight_drop=0.3)]


def tiny(reset_after: bool = True, seed: int = 0, hidden: int = 8, **settings) -> GRULanguageModel:
    torch.manual_seed(seed)
    model = GRULanguageModel(ModelSpec(vocab_size=13, embedding_size=6, hidden_size=hidden, num_layers=2, dropout=0.3,
                                       reset_after=reset_after, **settings))
    if settings.get("layer_norm"):
        with torch.no_grad():  # gains away from 1, so a gain that is ignored would show
            for gain in model.norms.parameters():
                gain.uniform_(0.5, 1.5)
    return model


def test_every_regularizer_is_off_by_default() -> None:
    spec, cfg = ModelSpec(vocab_size=5), ModelConfig()
    for name in ALL_ON:
        assert not getattr(spec, name) and not getattr(cfg, name), name
    assert not spec.regularized
    # a default model has exactly the parameters it had before the regularizers existed
    assert not any(k.startswith("norms.") for k in GRULanguageModel(spec).state_dict())


def test_a_spec_written_before_the_regularizers_loads_with_them_off() -> None:
    old = {"vocab_size": 7, "embedding_size": 4, "hidden_size": 6, "num_layers": 1, "dropout": 0.1,
           "reset_after": True, "tie_weights": False}
    spec = check_spec(old)
    assert not spec.regularized and spec.zoneout == 0.0
    assert with_defaults(old) == spec.to_dict()  # a resume compares the stored spec this way


@pytest.mark.parametrize("bad", ["zoneout", "weight_drop", "embedding_dropout"])
def test_a_probability_out_of_range_is_a_one_line_error(bad: str) -> None:
    with pytest.raises(UserError, match=f"model.{bad}"):
        ModelConfig(**{bad: 1.5})
    with pytest.raises(UserError, match=f"model_spec.{bad}"):
        check_spec({"vocab_size": 5, bad: -0.1})
    with pytest.raises(UserError, match="model_spec.layer_norm"):
        check_spec({"vocab_size": 5, "layer_norm": "yes"})


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("settings", TRAINING_ONLY, ids=lambda s: next(iter(s)))
def test_training_only_regularizers_change_nothing_at_evaluation(reset_after: bool, settings: dict) -> None:
    plain, regularized = tiny(reset_after), tiny(reset_after, **settings)
    regularized.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 13, (3, 70))  # ≥ 64 steps: the fused path of the plain model, no short-input shortcut
    plain.eval(), regularized.eval()
    with torch.no_grad():
        torch.testing.assert_close(regularized(tokens)[0], plain(tokens)[0], rtol=0, atol=1e-6)
    regularized.train()
    assert not torch.allclose(regularized(tokens)[0], regularized(tokens)[0])  # two masks, two results


def test_embedding_dropout_drops_whole_rows_and_scales_the_rest() -> None:
    torch.manual_seed(1)
    weight = torch.randn(4000, 5) + 3.0  # no row is zero by chance
    dropped = regularize.embedding_dropout(weight, 0.25, training=True)
    zero_rows = (dropped == 0).all(1)
    assert ((dropped == 0).any(1) == zero_rows).all()  # a row is dropped whole or not at all
    assert abs(zero_rows.float().mean().item() - 0.25) < 0.03
    torch.testing.assert_close(dropped[~zero_rows], weight[~zero_rows] / 0.75)
    assert regularize.embedding_dropout(weight, 0.25, training=False) is weight


def test_locked_dropout_masks_are_constant_over_time() -> None:
    torch.manual_seed(2)
    x = torch.ones(50, 16, 64)
    locked = dropout(x, 0.4, training=True, locked=True)
    assert (locked == locked[:1]).all()  # every step: the same mask
    assert abs((locked[0] == 0).float().mean().item() - 0.4) < 0.05
    torch.testing.assert_close(locked.unique(), torch.tensor([0.0, 1 / 0.6]))  # kept units scaled by 1/(1 − p)
    standard = dropout(x, 0.4, training=True, locked=False)
    assert not (standard == standard[:1]).all()
    assert dropout(x, 0.4, training=False, locked=True) is x


def test_variational_dropout_locks_all_three_dropout_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = generate.gru.dropout

    def spy(x, p, training, locked=False):
        calls.append((p, locked))
        return original(x, p, training, locked)

    monkeypatch.setattr(generate.gru, "dropout", spy)  # between the layers (gru_stack)
    monkeypatch.setattr(generate.model, "dropout", spy)  # the embedding output and before the head
    model = tiny(variational_dropout=True).train()
    model(torch.randint(0, 13, (2, 5)))
    assert calls == [(0.3, True)] * 3  # embedding output, between the two layers, before the head


def double_stack(seed: int, reset_after: bool, **settings) -> tuple[GRU, list, ModelSpec]:
    """A 2-layer float64 GRU (4 → 6) made from `seed`, its layer weights, and the spec with `settings` on."""
    torch.manual_seed(seed)
    gru = GRU(4, 6, 2, reset_after=reset_after).double()
    spec = ModelSpec(vocab_size=2, hidden_size=6, num_layers=2, dropout=0.0, reset_after=reset_after, **settings)
    return gru, layer_weights(gru), spec


def zoneout_reference(x: torch.Tensor, h0: torch.Tensor, weights: list, reset_after: bool, zoneout: float,
                      training: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Zoneout layer by layer through the autograd-recorded loop: the outputs and each layer's last state."""
    layer_input, finals = x, []
    for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        a = torch.nn.functional.linear(layer_input, w_ih, b_ih)
        layer_input = regularize.cell_loop(a, h0[k], w_hh, b_hh, reset_after, zoneout, training)
        finals.append(layer_input[-1])
    return layer_input, finals


@pytest.mark.parametrize("reset_after", [True, False])
def test_weight_drop_masks_w_hh_once_per_call_on_the_fused_path(reset_after: bool) -> None:
    gru, weights, spec = double_stack(3, reset_after, weight_drop=0.5)
    x, h0 = torch.randn(7, 3, 4, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    torch.manual_seed(10)
    out, h_n = regularize.stack(x, h0, weights, None, spec, training=True)
    out.sum().backward()
    fused_grads = [p.grad.clone() for p in gru.parameters()]
    gru.zero_grad()
    # the same masks, drawn in the same order, applied by hand; run through the autograd reference loop
    torch.manual_seed(10)
    masked = [(w_ih, torch.nn.functional.dropout(w_hh, 0.5), b_ih, b_hh) for w_ih, w_hh, b_ih, b_hh in weights]
    assert all(0.3 < (m[1] == 0).double().mean() < 0.7 for m in masked)
    layer_input, finals = x.transpose(0, 1), []
    for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(masked):
        layer_input, last = gru_layer(torch.nn.functional.linear(layer_input, w_ih, b_ih), h0[k], w_hh, b_hh, reset_after)
        finals.append(last)
    torch.testing.assert_close(out, layer_input.transpose(0, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, torch.stack(finals), rtol=0, atol=1e-12)
    layer_input.sum().backward()
    for fused, reference in zip(fused_grads, (p.grad for p in gru.parameters()), strict=True):
        torch.testing.assert_close(fused, reference, rtol=0, atol=1e-10)
    # not masked at evaluation: the plain stack
    torch.testing.assert_close(regularize.stack(x, h0, weights, None, spec, training=False)[0],
                               gru_stack(x, h0, weights, reset_after)[0], rtol=0, atol=1e-12)


def one_step(gru_weights, x_t: torch.Tensor, h: torch.Tensor, reset_after: bool) -> torch.Tensor:
    w_ih, w_hh, b_ih, b_hh = gru_weights
    return gru_layer(torch.nn.functional.linear(x_t[:, None], w_ih, b_ih), h, w_hh, b_hh, reset_after)[1]


@pytest.mark.parametrize("reset_after", [True, False])
def test_zoneout_keeps_units_in_training_and_takes_the_expectation_at_evaluation(reset_after: bool) -> None:
    torch.manual_seed(4)
    gru = GRU(5, 32, 1, reset_after=reset_after).double()
    weights = layer_weights(gru)[0]
    w_ih, w_hh, b_ih, b_hh = weights
    x, h0 = torch.randn(40, 8, 5, dtype=torch.float64), torch.randn(8, 32, dtype=torch.float64)
    a = torch.nn.functional.linear(x, w_ih, b_ih)
    trained = regularize.cell_loop(a, h0, w_hh, b_hh, reset_after, 0.3, training=True)
    previous = torch.cat([h0[None], trained[:-1]])
    kept = (trained == previous).double().mean().item()
    assert abs(kept - 0.3) < 0.03  # a unit keeps its value with probability p per step
    # every unit not kept took the GRU's update from the previous state
    update = torch.stack([one_step(weights, x[t], previous[t], reset_after) for t in range(40)])
    moved = trained != previous
    torch.testing.assert_close(trained[moved], update[moved], rtol=0, atol=1e-12)
    evaluated, h = regularize.cell_loop(a, h0, w_hh, b_hh, reset_after, 0.3, training=False), h0
    for t in range(40):  # the expectation: p h + (1 − p) GRU(x, h)
        h = 0.3 * h + 0.7 * one_step(weights, x[t], h, reset_after)
        torch.testing.assert_close(evaluated[t], h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("reset_after", [True, False])
def test_zoneout_expectation_in_the_no_grad_fused_loop_equals_the_reference_loop(reset_after: bool) -> None:
    from generate.recurrence import recurrence

    _, weights, spec = double_stack(8, reset_after, zoneout=0.35)
    x, h0 = torch.randn(30, 3, 4, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    layer_input, _ = zoneout_reference(x, h0, weights, reset_after, 0.35, training=False)
    with torch.no_grad():  # the fused loop, the update gate rescaled
        fused, h_n = regularize.stack(x, h0, weights, None, spec, training=False)
    torch.testing.assert_close(fused, layer_input, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n[-1], layer_input[-1], rtol=0, atol=1e-12)
    recorded, _ = regularize.stack(x, h0, weights, None, spec, training=False)  # with gradients: the loop
    torch.testing.assert_close(recorded, layer_input, rtol=0, atol=1e-12)
    assert recorded.requires_grad
    w_ih, w_hh, b_ih, b_hh = weights[0]
    with pytest.raises(ValueError, match="without gradients only"):
        recurrence(torch.nn.functional.linear(x, w_ih, b_ih), h0[0], w_hh, b_hh[12:], reset_after, zoneout=0.35)


@pytest.mark.parametrize("reset_after", [True, False])
def test_zoneout_in_the_fused_recurrence_equals_the_reference_loop_with_its_gradients(reset_after: bool) -> None:
    gru, weights, spec = double_stack(7, reset_after, zoneout=0.4)
    x = torch.randn(9, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    out, h_n = regularize.stack(x, h0, weights, None, spec, training=True)  # the fused recurrence, masks inside
    loss_weights = torch.randn_like(out)  # every output step and unit weighted differently
    fused = torch.autograd.grad((out * loss_weights).sum() + h_n.sum(), [x, h0, *gru.parameters()])
    torch.manual_seed(11)  # the same masks, drawn in the same order, for the autograd-recorded loop
    layer_input, finals = zoneout_reference(x, h0, weights, reset_after, 0.4, training=True)
    torch.testing.assert_close(out, layer_input, rtol=0, atol=1e-12)
    reference = torch.autograd.grad((layer_input * loss_weights).sum() + torch.stack(finals).sum(),
                                    [x, h0, *gru.parameters()])
    for mine, theirs in zip(fused, reference, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("reset_after", [True, False])
def test_fused_recurrence_with_zoneout_masks_passes_gradcheck(reset_after: bool) -> None:
    from generate.recurrence import recurrence

    torch.manual_seed(8)
    hidden = 3
    keep = torch.rand(5, 2, hidden, dtype=torch.float64).lt(0.4).double()
    args = [torch.randn(*shape, dtype=torch.float64, requires_grad=True)
            for shape in ((5, 2, 3 * hidden), (2, hidden), (3 * hidden, hidden), (hidden if reset_after else 0,))]
    assert torch.autograd.gradcheck(lambda xp, h0, w, b: recurrence(xp, h0, w, b, reset_after, keep), args,
                                    eps=1e-6, atol=1e-6)


def layer_norm_numpy(v: np.ndarray, gain: np.ndarray) -> np.ndarray:
    return gain * (v - v.mean()) / np.sqrt(v.var() + regularize.EPS)


def layer_norm_gru_numpy(model: GRULanguageModel, x: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """The layer-normalized cell's equations (regularize.py's docstring), literally, in float64, one vector at a time."""
    hidden, reset_after = model.spec.hidden_size, model.spec.reset_after
    steps, batch, _ = x.shape
    layer_input = x
    for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(layer_weights(model.rnn)):
        w_ih, w_hh, b_ih, b_hh = (t.detach().double().numpy() for t in (w_ih, w_hh, b_ih, b_hh))
        g_ih, g_hh, g_hn = (g.detach().double().numpy() if g is not None else None for g in model.norms.layer(k))
        outputs = np.zeros((steps, batch, hidden))
        for n in range(batch):
            h = h0[k, n].copy()
            for t in range(steps):
                a = layer_norm_numpy(w_ih @ layer_input[t, n], g_ih) + b_ih
                a_r, a_z, a_n = a[:hidden], a[hidden : 2 * hidden], a[2 * hidden :]
                if reset_after:
                    c = layer_norm_numpy(w_hh @ h, g_hh) + b_hh
                    r, z = sigmoid(a_r + c[:hidden]), sigmoid(a_z + c[hidden : 2 * hidden])
                    h = (1 - z) * np.tanh(a_n + r * c[2 * hidden :]) + z * h
                else:
                    c = layer_norm_numpy(w_hh[: 2 * hidden] @ h, g_hh) + b_hh[: 2 * hidden]
                    r, z = sigmoid(a_r + c[:hidden]), sigmoid(a_z + c[hidden:])
                    h_tilde = np.tanh(a_n + layer_norm_numpy(w_hh[2 * hidden :] @ (r * h), g_hn) + b_hh[2 * hidden :])
                    h = (1 - z) * h + z * h_tilde
                outputs[t, n] = h
        layer_input = outputs
    return layer_input


@pytest.mark.parametrize("reset_after", [True, False])
def test_layer_norm_cell_equals_numpy_transcription(reset_after: bool) -> None:
    model = tiny(reset_after, layer_norm=True).double().eval()
    x, h0 = torch.randn(5, 3, 6, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    with torch.no_grad():
        out, _ = regularize.stack(x, h0, layer_weights(model.rnn), model.norms, model.spec, training=False)
    np.testing.assert_allclose(out.numpy(), layer_norm_gru_numpy(model, x.numpy(), h0.numpy()), rtol=0, atol=1e-12)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("zoneout", [0.0, 0.4])
@pytest.mark.parametrize("training", [False, True])
def test_layer_norm_and_zoneout_gradients_pass_gradcheck(reset_after: bool, zoneout: float, training: bool) -> None:
    torch.manual_seed(5)
    hidden = 3

    def arg(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    g_hn = arg(hidden) if not reset_after else None
    args = [arg(4, 2, 2), arg(2, hidden), arg(3 * hidden, 2), arg(3 * hidden, hidden), arg(3 * hidden), arg(3 * hidden),
            arg(3 * hidden), arg((3 if reset_after else 2) * hidden)] + ([g_hn] if g_hn is not None else [])

    def layer(x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, g_hn=None):
        torch.manual_seed(6)  # the same zoneout masks at every evaluation gradcheck makes
        a = regularize.input_part(x, w_ih, b_ih, g_ih)
        return regularize.cell_loop(a, h0, w_hh, b_hh, reset_after, zoneout, training, g_hh, g_hn)

    assert torch.autograd.gradcheck(layer, args, eps=1e-6, atol=1e-6)


def sample_logits(model: GRULanguageModel, tokens: torch.Tensor, use_native: bool) -> torch.Tensor:
    """Every step's logits taken one token at a time by Stepper, or by native.c → (B, T, V)."""
    batch, steps = tokens.shape
    stepper = model.stepper(model.init_hidden(batch))
    if not use_native:
        return torch.stack([stepper.step(tokens[:, t]).clone() for t in range(steps)], 1)
    sampler = native.NativeSampler(native.kernel(), stepper)
    logits, out = torch.empty(1, batch, model.spec.vocab_size), torch.empty(1, batch, dtype=torch.long)
    rows = []
    for t in range(steps):  # one step per call, fed the given tokens (not its own draws)
        sampler.run(tokens[:, t].contiguous(), 1, out, None, 1.0, logits)
        rows.append(logits[0].clone())
    return torch.stack(rows, 1)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("settings", [dict(zoneout=0.3), dict(layer_norm=True), dict(layer_norm=True, zoneout=0.2)],
                         ids=["zoneout", "layer_norm", "both"])
@pytest.mark.parametrize("use_native", [False, True], ids=["stepper", "native"])
def test_sampling_steps_equal_the_model_at_evaluation(reset_after: bool, settings: dict, use_native: bool) -> None:
    if use_native and native.kernel() is None:
        pytest.skip("no C compiler here")
    # 72 units: native.c's whole column panels (16 or 64 wide) and the remainder both run
    model = tiny(reset_after, hidden=72, **settings).eval()
    tokens = torch.randint(0, 13, (3, 12))
    with torch.no_grad():
        expected = model(tokens)[0]
    torch.testing.assert_close(sample_logits(model, tokens, use_native), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("reset_after", [True, False])
def test_sampling_a_layer_norm_model_takes_the_native_kernel_and_matches_pytorch(
    reset_after: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if native.kernel() is None:
        pytest.skip("no C compiler here")
    from generate import decoding

    model = tiny(reset_after, layer_norm=True, zoneout=0.2).eval()
    taken: list = []
    original = decoding._native_sampler
    monkeypatch.setattr(decoding, "_native_sampler", lambda *a: taken.append(original(*a)) or taken[-1])
    fast = model.generate([1, 2], 50, temperature=0.8, seed=3)
    assert isinstance(taken[-1], native.NativeSampler)
    monkeypatch.setenv(native.SWITCH, "0")
    assert torch.equal(model.generate([1, 2], 50, temperature=0.8, seed=3), fast)  # the same draws from PyTorch
    assert taken[-1] is None


@pytest.mark.parametrize("settings", [dict(zoneout=0.1), dict(layer_norm=True)], ids=["zoneout", "layer_norm"])
def test_onnx_export_of_a_zoneout_or_layer_norm_model_is_a_clear_error(settings: dict) -> None:
    from generate.onnx_export import build_graph

    with pytest.raises(UserError, match="format=onnx cannot export .*format=pt"):
        build_graph(tiny(**settings))


def test_training_with_every_regularizer_saves_and_loads(small_text: Path, tmp_path: Path) -> None:
    import generate
    from generate.checkpoint import build_model, load_checkpoint

    settings = [f"model.{k}={str(v).lower()}" for k, v in ALL_ON.items()]
    summary = train(compose_config("config", train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}",
                                                              "train.max_steps=10", *settings)))
    assert summary.step == 10
    ckpt = load_checkpoint(Path(summary.run_dir) / "last.pt")
    assert {k: ckpt["model_spec"][k] for k in ALL_ON} == ALL_ON
    model = build_model(ckpt)
    assert any(k.startswith("norms.") for k in model.state_dict())
    torch.testing.assert_close(model.state_dict(), ckpt["model"])
    loaded = generate.load(Path(summary.run_dir) / "last.pt")
    (text,) = loaded.sample(length=20, seed=1)
    assert len(text) == 20 and text == loaded.sample(length=20, seed=1)[0]  # eval mode: no masks, reproducible
    assert len(loaded.sample(length=10, beam_size=3)[0]) == 10  # beam search steps the model's own forward


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_every_regularizer_trains_and_samples_on_each_device(device: str) -> None:
    # CUDA: bf16 autocast as the trainer runs it; the regularized model never takes nn.GRU (cuDNN) there.
    model = tiny(**ALL_ON).to(device).train()
    tokens = torch.randint(0, 13, (3, 70), device=device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        logits, hidden = model(tokens)
    logits.float().sum().backward()
    assert hidden.dtype == torch.float32
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        expected = model(tokens[:, :12])[0]
    torch.testing.assert_close(sample_logits(model, tokens[:, :12], use_native=False), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("setting", [{"embedding_dropout": 0.2}, {"weight_drop": 0.2}, {"variational_dropout": True}])
def test_training_only_regularizers_leave_evaluation_on_the_plain_fast_path(setting, monkeypatch) -> None:
    model = tiny(**setting)
    calls = []
    original = regularize.stack
    monkeypatch.setattr(regularize, "stack", lambda *a, **k: calls.append(1) or original(*a, **k))
    tokens = torch.randint(0, 13, (2, 5))
    model.train()(tokens)
    assert calls == [1]  # training applies the regularizer
    model.eval()(tokens)
    assert calls == [1]  # evaluation computes the same function without it
    assert not ModelSpec(vocab_size=13, dropout=0.0, variational_dropout=True).regularized  # no mask to lock
