"""The fused GRU recurrence: one layer over time, time-major, with a hand-written backward and a no-grad loop.

generate/gru.py stacks it into layers (gru_stack); the reference loop it must match is gru.gru_layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# gru.gru_layer is the reference: clear, and autograd records ~10 small ops per step, each
# with its own saved tensors and backward node. The fast path here computes the same function
# time-major (every per-step slice is contiguous), writes each step into preallocated buffers,
# and has a hand-written backward: per step only the two products that cannot wait (dh through
# W_hh) plus a few elementwise ops; the weight gradient of all steps is then ONE large product,
# which runs near the machine's matmul rate instead of T small accumulations.


def tanh_(x: Tensor) -> Tensor:
    """tanh in place, computed as 2σ(2x) − 1 (the same function; |difference| ≤ 2e-7 in float32).

    On this CPU ATen's float tanh costs ~2.5 ns per element and its sigmoid ~0.4 ns, so for the
    (B, H) tensors of a training step the four cheap ops beat one tanh ~3x (docs/performance.md).
    For a handful of elements (batch-1 sampling) plain tensor.tanh_() is cheaper: one call, not four.
    """
    return x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


def tanh_for(elements: int) -> Callable[[Tensor], Tensor]:
    """The faster in-place tanh for tensors of this many elements (crossover measured at ~4k: bench/kernels.py)."""
    return tanh_ if elements >= 4096 else Tensor.tanh_


def _one_minus_square(x: Tensor, one: Tensor, out: Tensor) -> Tensor:
    """out = 1 − x² (the derivative of tanh from its output), in one op."""
    return torch.addcmul(one, x, x, value=-1.0, out=out)


def _s_one_minus_s(s: Tensor, out: Tensor) -> Tensor:
    """out = s (1 − s) (the derivative of sigmoid from its output), in one op."""
    return torch.addcmul(s, s, s, value=-1.0, out=out)


class _Recurrence(torch.autograd.Function):
    """The recurrent part of one layer over all steps, time-major, with a hand-written backward.

    xp: (T, B, 3H) = x W_ih^T + b_ih + every part of b_hh that is added before a nonlinearity (all
    of it in the seed form; the r and z parts in the reset-after form). b_hn: (H,) the part of
    b_hh inside r ⊙ (W_hn h + b_hn) (reset-after form only; empty otherwise).
    keep: None, or zoneout's masks (T, B, H), 1 where a unit keeps its previous value (generate/regularize.py).
    Returns hs: (T, B, H), the hidden state after every step.
    """

    @staticmethod
    def forward(ctx: Any, xp: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Tensor, reset_after: bool,
                keep: Tensor | None = None) -> Tensor:
        steps, batch, _ = xp.shape
        hidden = h0.shape[-1]
        hs = xp.new_empty(steps + 1, batch, hidden)  # hs[0] = h0, hs[t+1] = state after step t
        hs[0] = h0
        rz = xp.new_empty(steps, batch, 2 * hidden)  # σ outputs, r then z (kept for backward)
        n = xp.new_empty(steps, batch, hidden)  # tanh outputs (n, or h̃ in the seed form)
        # unbind once: indexing in the loop would cost a Python→C++ call per view per step.
        h_t, rz_t, n_t = hs.unbind(0), rz.unbind(0), n.unbind(0)
        r_t, z_t = rz[..., :hidden].unbind(0), rz[..., hidden:].unbind(0)
        xrz_t, xn_t = xp[..., : 2 * hidden].unbind(0), xp[..., 2 * hidden :].unbind(0)
        tanh = tanh_for(batch * hidden)
        ctx.keep = keep_t = keep.unbind(0) if keep is not None else None
        if reset_after:
            # g = h W_hh^T + [0, 0, b_hn], all three gates in one product, into a buffer reused
            # every step (cache-resident); only its n part (W_hn h + b_hn) is kept for backward.
            # Keeping all of it would be a (T, B, 3H) buffer, fresh memory every call: its page
            # faults cost ~0.4 ms per MiB here (bench/kernels.py), far more than the copy.
            g = xp.new_empty(batch, 3 * hidden)
            g_rz, g_n = g[:, : 2 * hidden], g[:, 2 * hidden :]
            ghn = xp.new_empty(steps, batch, hidden)
            ghn_t = ghn.unbind(0)
            bias = gate_bias(b_hn)
            w_t = w_hh.t()
            for t in range(steps):
                torch.addmm(bias, h_t[t], w_t, out=g)
                torch.add(xrz_t[t], g_rz, out=rz_t[t]).sigmoid_()
                ghn_t[t].copy_(g_n)
                tanh(torch.addcmul(xn_t[t], r_t[t], g_n, out=n_t[t]))
                torch.lerp(n_t[t], h_t[t], z_t[t], out=h_t[t + 1])  # n + z (h − n)
                if keep_t is not None:  # zoneout: m h + (1 − m) GRU(h)
                    torch.lerp(h_t[t + 1], h_t[t], keep_t[t], out=h_t[t + 1])
            ctx.save_for_backward(hs, rz, n, ghn, w_hh)
        else:
            rh = xp.new_empty(steps, batch, hidden)  # r ⊙ h, the input of the candidate's product
            rh_t = rh.unbind(0)
            w_rz, w_n = w_hh[: 2 * hidden].t(), w_hh[2 * hidden :].t()
            for t in range(steps):
                torch.addmm(xrz_t[t], h_t[t], w_rz, out=rz_t[t]).sigmoid_()
                torch.mul(r_t[t], h_t[t], out=rh_t[t])  # reset BEFORE the product (seed form)
                tanh(torch.addmm(xn_t[t], rh_t[t], w_n, out=n_t[t]))
                torch.lerp(h_t[t], n_t[t], z_t[t], out=h_t[t + 1])  # h + z (h̃ − h)
                if keep_t is not None:
                    torch.lerp(h_t[t + 1], h_t[t], keep_t[t], out=h_t[t + 1])
            ctx.save_for_backward(hs, rz, n, rh, w_hh)
        ctx.reset_after = reset_after
        return hs[1:]

    @staticmethod
    def backward(ctx: Any, grad_hs: Tensor) -> tuple[Tensor | None, ...]:
        hs, rz, n, extra, w_hh = ctx.saved_tensors
        steps, batch, hidden = n.shape
        dxp = n.new_empty(steps, batch, 3 * hidden)  # gradient of the pre-activations
        dxp_rz_t = dxp[..., : 2 * hidden].unbind(0)
        dr_t, dz_t = dxp[..., :hidden].unbind(0), dxp[..., hidden : 2 * hidden].unbind(0)
        dn_t = dxp[..., 2 * hidden :].unbind(0)
        h_t, n_t = hs.unbind(0), n.unbind(0)
        r_t, z_t = rz[..., :hidden].unbind(0), rz[..., hidden:].unbind(0)
        g_t = grad_hs.unbind(0)
        one = n.new_ones(())
        tmp, tmp2, acc, dh_a, kept = (n.new_empty(batch, hidden) for _ in range(5))
        keep_t = ctx.keep  # zoneout: the GRU's output gets (1 − m) dh, h_{t−1} also m dh directly
        dh = g_t[steps - 1].clone()  # (B, H): dL/dh after step t, summed over every path
        w_rz, w_n = w_hh[: 2 * hidden], w_hh[2 * hidden :]  # (2H, H), (H, H): dh += dpre @ W
        if ctx.reset_after:
            ghn_t = extra.unbind(0)  # W_hn h + b_hn of every step
            dghn = n.new_empty(steps, batch, hidden)  # d(W_hn h + b_hn) = dn_pre ⊙ r
            dghn_t = dghn.unbind(0)
            for t in range(steps - 1, -1, -1):
                z, r, nt = z_t[t], r_t[t], n_t[t]
                if keep_t is not None:
                    dh.sub_(torch.mul(dh, keep_t[t], out=kept))
                torch.mul(dh, z, out=acc)  # the path h → h' directly: dh z
                torch.sub(dh, acc, out=dn_t[t])  # dn = dh (1 − z)
                dn_t[t].mul_(_one_minus_square(nt, one, tmp))  # dn_pre
                torch.sub(h_t[t], nt, out=tmp).mul_(dh)  # dz = dh (h − n)
                torch.mul(tmp, _s_one_minus_s(z, tmp2), out=dz_t[t])  # dz_pre
                torch.mul(dn_t[t], ghn_t[t], out=tmp)  # dr = dn_pre ⊙ (W_hn h + b_hn)
                torch.mul(tmp, _s_one_minus_s(r, tmp2), out=dr_t[t])  # dr_pre
                torch.mul(dn_t[t], r, out=dghn_t[t])
                if t > 0:
                    acc.add_(g_t[t - 1])
                torch.addmm(acc, dxp_rz_t[t], w_rz, out=dh_a)
                torch.addmm(dh_a, dghn_t[t], w_n, out=dh)
                if keep_t is not None:
                    dh.add_(kept)
            d_b_hn = dghn.sum((0, 1)) if ctx.needs_input_grad[3] else None
            d_w = None
            if ctx.needs_input_grad[2]:  # all steps at once: (3H, T·B) @ (T·B, H)
                h_prev = hs[:-1].flatten(0, 1)
                d_w = torch.cat([dxp[..., : 2 * hidden].flatten(0, 1).t() @ h_prev, dghn.flatten(0, 1).t() @ h_prev])
        else:
            rh = extra
            drh = n.new_empty(batch, hidden)
            for t in range(steps - 1, -1, -1):
                z, r, nt, h = z_t[t], r_t[t], n_t[t], h_t[t]
                if keep_t is not None:
                    dh.sub_(torch.mul(dh, keep_t[t], out=kept))
                torch.mul(dh, z, out=tmp)
                torch.mul(tmp, _one_minus_square(nt, one, tmp2), out=dn_t[t])  # dh̃_pre = dh z (1 − h̃²)
                torch.sub(dh, tmp, out=acc)  # the path h → h' directly: dh (1 − z)
                if t > 0:
                    acc.add_(g_t[t - 1])
                torch.sub(nt, h, out=tmp).mul_(dh)  # dz = dh (h̃ − h)
                torch.mul(tmp, _s_one_minus_s(z, tmp2), out=dz_t[t])  # dz_pre
                torch.mm(dn_t[t], w_n, out=drh)  # d(r ⊙ h)
                torch.mul(drh, h, out=tmp)  # dr = d(r ⊙ h) ⊙ h
                torch.mul(tmp, _s_one_minus_s(r, tmp2), out=dr_t[t])  # dr_pre
                acc.addcmul_(drh, r)  # the path through r ⊙ h
                torch.addmm(acc, dxp_rz_t[t], w_rz, out=dh)
                if keep_t is not None:
                    dh.add_(kept)
            d_b_hn = None
            d_w = None
            if ctx.needs_input_grad[2]:
                d_w = torch.cat(
                    [dxp[..., : 2 * hidden].flatten(0, 1).t() @ hs[:-1].flatten(0, 1),
                     dxp[..., 2 * hidden :].flatten(0, 1).t() @ rh.flatten(0, 1)]
                )
        return dxp, dh, d_w, d_b_hn, None, None


def autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no argument and means CUDA
        return device_type == "cuda" and torch.is_autocast_enabled()


def fold_biases(b_ih: Tensor, b_hh: Tensor, reset_after: bool) -> tuple[Tensor, Tensor]:
    """(bias added to x W_ih^T, b_hn kept inside the recurrence): b_hh joins b_ih where it may.

    The one place biases are folded: in the seed form all of b_hh is added before a nonlinearity;
    in the reset-after form b_hn sits inside r ⊙ (W_hn h + b_hn) and must stay there.
    """
    hidden = b_hh.shape[0] // 3
    if reset_after:
        return b_ih + torch.cat([b_hh[: 2 * hidden], b_hh.new_zeros(hidden)]), b_hh[2 * hidden :]
    return b_ih + b_hh, b_hh.new_zeros(0)


def gate_bias(b_hn: Tensor) -> Tensor:
    """[0, 0, b_hn] (3H,): added to h W_hh^T so one product gives every gate's recurrent part (reset-after)."""
    return torch.cat([b_hn.new_zeros(2 * b_hn.shape[0]), b_hn])


