"""Checkpoints, the contract between training and everything after it: data-only loads, rebuilding, export."""

from __future__ import annotations

import math
import pickle
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from generate.errors import UserError
from generate.model import GRULanguageModel
from generate.paths import SHIPPED_DIR, home, portable_paths
from generate.storage import atomic_save, remove_stale_temp_files
from generate.tokenizers import Tokenizer, tokenizer_from_dict
from generate.validate import (
    DIGEST_KEY,
    check_container,
    check_digest,
    check_spec,
    check_structure,
    check_vocabulary,
    check_weights,
    weights_digest,
)


def default_run() -> Path:
    """Your default training run's best.pt (under $GENERATE_HOME, else the current folder)."""
    return home() / "checkpoints" / "shakespeare" / "best.pt"


SHIPPED_DEFAULT = SHIPPED_DIR / "shakespeare.pt"
RUN_FILES = ("last.pt", "best.pt")  # a run's own checkpoints: export never writes over them


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
    """Load a checkpoint as plain data (weights_only=True: no code in it ever runs), checked before use.

    The zip container is checked before anything is inflated, the weights are memory-mapped (a
    file's tensors are not all read in), every weight must be dense, and a stored checksum must match.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; train one with `python -m generate.train` or fix the path")
    try:
        mmap = check_container(path)
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except UserError:
        raise
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refused to load {path}: it is not plain data ({_refusal_reason(err)}), and a checkpoint is "
            "never allowed to run code; only use checkpoints written by this toolkit"
        ) from None
    except Exception as err:  # a truncated or foreign file: zip, pickle and tensor errors of many kinds
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"cannot read checkpoint {path} ({detail}); it is damaged or not a checkpoint") from None
    check_structure(ckpt, path)
    check_digest(ckpt, path)
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
    """The checkpoint's model in eval mode (for inference); parts that do not fit are a UserError.

    The spec is checked against bounds and the weights' shapes before anything is allocated.
    """
    spec = check_spec(ckpt["model_spec"])
    check_weights(ckpt["model"], spec)
    try:
        model = GRULanguageModel(spec)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"the checkpoint's model does not fit its model_spec ({detail}); it is damaged or foreign") from None
    return model.to(device).eval()


def build_tokenizer(ckpt: dict[str, Any]) -> Tokenizer:
    """The checkpoint's tokenizer, checked against the model's vocabulary; an unknown or malformed one is a UserError."""
    try:
        tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
        size = tokenizer.vocab_size
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"the checkpoint's tokenizer cannot be rebuilt ({detail}); it is damaged or foreign") from None
    spec_size = ckpt["model_spec"].get("vocab_size") if isinstance(ckpt.get("model_spec"), dict) else None
    check_vocabulary(size, spec_size if isinstance(spec_size, int) else -1)
    return tokenizer


def with_digest(ckpt: dict[str, Any]) -> dict[str, Any]:
    """`ckpt` with the checksum of its weights added (every checkpoint this toolkit writes carries one)."""
    return {**ckpt, DIGEST_KEY: weights_digest(ckpt["model"])}


# Everything sample/evaluate read, and the model card; optimizer, scheduler, data position, RNG, carried state
# and (for an averaged run) the raw weights are dropped.
EXPORT_KEYS = ("model_spec", "tokenizer", "config", "step", "val_loss", "best_val", "card")
# What Model.card() derives from the checkpoint itself: a stored card never overrides these.
DERIVED_CARD_KEYS = ("path", "dataset", "tokenizer", "parameters", "layers", "hidden_size", "steps", "val_loss")


def device_name(device: torch.device) -> str:
    """`cpu`, or `cuda (NVIDIA H200)`: what the card says a run trained on."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def model_summary(model: GRULanguageModel) -> str:
    """`2,612,865 parameters, 2 x 512 GRU (nn.GRU), embedding 128`: what training announces and the card says."""
    spec = model.spec
    form = "nn.GRU" if spec.reset_after else "seed equations"
    if spec.regularized:  # training runs the project's own stack (generate/regularize.py), never nn.GRU itself
        locked = spec.variational_dropout and spec.dropout  # the rate; locking nothing (dropout 0) is not listed
        on = {"embedding dropout": spec.embedding_dropout, "locked dropout": locked,
              "weight drop": spec.weight_drop, "zoneout": spec.zoneout, "layer norm": spec.layer_norm}
        form = ("nn.GRU's form" if spec.reset_after else form) + "; " + ", ".join(
            name if value is True else f"{name} {value:g}" for name, value in on.items() if value)
    return f"{model.num_parameters():,} parameters, {spec.num_layers} x {spec.hidden_size} GRU ({form}), " \
           f"embedding {spec.embedding_size}"


