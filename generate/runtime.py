"""Devices: map `auto | cpu | cuda` to a torch.device, refusing CUDA where there is none."""

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