def _recurrence_no_grad(xp: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Tensor, reset_after: bool,
                        zoneout: float = 0.0) -> Tensor:
    """_Recurrence's forward without what backward needs: for evaluation and the prime pass.

    Nothing is kept but the outputs, and there is no autograd.Function to enter. `zoneout` p > 0: its expectation,
    h' = p h + (1 − p) GRU(x, h), which is the update gate rescaled (z' = p + (1 − p) z reset-after, (1 − p) z seed).
    """
    steps, batch, _ = xp.shape
    hidden = h0.shape[-1]
    hs = xp.new_empty(steps, batch, hidden)
    gates = xp.new_empty(batch, 3 * hidden)  # one step's work space: r, z, then n (or h̃)
    rz, r, z, n = gates[:, : 2 * hidden], gates[:, :hidden], gates[:, hidden : 2 * hidden], gates[:, 2 * hidden :]
    h_t, xrz_t, xn_t = hs.unbind(0), xp[..., : 2 * hidden].unbind(0), xp[..., 2 * hidden :].unbind(0)
    tanh = tanh_for(batch * hidden)
    h = h0
    if reset_after:
        bias = gate_bias(b_hn)
        w_t = w_hh.t()
        gh = xp.new_empty(batch, 3 * hidden)
        gh_rz, gh_n = gh[:, : 2 * hidden], gh[:, 2 * hidden :]
        for t in range(steps):
            torch.addmm(bias, h, w_t, out=gh)
            torch.add(xrz_t[t], gh_rz, out=rz).sigmoid_()
            if zoneout:
                z.mul_(1 - zoneout).add_(zoneout)
            tanh(torch.addcmul(xn_t[t], r, gh_n, out=n))
            h = torch.lerp(n, h, z, out=h_t[t])
    else:
        w_rz, w_n = w_hh[: 2 * hidden].t(), w_hh[2 * hidden :].t()
        rh = xp.new_empty(batch, hidden)
        for t in range(steps):
            torch.addmm(xrz_t[t], h, w_rz, out=rz).sigmoid_()
            if zoneout:
                z.mul_(1 - zoneout)
            torch.mul(r, h, out=rh)
            tanh(torch.addmm(xn_t[t], rh, w_n, out=n))
            h = torch.lerp(h, n, z, out=h_t[t])
    return hs


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd will record a call on these tensors."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def recurrence(
    xp: Tensor, h0: Tensor, w_hh: Tensor, b_hn: Tensor, reset_after: bool, keep: Tensor | None = None,
    zoneout: float = 0.0,
) -> Tensor:
    """One layer's recurrence, time-major: xp (T, B, 3H) → hs (T, B, H); see _Recurrence for the arguments.

    `zoneout` p > 0: evaluation's expectation (see _recurrence_no_grad), without gradients only; with them the
    expectation runs in regularize.cell_loop.
    """
    device_type = xp.device.type
    if autocast_on(device_type):
        # The hand-written backward assumes one dtype throughout; the state update stays float32
        # (a bf16 state would lose precision over hundreds of steps). The input projections and
        # the head still run in bf16 under autocast.
        with torch.autocast(device_type, enabled=False):
            return recurrence(xp.float(), h0.float(), w_hh.float(), b_hn.float(), reset_after, keep, zoneout)
    if keep is not None or needs_grad(xp, h0, w_hh, b_hn):
        if zoneout:
            raise ValueError("zoneout's expectation runs here without gradients only (regularize.cell_loop has them)")
        return _Recurrence.apply(xp.contiguous(), h0, w_hh, b_hn, reset_after, keep)
    return _recurrence_no_grad(xp, h0, w_hh, b_hn, reset_after, zoneout)
