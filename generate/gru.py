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

import torch
from torch import Tensor, nn


def gru_layer(
    x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, reset_after: bool
) -> tuple[Tensor, Tensor]:
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


class GRU(nn.Module):
    """A stacked, batch-first GRU with `nn.GRU`'s interface and parameters, written out in PyTorch.

    Input projections for all time steps are one matrix product per layer; only the recurrent part
    loops over time.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        reset_after: bool = False,
    ):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.reset_after = dropout, reset_after
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
