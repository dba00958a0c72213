"""Devices and threads: map `auto | cpu | cuda` to a torch.device (refusing CUDA where there is none); set CPU threads."""

from __future__ import annotations

from typing import Any

import torch

from generate.errors import UserError


def resolve_device(name: Any) -> torch.device:
    """Map `auto | cpu | cuda` (str or Device enum) to a torch.device, refusing cuda without CUDA."""
    name = getattr(name, "value", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was asked for but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def use_threads(threads: int) -> None:
    """torch's CPU threads for this process: `threads` > 0 sets them, 0 leaves torch's default (all cores).

    On a 2-core machine shared with other work, every parallel region waits for a descheduled
    thread, so 1 thread trains several times faster than torch's default (docs/performance.md).
    """
    if threads < 0:
        raise UserError(f"threads={threads} must be >= 1 (or 0 for torch's default)")
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
