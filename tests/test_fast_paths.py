"""The fast paths compute what the plain ones do: fused recurrence, no-grad loop, sampling stepper, Gumbel draws."""

from __future__ import annotations

import pytest
import torch

from generate.decoding import generate_tokens, pick_next
from generate.gru import GRU, fused_gru_layer, gru_layer, gru_stack, layer_weights
from generate.model import GRULanguageModel, ModelSpec, Stepper
from generate.recurrence import recurrence


def _grads(outputs: tuple[torch.Tensor, ...], inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Gradients of a random linear function of `outputs` with respect to `inputs`."""
    gen = torch.Generator().manual_seed(seed)
    total = sum((out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum() for out in outputs)
    return list(torch.autograd.grad(total, inputs))


@pytest.mark.parametrize("reset_after", [False, True])
def test_fused_layer_equals_reference_loop_with_gradients(reset_after: bool) -> None:
    torch.manual_seed(0)
    batch, steps, inputs, hidden = 3, 7, 5, 6
    x = torch.randn(batch, steps, inputs, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(3 * hidden, inputs, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(3 * hidden, hidden, dtype=torch.float64, requires_grad=True)
    b_ih = torch.randn(3 * hidden, dtype=torch.float64, requires_grad=True)
    b_hh = torch.randn(3 * hidden, dtype=torch.float64, requires_grad=True)
    params = [x, h0, w_ih, w_hh, b_ih, b_hh]
    proj = torch.nn.functional.linear
    expected = gru_layer(proj(x, w_ih, b_ih), h0, w_hh, b_hh, reset_after)
    actual = fused_gru_layer(proj(x, w_ih, b_ih), h0, w_hh, b_hh, reset_after)
    for want, got in zip(expected, actual, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for want, got in zip(_grads(expected, params, 1), _grads(actual, params, 1), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("reset_after", [False, True])
def test_fused_layer_passes_gradcheck(reset_after: bool) -> None:
    torch.manual_seed(1)
    hidden = 3
    args = [
        torch.randn(2, 4, 3 * hidden, dtype=torch.float64, requires_grad=True),  # x_proj
        torch.randn(2, hidden, dtype=torch.float64, requires_grad=True),  # h0
        torch.randn(3 * hidden, hidden, dtype=torch.float64, requires_grad=True),  # W_hh
        torch.randn(3 * hidden, dtype=torch.float64, requires_grad=True),  # b_hh
    ]
    assert torch.autograd.gradcheck(lambda *a: fused_gru_layer(*a, reset_after), args, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("reset_after", [False, True])
def test_stacked_fused_gru_float32_matches_reference_and_no_grad_path(reset_after: bool) -> None:
    torch.manual_seed(2)
    ref = GRU(8, 16, 3, reset_after=reset_after, fused=False)
    fast = GRU(8, 16, 3, reset_after=reset_after, fused=True)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 9, 8, requires_grad=True)
    h0 = torch.randn(3, 4, 16)
    expected, actual = ref(x, h0), fast(x, h0)
    for want, got in zip(expected, actual, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    params = [x, *ref.parameters()]
    fast_params = [x, *fast.parameters()]
    for want, got in zip(_grads(expected, params, 3), _grads(actual, fast_params, 3), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # evaluation takes the loop without autograd bookkeeping
        for want, got in zip(actual, fast(x, h0), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_language_model_fused_cpu_path_equals_nn_gru_with_gradients() -> None:
    torch.manual_seed(3)
    model = GRULanguageModel(ModelSpec(vocab_size=30, embedding_size=8, hidden_size=12, num_layers=2, dropout=0.0)).double()
    tokens = torch.randint(30, (3, 11))
    hidden = torch.randn(2, 3, 12, dtype=torch.float64)
    outputs = {}
    for fused in (False, True):  # False: torch's nn.GRU
        model.fused = fused
        model.zero_grad()
        logits, h_n = model(tokens, hidden)
        (logits.sin().sum() + h_n.sum()).backward()
        outputs[fused] = (logits.detach(), h_n.detach(), [p.grad.clone() for p in model.parameters()])
    for want, got in zip(outputs[False][:2], outputs[True][:2], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for want, got in zip(outputs[False][2], outputs[True][2], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_fused_recurrence_under_autocast_keeps_float32_state_and_gradients() -> None:
    # The CUDA trainer runs under bf16 autocast; CPU autocast exercises the same code path here.
    torch.manual_seed(4)
    gru = GRU(6, 8, 2, reset_after=False)
    x = torch.randn(2, 5, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = gru(x)
    assert out.dtype == torch.float32 and h_n.dtype == torch.float32
    out.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gru.parameters())
    reference = GRU(6, 8, 2, reset_after=False, fused=False)
    reference.load_state_dict(gru.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), reference(x)[0], rtol=0.05, atol=0.05)  # bf16 input projections


@pytest.mark.parametrize("reset_after", [False, True])
def test_stepper_equals_forward_one_step_at_a_time(reset_after: bool) -> None:
    torch.manual_seed(5)
    model = GRULanguageModel(ModelSpec(vocab_size=40, embedding_size=16, hidden_size=24, num_layers=3, reset_after=reset_after)).eval()
    tokens = torch.randint(40, (5, 20))
    with torch.no_grad():
        full, h_full = model(tokens)
        _, hidden = model(tokens[:, :4])
        stepper = Stepper(model, hidden)
        before = hidden.clone()
        for t in range(4, 20):
            torch.testing.assert_close(stepper.step(tokens[:, t]), full[:, t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stepper.hidden, h_full, rtol=1e-5, atol=1e-5)
    assert torch.equal(hidden, before), "the caller's state must not change"


def test_gumbel_draws_follow_the_softmax() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, -1).contiguous()
    drawn = pick_next(logits, torch.Generator().manual_seed(0), temperature=1.0)
    freq = torch.bincount(drawn, minlength=4).double() / len(drawn)
    torch.testing.assert_close(freq, probs.double(), rtol=0, atol=0.015)
    # Filtered tokens are never drawn, even with the noise.
    assert set(pick_next(logits, torch.Generator().manual_seed(1), temperature=1.0, top_k=2).tolist()) == {0, 1}


@pytest.mark.parametrize("reset_after", [False, True])
def test_generate_is_deterministic_and_threads_are_restored(reset_after: bool) -> None:
    torch.manual_seed(6)
    model = GRULanguageModel(ModelSpec(vocab_size=20, embedding_size=8, hidden_size=16, num_layers=2, reset_after=reset_after))
    threads = torch.get_num_threads()
    run = lambda seed, extra={}: generate_tokens(model, [1, 2], 50, num_samples=3, seed=seed, **extra)  # noqa: E731
    first, again, other = run(7), run(7), run(8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (3, 50) and torch.get_num_threads() == threads
    # top_p path and top_k path are deterministic too
    assert torch.equal(run(9, {"top_p": 0.9, "top_k": 5}), run(9, {"top_p": 0.9, "top_k": 5}))


def test_generate_greedy_follows_the_full_forward_pass() -> None:
    torch.manual_seed(7)
    model = GRULanguageModel(ModelSpec(vocab_size=20, embedding_size=8, hidden_size=16, num_layers=2, reset_after=False))
    out = generate_tokens(model, [3], 30, temperature=0)[0].tolist()
    with torch.no_grad():
        logits, _ = model(torch.tensor([[3] + out]))
    assert logits[0, :-1].argmax(-1).tolist() == out


def test_gru_stack_uses_given_weights_time_major() -> None:
    torch.manual_seed(8)
    gru = GRU(4, 5, 2, reset_after=True)
    x = torch.randn(3, 6, 4)
    out, h_n = gru_stack(x.transpose(0, 1), None, layer_weights(gru), True)
    reference = GRU(4, 5, 2, reset_after=True, fused=False)
    reference.load_state_dict(gru.state_dict())
    ref_out, ref_h = reference(x)
    torch.testing.assert_close(out.transpose(0, 1), ref_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h_n, ref_h, rtol=1e-6, atol=1e-6)
    assert recurrence(torch.randn(2, 1, 15), torch.zeros(1, 5), gru.weight_hh_l0.detach(), gru.bias_hh_l0[10:].detach(), True).shape == (2, 1, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_sampling_equals_eager_cuda_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    import generate.decoding as decoding

    torch.manual_seed(9)
    model = GRULanguageModel(ModelSpec(vocab_size=20, embedding_size=8, hidden_size=16, num_layers=2)).cuda()
    settings = {"num_samples": 2, "seed": 3, "device": "cuda"}
    graphed = generate_tokens(model, [1], 40, **settings)
    monkeypatch.setattr(decoding, "_capture_cuda_graph", lambda *a: None)
    eager = generate_tokens(model, [1], 40, **settings)
    assert torch.equal(graphed, eager)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_streamed_blocks_equal_one_generation(temperature: float) -> None:
    """Memory is bounded by the block, not the length, and the block size never changes the samples."""
    from generate.decoding import stream_tokens

    torch.manual_seed(10)
    model = GRULanguageModel(ModelSpec(vocab_size=20, embedding_size=8, hidden_size=16, num_layers=2))
    whole = generate_tokens(model, [1, 2], 1000, num_samples=2, seed=4, temperature=temperature)
    blocks = list(stream_tokens(model, [1, 2], 1000, num_samples=2, seed=4, temperature=temperature, block=64))
    assert [b.shape for b in blocks[:2]] == [(2, 64), (2, 64)] and blocks[-1].shape == (2, 1000 - 15 * 64)
    assert torch.equal(torch.cat(blocks, dim=1), whole)
    assert torch.equal(torch.cat(list(stream_tokens(model, [1, 2], 1000, num_samples=2, seed=4,
                                                    temperature=temperature, block=1)), dim=1), whole)
