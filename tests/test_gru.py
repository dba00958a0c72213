"""The GRU forms: seed equations vs a float64 NumPy transcription, reset-after vs nn.GRU, gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generate.gru import GRU, gru_layer


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def seed_equations_numpy(gru: GRU, x: np.ndarray, h0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The four seed equations, written literally with W·[h, x] on concatenated vectors.

    nn.GRU's parameter layout stores W_* as an input part and a hidden part with a bias each, so
    W_z = [W_hz | W_iz] acting on [h, x], and b_z = b_iz + b_hz.
    """
    hidden = gru.hidden_size
    batch, steps, _ = x.shape
    layer_input = x
    finals = []
    for layer in range(gru.num_layers):
        w_ih = getattr(gru, f"weight_ih_l{layer}").detach().double().numpy()
        w_hh = getattr(gru, f"weight_hh_l{layer}").detach().double().numpy()
        b_ih = getattr(gru, f"bias_ih_l{layer}").detach().double().numpy()
        b_hh = getattr(gru, f"bias_hh_l{layer}").detach().double().numpy()
        rows = {"r": slice(0, hidden), "z": slice(hidden, 2 * hidden), "h": slice(2 * hidden, 3 * hidden)}
        W = {g: np.concatenate([w_hh[s], w_ih[s]], axis=1) for g, s in rows.items()}
        b = {g: b_ih[s] + b_hh[s] for g, s in rows.items()}
        outputs = np.zeros((batch, steps, hidden))
        for n in range(batch):
            h = h0[layer, n].copy()
            for t in range(steps):
                xt = layer_input[n, t]
                z = sigmoid(W["z"] @ np.concatenate([h, xt]) + b["z"])
                r = sigmoid(W["r"] @ np.concatenate([h, xt]) + b["r"])
                h_tilde = np.tanh(W["h"] @ np.concatenate([r * h, xt]) + b["h"])
                h = (1 - z) * h + z * h_tilde
                outputs[n, t] = h
            finals.append(h)
        layer_input = outputs
    return layer_input, np.stack(finals).reshape(gru.num_layers, batch, hidden)


def test_seed_form_equals_numpy_transcription_step_by_step() -> None:
    torch.manual_seed(0)
    gru = GRU(input_size=5, hidden_size=7, num_layers=2, reset_after=False).double()
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    h0 = torch.randn(2, 3, 7, dtype=torch.float64)
    expected_out, expected_h = seed_equations_numpy(gru, x.numpy(), h0.numpy())
    out, h_n = gru(x, h0)
    np.testing.assert_allclose(out.detach().numpy(), expected_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n.detach().numpy(), expected_h, rtol=0, atol=1e-12)


def test_seed_form_differs_from_reset_after_form() -> None:
    # Guards against the two forms silently being the same code path.
    torch.manual_seed(1)
    seed = GRU(4, 6, 1, reset_after=False).double()
    after = GRU(4, 6, 1, reset_after=True).double()
    after.load_state_dict(seed.state_dict())
    x, h0 = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(1, 2, 6, dtype=torch.float64)
    assert not torch.allclose(seed(x, h0)[0], after(x, h0)[0], atol=1e-3)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_reset_after_form_equals_torch_nn_gru(num_layers: int) -> None:
    torch.manual_seed(2)
    reference = torch.nn.GRU(5, 8, num_layers, batch_first=True).double()
    ours = GRU(5, 8, num_layers, reset_after=True).double()
    ours.load_state_dict(reference.state_dict())  # same parameter names and shapes
    x, h0 = torch.randn(4, 9, 5, dtype=torch.float64), torch.randn(num_layers, 4, 8, dtype=torch.float64)
    expected_out, expected_h = reference(x, h0)
    out, h_n = ours(x, h0)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, expected_h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("reset_after", [False, True])
def test_gradients_pass_gradcheck(reset_after: bool) -> None:
    torch.manual_seed(3)
    hidden, inputs = 3, 2
    args = [
        torch.randn(2, 4, inputs, dtype=torch.float64, requires_grad=True),  # x
        torch.randn(2, hidden, dtype=torch.float64, requires_grad=True),  # h0
        torch.randn(3 * hidden, inputs, dtype=torch.float64, requires_grad=True),  # W_ih
        torch.randn(3 * hidden, hidden, dtype=torch.float64, requires_grad=True),  # W_hh
        torch.randn(3 * hidden, dtype=torch.float64, requires_grad=True),  # b_ih
        torch.randn(3 * hidden, dtype=torch.float64, requires_grad=True),  # b_hh
    ]

    def layer(x, h0, w_ih, w_hh, b_ih, b_hh):
        return gru_layer(torch.nn.functional.linear(x, w_ih, b_ih), h0, w_hh, b_hh, reset_after)

    assert torch.autograd.gradcheck(layer, args, eps=1e-6, atol=1e-6)


def test_dropout_between_layers_only_in_training() -> None:
    torch.manual_seed(4)
    gru = GRU(4, 6, 2, dropout=0.5, reset_after=False)
    x = torch.randn(2, 5, 4)
    gru.eval()
    torch.testing.assert_close(gru(x)[0], gru(x)[0])
    gru.train()
    assert not torch.allclose(gru(x)[0], gru(x)[0])
