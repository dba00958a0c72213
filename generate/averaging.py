"""Weight averaging: an exponential moving average of the weights (torch's AveragedModel) for evaluation and saving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from generate.errors import UserError
from generate.validate import check_structure

# The checkpoint keys of an averaged run: "model" holds the average (what sample, evaluate and export use),
# these hold the weights the optimizer steps and how many steps the average has seen (an exact resume needs both).
RAW_KEY, COUNT_KEY = "train_weights", "ema_count"


def warm_decay(decay: float, count: int) -> float:
    """The decay after `count` updates: min(decay, (1 + n) / (10 + n)), so early, untrained weights fade fast
    instead of dominating the average for ~1/(1 - decay) steps."""
    return min(decay, (1 + count) / (10 + count))


def make_average(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An EMA copy of `model` (None when decay is 0), updated by `.update_parameters(model)` after each step."""
    if decay <= 0:
        return None

    def ema(averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        # count is how many updates the average has had; the first one (a copy) is AveragedModel's own.
        torch._foreach_lerp_(averaged, current, 1.0 - warm_decay(decay, int(count)))

    average = AveragedModel(model, multi_avg_fn=ema, use_buffers=True)
    average.module.eval()  # never trained itself; evaluation puts it in eval mode anyway
    return average


def evaluated(model: torch.nn.Module, average: AveragedModel | None) -> torch.nn.Module:
    """The weights validation scores and checkpoints carry as "model": the average when there is one."""
    return model if average is None else average.module


def weight_entries(model: torch.nn.Module, average: AveragedModel | None) -> dict[str, Any]:
    """The checkpoint's weights: "model" (evaluated), and with an average also the raw weights and its count."""
    if average is None:
        return {"model": model.state_dict()}
    return {"model": average.module.state_dict(), RAW_KEY: model.state_dict(), COUNT_KEY: int(average.n_averaged)}


def restore_weights(model: torch.nn.Module, average: AveragedModel | None, ckpt: dict[str, Any], path: Path,
                    restore: Callable[[str, Callable[[], Any]], None], say: Callable[[str], None]) -> None:
    """Put back the raw weights and, when this run averages, the average: together they make the resume exact.

    A last.pt saved without averaging starts the average afresh from its weights (said); one saved with it
    continues without averaging from its raw weights when train.ema_decay is now 0.
    """
    if RAW_KEY in ckpt:  # untrusted like "model": a mapping of real, dense tensors
        if not isinstance(ckpt[RAW_KEY], dict):
            raise UserError(f"{path}: its {RAW_KEY} is not a mapping; resume from a good copy "
                            "or start a new run_name=...")
        check_structure({**ckpt, "model": ckpt[RAW_KEY]}, path)
    restore("weights", lambda: model.load_state_dict(ckpt.get(RAW_KEY, ckpt["model"])))
    if average is None:
        return
    if RAW_KEY not in ckpt:
        say("note: last.pt holds no weight average (train.ema_decay was 0); the average starts from here")
        return

    def load_average() -> None:
        count = ckpt[COUNT_KEY]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{COUNT_KEY} is {count!r}, not a count")
        average.module.load_state_dict(ckpt["model"])
        average.n_averaged.fill_(count)

    restore("weight average", load_average)
