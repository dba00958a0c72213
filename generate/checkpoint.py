"""Checkpoints, the contract between training and everything after it: data-only loads, rebuilding, export."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from generate.errors import UserError
from generate.model import GRULanguageModel, ModelSpec
from generate.paths import SHIPPED_DIR, home, portable_paths
from generate.storage import atomic_save
from generate.tokenizers import Tokenizer, tokenizer_from_dict


def default_run() -> Path:
    """Your default training run's best.pt (under $GENERATE_HOME, else the current folder)."""
    return home() / "checkpoints" / "shakespeare" / "best.pt"


SHIPPED_DEFAULT = SHIPPED_DIR / "shakespeare.pt"
def _refusal_reason(err: Exception) -> str:
    """The line of torch's weights-only refusal that names what was refused.

    torch's message opens with advice to retry with weights_only=False, which is exactly what must
    not be done with a file from a stranger, so only the specific reason is passed on.
    """
    for line in str(err).splitlines():
        line = line.strip()
        if "GLOBAL" in line or "Unsupported" in line:
            return line.replace("WeightsUnpickler error: ", "")[:160]
    return "objects that are not plain data"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint as plain data (weights_only=True: no code in it ever runs)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; train one with `python -m generate.train` or fix the path")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refused to load {path}: it is not plain data ({_refusal_reason(err)}), and a checkpoint is "
            "never allowed to run code; only use checkpoints written by this toolkit"
        ) from None
    except Exception as err:  # a truncated or foreign file: zip, pickle and tensor errors of many kinds
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"cannot read checkpoint {path} ({detail}); it is damaged or not a checkpoint") from None
    if not isinstance(ckpt, dict) or not {"model", "model_spec", "tokenizer"} <= ckpt.keys():
        raise UserError(f"{path} is not a checkpoint written by this toolkit (missing model/model_spec/tokenizer)")
    return ckpt


def shipped_models() -> dict[str, Path]:
    """The pretrained models that come with the toolkit, by name (shakespeare, bach, jsb, ...)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.pt"))}


def resolve_checkpoint(path: str | Path | None) -> tuple[Path, str]:
    """The checkpoint to use and a phrase saying where it came from: a path, a shipped model's name, or the default."""
    if path:
        shipped = shipped_models()
        if str(path) in shipped and not Path(path).exists():
            return shipped[str(path)], f"the shipped {path} model"
        return Path(path), "given"
    if default_run().is_file():
        return default_run(), "your default training run"
    if SHIPPED_DEFAULT.is_file():
        return SHIPPED_DEFAULT, "the shipped pretrained Shakespeare model"
    raise UserError(
        f"no checkpoint given, no {default_run()} and no shipped model at {SHIPPED_DEFAULT}; "
        "pass checkpoint=PATH or train with `python -m generate.train`"
    )


def build_model(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> GRULanguageModel:
    """The checkpoint's model in eval mode (for inference); parts that do not fit are a UserError."""
    try:
        model = GRULanguageModel(ModelSpec(**ckpt["model_spec"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"the checkpoint's model does not fit its model_spec ({detail}); it is damaged or foreign") from None
    return model.to(device).eval()


def build_tokenizer(ckpt: dict[str, Any]) -> Tokenizer:
    """The checkpoint's tokenizer; an unknown or malformed one is a UserError."""
    try:
        return tokenizer_from_dict(ckpt["tokenizer"])
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"the checkpoint's tokenizer cannot be rebuilt ({detail}); it is damaged or foreign") from None


# Everything sample/evaluate read; optimizer, scheduler, data position, RNG and carried state are dropped.
EXPORT_KEYS = ("model_spec", "tokenizer", "config", "step", "val_loss", "best_val")


def export_checkpoint(source: str | Path, target: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """A training checkpoint stripped to what sampling and evaluation need, weights stored as `dtype`."""
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise UserError("out= must differ from checkpoint=: export never overwrites its source")
    ckpt = load_checkpoint(source)
    build_model(ckpt)  # refuse to export anything that would not load back
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    kept = {k: ckpt[k] for k in EXPORT_KEYS if k in ckpt}
    if "config" in kept:
        kept["config"] = portable_paths(kept["config"])  # checkpoints from before paths were portable
    atomic_save({"model": weights, **kept}, target)
    return target
