"""The GRU written out from its equations: the seeds' reset-before form, and the reset-after form.

Both keep `torch.nn.GRU`'s parameter names and shapes (gate rows ordered r, z, n) so weights move
between them and tests can compare them directly.

Seed form (`reset_after=False`), as in ../shared/seeds/:
    z  = σ(W_z·[h, x] + b_z)
    r  = σ(W_r·[h, x] + b_r)
    h̃  = tanh(W_h·[r ⊙ h, x] + b_h)          # reset applied to h *before* the product
    h' = (1 − z) ⊙ h + z ⊙ h̃
`torch.nn.GRU` form (`reset_after=True`):
    n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))   # reset applied *after* the product
    h' = (1 − z) ⊙ n + z ⊙ h
W·[h, x] is split as W_h* h + W_i* x, and b_* as b_i* + b_h*; this is the same function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from generate.recurrence import autocast_on, fold_biases, recurrence


def gru_layer(x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, reset_after: bool) -> tuple[Tensor, Tensor]:
    """Run one layer over time. x_proj: (B, T, 3H) = x W_ih^T + b_ih for all steps; h: (B, H)."""
    hidden = h.shape[-1]
    outputs = []
    if reset_after:
        for t in range(x_proj.shape[1]):
            xr, xz, xn = x_proj[:, t].split(hidden, dim=-1)
            hr, hz, hn = torch.addmm(b_hh, h, w_hh.t()).split(hidden, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = n + z * (h - n)  # (1 − z) n + z h
            outputs.append(h)
    else:
        w_hrz, w_hn = w_hh[: 2 * hidden], w_hh[2 * hidden :]
        b_hrz, b_hn = b_hh[: 2 * hidden], b_hh[2 * hidden :]
        for t in range(x_proj.shape[1]):
            xr, xz, xn = x_proj[:, t].split(hidden, dim=-1)
            hr, hz = torch.addmm(b_hrz, h, w_hrz.t()).split(hidden, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            h_tilde = torch.tanh(xn + torch.addmm(b_hn, r * h, w_hn.t()))
            h = h + z * (h_tilde - h)  # (1 − z) h + z h̃
            outputs.append(h)
    return torch.stack(outputs, dim=1), h


def fused_gru_layer(x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, reset_after: bool) -> tuple[Tensor, Tensor]:
    """gru_layer's fast equivalent (same arguments, same results): (B, T, 3H), (B, H) → (B, T, H), (B, H)."""
    fold, b_hn = fold_biases(torch.zeros_like(b_hh), b_hh, reset_after)  # x_proj already holds b_ih
    hs = recurrence((x_proj + fold).transpose(0, 1), h, w_hh, b_hn, reset_after)  # (T, B, H)
    return hs.transpose(0, 1), hs[-1]


LayerWeights = tuple[Tensor, Tensor, Tensor, Tensor]  # w_ih (3H, I), w_hh (3H, H), b_ih (3H,), b_hh (3H,)


def dropout(x: Tensor, p: float, training: bool, locked: bool = False) -> Tensor:
    """Dropout of x (T, B, F): per element and step, or (locked) one mask per sequence for every step."""
    if not training or p == 0:
        return x
    if not locked:
        return nn.functional.dropout(x, p, training=True)
    return x * x.new_empty(1, x.shape[1], x.shape[2]).bernoulli_(1 - p).div_(1 - p)


def drop_connect(w_hh: Tensor, p: float, training: bool) -> Tensor:
    """DropConnect (weight drop): each recurrent weight zeroed with probability p (the rest scaled), one mask per call."""
    return nn.functional.dropout(w_hh, p, training=True) if training and p > 0 else w_hh


def zero_state(x: Tensor, weights: Sequence[LayerWeights]) -> Tensor:
    """The initial hidden state (L, B, H) for time-major x: zeros, float32 under autocast (the state is never bf16)."""
    hidden = weights[0][1].shape[1]
    return x.new_zeros(len(weights), x.shape[1], hidden, dtype=torch.float32 if autocast_on(x.device.type) else None)


def gru_stack(
    x: Tensor,
    h0: Tensor | None,
    weights: Sequence[LayerWeights],
    reset_after: bool,
    dropout_p: float = 0.0,
    training: bool = False,
    *,
    locked: bool = False,
    weight_drop: float = 0.0,
    zoneout: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """A stacked GRU on the fast path, time-major: x (T, B, I), h0 (L, B, H) → (T, B, H), (L, B, H).

    In training it also applies the regularizers that keep this path (generate/regularize.py): the dropout between
    layers locked over time, DropConnect on each W_hh (autograd chains through the mask into recurrence's
    hand-written backward), and zoneout's masks, which run inside the recurrence; at evaluation, without
    gradients, zoneout's expectation (the update gate rescaled).
    """
    h0 = zero_state(x, weights) if h0 is None else h0
    last_states = []
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        if layer > 0:
            x = dropout(x, dropout_p, training, locked)
        w_hh = drop_connect(w_hh, weight_drop, training)
        keep = h0.new_empty(x.shape[0], *h0.shape[1:]).bernoulli_(zoneout) if training and zoneout > 0 else None
        bias, b_hn = fold_biases(b_ih, b_hh, reset_after)
        xp = nn.functional.linear(x, w_ih, bias)  # (T, B, 3H): all steps in one product
        x = recurrence(xp, h0[layer], w_hh, b_hn, reset_after, keep, 0.0 if training else zoneout)  # (T, B, H)
        last_states.append(x[-1])
    return x, torch.stack(last_states, dim=0)


def layer_weights(rnn: nn.Module) -> list[LayerWeights]:
    """Per-layer (w_ih, w_hh, b_ih, b_hh) of a GRU or nn.GRU (both use nn.GRU's names)."""
    return [
        (getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}"), getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}"))
        for k in range(rnn.num_layers)
    ]


class GRU(nn.Module):
    """A stacked, batch-first GRU with `nn.GRU`'s interface and parameters, written out in PyTorch.

    Input projections for all time steps are one matrix product per layer; only the recurrent part
    loops over time. `fused=True` (default) runs the fast path (gru_stack); `fused=False` the
    reference loop (gru_layer), kept for comparison and for tests.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        reset_after: bool = False,
        fused: bool = True,
    ):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.reset_after, self.fused = dropout, reset_after, fused
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(3 * hidden_size, in_size)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(3 * hidden_size, hidden_size)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(3 * hidden_size)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(3 * hidden_size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as nn.GRU: U(−1/√H, 1/√H).
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (B, T, input_size), h0: (num_layers, B, H) → output (B, T, H), h_n (num_layers, B, H)."""
        if self.fused:
            out, h_n = self.forward_time_major(x.transpose(0, 1), h0)
            return out.transpose(0, 1), h_n
        batch = x.shape[0]
        if h0 is None:
            h0 = x.new_zeros(self.num_layers, batch, self.hidden_size)
        last_states = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
            w_ih = getattr(self, f"weight_ih_l{layer}")
            b_ih = getattr(self, f"bias_ih_l{layer}")
            x_proj = nn.functional.linear(x, w_ih, b_ih)  # (B, T, 3H): all steps in one product
            x, h_last = gru_layer(
                x_proj,
                h0[layer],
                getattr(self, f"weight_hh_l{layer}"),
                getattr(self, f"bias_hh_l{layer}"),
                self.reset_after,
            )
            last_states.append(h_last)
        return x, torch.stack(last_states, dim=0)

    def forward_time_major(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (T, B, input_size) → (T, B, H), (num_layers, B, H) on the fast path."""
        return gru_stack(x, h0, layer_weights(self), self.reset_after, self.dropout, self.training)