def training_card(config: dict[str, Any], model: GRULanguageModel, tokenizer: Tokenizer, **run: Any) -> dict[str, Any]:
    """The model card a training checkpoint carries (plain data only, so weights-only loads read it).

    `run`: recipe (the command that trains it), best_val, best_step, wall_time_s, device, processes, weights.
    """
    dataset = config.get("dataset", {})
    best = run["best_val"]
    return {
        "dataset_source": str(dataset.get("source")),
        "dataset_path": dataset.get("path"),  # portable: ${project_root:}/... for the bundled sets
        "recipe": run["recipe"],
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_summary": model_summary(model),
        "tokenizer_summary": f"{tokenizer.kind}, {tokenizer.vocab_size} tokens",
        "best_val_loss": float(best) if math.isfinite(best) else None,
        "best_step": run["best_step"],
        "wall_time_s": round(float(run["wall_time_s"]), 1),
        "device": device_name(run["device"]),
        "processes": run["processes"],
        "torch": str(torch.__version__),  # a plain str: torch's TorchVersion would not load weights-only
        "weights": run["weights"],
    }


def card_progress(ckpt: dict[str, Any]) -> tuple[int | None, float]:
    """From a last.pt's card: the step of the best validation so far and the wall time spent (0 when absent)."""
    card = ckpt.get("card")
    card = card if isinstance(card, dict) else {}
    step, wall = card.get("best_step"), card.get("wall_time_s")
    step = step if isinstance(step, int) and not isinstance(step, bool) else None
    wall = float(wall) if isinstance(wall, int | float) and not isinstance(wall, bool) and math.isfinite(wall) else 0.0
    return step, max(0.0, wall)


def check_card_additions(extra: dict[str, Any]) -> None:
    """Figures added to a card at export: string keys, plain values, none of the keys Model.card() derives."""
    for key, value in extra.items():
        if not isinstance(key, str) or key in DERIVED_CARD_KEYS:
            raise UserError(f"card.{key} is derived from the checkpoint itself and cannot be set; choose another "
                            "name, e.g. +card.test_nll_per_step=3.9")
        if not _plain(value):
            raise UserError(f"card.{key} must be plain data (a number, text, true/false, or a list or mapping of them)")


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def check_export_target(source: Path, target: Path, overwrite: bool, suffix: str = ".pt") -> None:
    """Every export's rules for out=: not its source, not a folder, never a run's last.pt / best.pt, replaced only on request."""
    if source.resolve() == target.resolve():
        raise UserError("out= must differ from checkpoint=: export never overwrites its source")
    if target.is_dir():
        raise UserError(f"out={target} is a folder; give the file to write, e.g. out={target / ('model' + suffix)}")
    if target.exists() and target.name in RUN_FILES:
        raise UserError(f"out={target} is a training run's {target.name}; export never overwrites it: choose another out=")
    if target.exists() and not overwrite:
        raise UserError(f"out={target} already exists; add overwrite=true to replace it, or choose another out=")


def export_checkpoint(
    source: str | Path, target: str | Path, dtype: torch.dtype = torch.float16, overwrite: bool = False,
    card: dict[str, Any] | None = None,
) -> Path:
    """A training checkpoint stripped to what sampling and evaluation need, weights stored as `dtype`.

    Its model card is kept, with `card` (measured figures: {"test_nll_per_step": 3.9}) merged in.
    An existing `target` is replaced only with `overwrite=True`, and a run's last.pt / best.pt never.
    """
    source, target = Path(source), Path(target)
    check_card_additions(card or {})
    check_export_target(source, target, overwrite)
    ckpt = load_checkpoint(source)
    build_model(ckpt)  # refuse to export anything that would not load back
    build_tokenizer(ckpt)
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    kept = {k: ckpt[k] for k in EXPORT_KEYS if k in ckpt}
    if "config" in kept:
        kept["config"] = portable_paths(kept["config"])  # checkpoints from before paths were portable
    stored = kept.get("card") if isinstance(kept.get("card"), dict) else {}
    kept["card"] = {**stored, **(card or {}), "export_dtype": str(dtype).removeprefix("torch.")}
    if target.parent.is_dir():  # an export killed mid-write left its temporary file here
        remove_stale_temp_files(target.parent, target.name)
    atomic_save(with_digest({"model": weights, **kept}), target)
    return target
