"""Checkpoints: atomic saves, data-only loads, and rebuilding the model and tokenizer from one."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from generate.config import PROJECT_ROOT
from generate.model import GRULanguageModel, ModelSpec
from generate.runtime import UserError
from generate.tokenizers import Tokenizer, tokenizer_from_dict

DEFAULT_RUN = Path("checkpoints") / "shakespeare" / "best.pt"  # relative to where the user runs
SHIPPED_DEFAULT = PROJECT_ROOT / "checkpoints" / "pretrained" / "shakespeare.pt"


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash or full disk at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint as plain data (weights_only=True: no code in it ever runs)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; train one with `python -m generate.train` or fix the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"refused to load {path}: it holds more than plain data ({first_line[:160]}); "
            "only load checkpoints written by this toolkit"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {path}: {str(err).splitlines()[0][:160]}") from None
    if not isinstance(ckpt, dict) or not {"model", "model_spec", "tokenizer"} <= ckpt.keys():
        raise UserError(f"{path} is not a checkpoint written by this toolkit (missing model/model_spec/tokenizer)")
    return ckpt


def resolve_checkpoint(path: str | None) -> tuple[Path, str]:
    """The checkpoint to use and a phrase saying where it came from."""
    if path:
        return Path(path), "given"
    if DEFAULT_RUN.is_file():
        return DEFAULT_RUN, "your default training run"
    if SHIPPED_DEFAULT.is_file():
        return SHIPPED_DEFAULT, "the shipped pretrained Shakespeare model"
    raise UserError(
        f"no checkpoint given, no {DEFAULT_RUN} and no shipped model at {SHIPPED_DEFAULT}; "
        "pass checkpoint=PATH or train with `python -m generate.train`"
    )


def build_model(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> GRULanguageModel:
    model = GRULanguageModel(ModelSpec(**ckpt["model_spec"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device)


def build_tokenizer(ckpt: dict[str, Any]) -> Tokenizer:
    return tokenizer_from_dict(ckpt["tokenizer"])
