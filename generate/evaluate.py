"""Loss of a checkpoint on a split of its dataset, in nats and bits per token (and per time step)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import OmegaConf

from generate.checkpoint import build_model, build_tokenizer, load_checkpoint, resolve_checkpoint
from generate.data import eval_batches, load_corpus, split_for_eval
from generate.runtime import UserError, hydra_entry, resolve_device
from generate.sources import SPLITS


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
) -> EvalResult:
    """Sum the cross-entropy over every token of `docs` (each from a fresh hidden state)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
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
            count += int(mask.sum())
    model.train(was_training)
    return EvalResult(float(total), count)


def evaluate(cfg: Any) -> EvalResult:
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split!r} is not one of {', '.join(SPLITS)}")
    path, origin = resolve_checkpoint(cfg.checkpoint)
    ckpt = load_checkpoint(path)
    print(f"checkpoint: {path} ({origin})")
    device = resolve_device(cfg.device)
    model = build_model(ckpt, device)
    tokenizer = build_tokenizer(ckpt)

    dataset_cfg = OmegaConf.create(ckpt["config"]["dataset"])
    if cfg.dataset_path:
        dataset_cfg.path = cfg.dataset_path
    corpus = load_corpus(dataset_cfg)
    if corpus.tokenizer.to_dict() != tokenizer.to_dict():
        raise UserError(
            f"the dataset at {dataset_cfg.path} no longer tokenizes the way this checkpoint was trained; "
            "evaluate on the data it was trained on (dataset_path=...)"
        )
    docs = split_for_eval(corpus.splits[cfg.split], cfg.batch_size)
    if not docs:
        raise UserError(f"the {cfg.split} split of {dataset_cfg.name} is empty")
    result = evaluate_loss(model, docs, tokenizer.separator_id(), cfg.batch_size, cfg.seq_len, device)
    count_steps = getattr(tokenizer, "count_time_steps", None)
    if count_steps is not None:
        result.time_steps = sum(count_steps(doc) for doc in corpus.splits[cfg.split])
    line = (
        f"{dataset_cfg.name} {cfg.split}: {result.nats_per_token:.4f} nats/token, "
        f"{result.bits_per_token:.4f} bits/token over {result.tokens:,} tokens"
    )
    if result.nll_per_time_step is not None:
        line += f"; NLL {result.nll_per_time_step:.4f} nats per time step over {result.time_steps:,} steps"
    print(line)
    return result


main = hydra_entry(evaluate, "evaluate")

if __name__ == "__main__":
    main()
