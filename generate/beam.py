"""Beam search over a GRU language model: keep the `beam_size` most likely continuations at every step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


@torch.inference_mode()
def beam_search(
    model: torch.nn.Module, prime: list[int], cfg: Any, device: torch.device, hidden: Tensor | None = None
) -> Tensor:
    """Continue `prime` by cfg.length tokens → (cfg.num_samples, length), each row the best beam found.

    Beams are ranked by their log-likelihood under the model (temperature 1). How a beam is
    extended depends on the sampling settings, as in Magenta's stochastic beam search: with
    temperature 0 each beam proposes its `beam_size` most likely next tokens (classic beam
    search, the same for every sample); otherwise each beam draws `beam_size` distinct tokens from
    the temperature / top-k / top-p distribution, so the samples differ and follow `seed`.

    `hidden` (L, 1, H) is the state the prime is read from (zeros when None, as in `generate`).
    """
    from generate.sample import filter_logits  # one definition of the sampling filters

    n, width, length = cfg.num_samples, cfg.beam_size, cfg.length
    model.eval()
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    tokens = torch.tensor(prime, dtype=torch.long, device=device).expand(n, -1)
    if hidden is not None:
        hidden = hidden.to(device).expand(-1, n, -1).contiguous()
    logits, hidden = model(tokens, hidden)  # (N, P, V), (L, N, H)
    # Every sample starts with `width` copies of the primed state; all but one are masked at first
    # so the first expansion does not pick the same token `width` times.
    logits = logits[:, -1].repeat_interleave(width, 0)  # (N*W, V)
    hidden = hidden.repeat_interleave(width, 1)  # (L, N*W, H)
    scores = torch.full((n, width), float("-inf"), device=device)
    scores[:, 0] = 0.0
    history = torch.empty(n, width, 0, dtype=torch.long, device=device)
    vocab = logits.shape[-1]
    picks = min(width, vocab)
    for step in range(length):
        log_probs = logits.float().log_softmax(-1)  # (N*W, V)
        if cfg.temperature == 0:
            proposals = log_probs.topk(picks, dim=-1).indices
        else:
            probs = filter_logits(logits.float(), cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
            allowed = int((probs > 0).sum(-1).min())
            proposals = torch.multinomial(probs, min(picks, allowed), generator=generator)  # (N*W, K)
        k = proposals.shape[-1]
        candidate = scores.view(n * width, 1) + log_probs.gather(-1, proposals)  # (N*W, K)
        best, flat = candidate.view(n, width * k).topk(width, dim=-1)  # (N, W)
        parent = flat // k  # which beam each survivor extends
        chosen = proposals.view(n, width * k).gather(-1, flat)  # (N, W)
        history = torch.cat([history.gather(1, parent.unsqueeze(-1).expand(-1, -1, history.shape[-1])), chosen.unsqueeze(-1)], -1)
        scores = best
        if step + 1 == length:
            break
        rows = (parent + torch.arange(n, device=device).unsqueeze(1) * width).flatten()  # parent rows in N*W
        logits, hidden = model(chosen.view(n * width, 1), hidden[:, rows])
        logits = logits[:, -1]
    return history[:, 0]  # topk keeps beams sorted: column 0 is the most likely
