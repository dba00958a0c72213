"""What a training step needs besides the model: AdamW groups, the learning-rate schedule, random states."""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_at(step: int, cfg: Any) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at max_steps (as a multiplier)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: Any, device: torch.device) -> torch.optim.Optimizer:
    # Weight decay on matrices only; biases, and the embedding table, are left alone.
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embedding")]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("embedding"))]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=device.type == "cuda")


def rng_state(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def apply_settings(optimizer: torch.optim.Optimizer, scheduler: Any, cfg: Any) -> None:
    """After loading a saved optimizer and schedule on resume: this run's lr and weight decay replace the saved ones."""
    groups = optimizer.param_groups
    groups[0]["weight_decay"] = cfg.weight_decay  # group 1 (biases, embedding) never decays
    scheduler.base_lrs = [cfg.lr for _ in groups]
    for group in groups:
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * lr_at(scheduler.last_epoch, cfg)
    scheduler._last_lr = [group["lr"] for group in groups]  # what get_last_lr() reports
