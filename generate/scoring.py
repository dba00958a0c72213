"""Scoring: summed cross-entropy in nats and bits per token (and per time step for polyphonic music)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from generate.data import eval_batches, split_for_eval
from generate.errors import UserError
from generate.tokenizers import Tokenizer

BAR_TOKENS = 1 << 20  # a split this big takes long enough on a CPU to deserve a progress bar


@dataclass
class EvalResult:
    nll: float  # summed over scored tokens, nats
    tokens: int
    time_steps: int = 0  # for tokenizers with a notion of time steps (polyphonic music)

    @property
    def nats_per_token(self) -> float:
        return self.nll / max(self.tokens, 1)

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / math.log(2)

    @property
    def nll_per_time_step(self) -> float | None:
        return self.nll / self.time_steps if self.time_steps else None


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    docs: list[list[int]],
    separator: int | None,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    autocast: Any = None,
    progress: str = "",
) -> EvalResult:
    """Sum the cross-entropy over every token of `docs` (each from a fresh hidden state); a bar when `progress` names one."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    scored_total = sum(len(d) for d in docs) - (len(docs) if separator is None else 0)  # the first token is context
    bar = tqdm(total=scored_total, desc=progress, unit="tok", unit_scale=True, disable=not progress,
               dynamic_ncols=True)
    for windows in eval_batches(docs, batch_size, seq_len, separator):
        hidden = None
        for inputs, targets, mask, _ in windows:
            inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
            with autocast or nullcontext():
                logits, hidden = model(inputs, hidden)  # (B, T, V)
            losses = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), reduction="none"
            )
            total += (losses * mask.flatten()).sum(dtype=torch.float64)
            scored = int(mask.sum())
            count += scored
            bar.update(scored)
    bar.close()
    model.train(was_training)
    return EvalResult(float(total), count)


def score_documents(
    model: torch.nn.Module, tokenizer: Tokenizer, docs: list[list[int]], batch_size: int = 64, seq_len: int = 256,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """Score whole documents of one split (a text stream is cut into `batch_size` chunks scored in parallel)."""
    chunks = split_for_eval(docs, batch_size)
    if not chunks:
        raise UserError("there is nothing to score: the split is empty")
    total = sum(len(c) for c in chunks)
    result = evaluate_loss(model, chunks, tokenizer.separator_id(), batch_size, seq_len, torch.device(device),
                           progress="scoring" if total >= BAR_TOKENS else "")
    count_steps = getattr(tokenizer, "count_time_steps", None)  # only tokenizers with time steps have it
    if count_steps is not None:
        result.time_steps = sum(count_steps(doc) for doc in docs)
    return result
