"""Regularizers for the GRU language model: embedding and locked dropout, weight drop, zoneout, a layer-normalized cell.

Every one is a model.* setting, off by default; a model with all of them off never reaches this module
(model.py keeps its own fast path, unchanged). Time-major tensors throughout: x (T, B, F).

- embedding_dropout p: whole rows of the embedding matrix are dropped for one forward call (a word
  dropout: every occurrence of a dropped token reads zeros), the rest scaled by 1/(1 − p). Training only.
- variational_dropout: the model.dropout masks (embedding output, between layers, before the head) are
  drawn once per sequence, shape (1, B, F), and shared by every time step (locked dropout).
- weight_drop p: DropConnect on each layer's W_hh, one mask per forward call (per batch). The masked
  matrix goes into recurrence.recurrence, whose hand-written backward takes w_hh as an input, so autograd
  chains through the mask and the fused path is kept.
- zoneout p: in training each hidden unit keeps its previous value with probability p per step,
  h_t = m ⊙ h_{t−1} + (1 − m) ⊙ GRU(x_t, h_{t−1}), m ~ Bernoulli(p); at evaluation the expectation
  h_t = p h_{t−1} + (1 − p) GRU(x_t, h_{t−1}), which is the GRU with its update gate rescaled:
  reset-after form (h' = n + z (h − n)):   z' = p + (1 − p) z
  seed form (h' = h + z (h̃ − h)):          z' = (1 − p) z
  (model.Stepper and native.c sample with that rescale.)
- layer_norm: the layer-normalized GRU (Ba et al. 2016). LN(v; g) = g ⊙ (v − mean(v)) / sqrt(var(v) + ε)
  over v's features, a learned gain g (initialised to 1) and no bias of its own (the GRU biases stay):
  a = LN(W_ih x; g_ih) + b_ih                                   (3H; its r, z, n parts a_r, a_z, a_n)
  reset-after form:
      c = LN(W_hh h; g_hh) + b_hh                               (3H, one LN over all three gates)
      r = σ(a_r + c_r),  z = σ(a_z + c_z),  n = tanh(a_n + r ⊙ c_n),  h' = (1 − z) ⊙ n + z ⊙ h
  seed form:
      c = LN(W_hrz h; g_hh) + b_hrz                             (2H: the r and z rows of W_hh)
      r = σ(a_r + c_r),  z = σ(a_z + c_z)
      h̃ = tanh(a_n + LN(W_hn (r ⊙ h); g_hn) + b_hn),           h' = (1 − z) ⊙ h + z ⊙ h̃
Locked dropout between layers, weight drop and training with zoneout (without layer norm) stay on the fused
path: gru.gru_stack draws their masks and recurrence.recurrence runs zoneout's inside its forward and
hand-written backward (dh_{t−1} gets m ⊙ dh_t directly, the GRU's output (1 − m) ⊙ dh_t).
Zoneout's expectation at evaluation runs there too without gradients (the update gate rescaled); with gradients,
and layer norm always, run an autograd-recorded loop over time (cell_step per step).
Their cost is measured in bench/regularizers.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from generate.gru import LayerWeights, drop_connect, dropout, gru_stack, zero_state
from generate.recurrence import autocast_on, needs_grad

EPS = 1e-5  # layer norm's ε, as torch.nn.LayerNorm


def embedding_dropout(weight: Tensor, p: float, training: bool) -> Tensor:
    """The embedding matrix (V, E) with whole rows zeroed with probability p, the rest scaled by 1/(1 − p)."""
    if not training or p == 0:
        return weight
    mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p).div_(1 - p)
    return weight * mask


def layer_norm(v: Tensor, gain: Tensor) -> Tensor:
    """LN(v; g) over the last dimension, learned gain, no bias."""
    return nn.functional.layer_norm(v, v.shape[-1:], gain, None, EPS)


class LayerNormGains(nn.Module):
    """The gains of the layer-normalized cell: per layer ih (3H), hh (3H, or 2H in the seed form), hn (H, seed form)."""

    def __init__(self, hidden: int, num_layers: int, reset_after: bool):
        super().__init__()
        self.num_layers, self.reset_after = num_layers, reset_after
        for k in range(num_layers):
            self.register_parameter(f"ih_l{k}", nn.Parameter(torch.ones(3 * hidden)))
            self.register_parameter(f"hh_l{k}", nn.Parameter(torch.ones((3 if reset_after else 2) * hidden)))
            if not reset_after:
                self.register_parameter(f"hn_l{k}", nn.Parameter(torch.ones(hidden)))

    def layer(self, k: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """(g_ih, g_hh, g_hn or None) of layer k."""
        return getattr(self, f"ih_l{k}"), getattr(self, f"hh_l{k}"), getattr(self, f"hn_l{k}", None)


def cell_step(
    a: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, reset_after: bool, keep: float = 0.0,
    g_hh: Tensor | None = None, g_hn: Tensor | None = None,
) -> Tensor:
    """One GRU step from a = the input part (B, 3H, b_ih included) and h (B, H) → h' (B, H).

    keep: zoneout's expectation p (evaluation), the update gate rescaled; g_hh, g_hn: layer-norm gains or None.
    """
    hidden = h.shape[-1]
    a_r, a_z, a_n = a.split(hidden, dim=-1)
    if reset_after:
        c = h @ w_hh.t()
        c = (layer_norm(c, g_hh) if g_hh is not None else c) + b_hh
        c_r, c_z, c_n = c.split(hidden, dim=-1)
        r, z = torch.sigmoid(a_r + c_r), torch.sigmoid(a_z + c_z)
        n = torch.tanh(a_n + r * c_n)
        if keep:
            z = keep + (1 - keep) * z
        return n + z * (h - n)
    c = h @ w_hh[: 2 * hidden].t()
    c = (layer_norm(c, g_hh) if g_hh is not None else c) + b_hh[: 2 * hidden]
    c_r, c_z = c.split(hidden, dim=-1)
    r, z = torch.sigmoid(a_r + c_r), torch.sigmoid(a_z + c_z)
    m = (r * h) @ w_hh[2 * hidden :].t()
    h_tilde = torch.tanh(a_n + (layer_norm(m, g_hn) if g_hn is not None else m) + b_hh[2 * hidden :])
    if keep:
        z = (1 - keep) * z
    return h + z * (h_tilde - h)


def cell_loop(
    a: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, reset_after: bool, zoneout: float, training: bool,
    g_hh: Tensor | None = None, g_hn: Tensor | None = None,
) -> Tensor:
    """One layer over time, recorded by autograd: a (T, B, 3H) input parts, h (B, H) → hs (T, B, H)."""
    keep = 0.0 if training else zoneout
    masks = a.new_empty(a.shape[0], *h.shape).bernoulli_(zoneout).unbind(0) if training and zoneout > 0 else None
    outputs = []
    for t, a_t in enumerate(a.unbind(0)):
        new = cell_step(a_t, h, w_hh, b_hh, reset_after, keep, g_hh, g_hn)
        h = torch.lerp(new, h, masks[t]) if masks is not None else new  # m h + (1 − m) h_gru
        outputs.append(h)
    return torch.stack(outputs)


def input_part(x: Tensor, w_ih: Tensor, b_ih: Tensor, g_ih: Tensor | None) -> Tensor:
    """a = LN(x W_ih^T; g_ih) + b_ih for every step at once (no LN when g_ih is None)."""
    if g_ih is None:
        return nn.functional.linear(x, w_ih, b_ih)
    return layer_norm(nn.functional.linear(x, w_ih), g_ih) + b_ih


def stack(
    x: Tensor, h0: Tensor | None, weights: Sequence[LayerWeights], gains: LayerNormGains | None, spec: Any,
    training: bool,
) -> tuple[Tensor, Tensor]:
    """gru.gru_stack with the regularizers of `spec` (a ModelSpec): x (T, B, I) → (T, B, H), (L, B, H).

    Layer norm, and zoneout's expectation at evaluation when gradients are recorded, run the autograd-recorded loop
    (cell_loop); every other combination is gru_stack's fused path, which takes locked dropout, weight drop,
    zoneout's masks and (without gradients) its expectation itself.
    """
    recorded_expectation = spec.zoneout > 0 and not training and needs_grad(
        x, *(t for layer in weights for t in layer), *([] if h0 is None else [h0]))
    if not (spec.layer_norm or recorded_expectation):
        return gru_stack(x, h0, weights, spec.reset_after, spec.dropout, training, locked=spec.variational_dropout,
                         weight_drop=spec.weight_drop, zoneout=spec.zoneout)
    autocast = autocast_on(x.device.type)
    h0 = zero_state(x, weights) if h0 is None else h0
    last_states = []
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        if layer > 0:
            x = dropout(x, spec.dropout, training, spec.variational_dropout)
        g_ih, g_hh, g_hn = gains.layer(layer) if gains is not None else (None, None, None)
        with torch.autocast(x.device.type, enabled=False):  # the state stays float32, as in recurrence.recurrence
            a = input_part(x.float() if autocast else x, w_ih, b_ih, g_ih)
            x = cell_loop(a, h0[layer], drop_connect(w_hh, spec.weight_drop, training), b_hh, spec.reset_after,
                          spec.zoneout, training, g_hh, g_hn)
        last_states.append(x[-1])
    return x, torch.stack(last_states, dim=0)
