"""Checkpoints are untrusted input: each part is checked against sane bounds and against the others before use."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import torch

from generate.errors import UserError
from generate.model import GRULanguageModel, ModelSpec
from generate.ranges import MAX_PARAMETERS, MODEL, Between, range_problems

SPEC_RANGES = {**MODEL, "vocab_size": Between(1, 2**24)}
BOOL_FIELDS = ("reset_after", "tie_weights", "variational_dropout", "layer_norm")
DIGEST_KEY = "weights_sha256"  # stored beside the weights; a checkpoint without it predates checksums


def check_container(path: Path) -> bool:
    """Refuse a file whose zip entries would inflate past its own size (torch never compresses them).

    Returns whether the file is torch's zip format (which can be memory-mapped).
    """
    if not zipfile.is_zipfile(path):
        return False
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {path} ({err}); it is damaged or not a checkpoint") from None
    compressed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    declared = sum(e.file_size for e in entries)
    if compressed or declared > size:
        raise UserError(
            f"refused to load {path}: it declares {declared:,} bytes in {size:,} "
            f"({len(compressed)} compressed entries; torch never writes any): a damaged or hostile file"
        )
    return True


def check_structure(ckpt: Any, path: Path) -> None:
    """The top-level parts have the right types, and every weight is a real, dense tensor (no stride tricks)."""
    if not isinstance(ckpt, dict) or not {"model", "model_spec", "tokenizer"} <= ckpt.keys():
        raise UserError(f"{path} is not a checkpoint written by this toolkit (missing model/model_spec/tokenizer)")
    kinds = {"model": dict, "model_spec": dict, "tokenizer": dict, "config": dict}
    for key, kind in kinds.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise UserError(f"{path}: its {key} is a {type(ckpt[key]).__name__}, not a mapping; it is damaged or foreign")
    for name, tensor in ckpt["model"].items():
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"{path}: weight {name!r} is not a tensor; the checkpoint is damaged or foreign")
        needed = (tensor.storage_offset() + tensor.numel()) * tensor.element_size()
        if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() < needed:
            raise UserError(
                f"{path}: weight {name!r} of shape {tuple(tensor.shape)} is not stored densely (it would expand "
                f"{tensor.untyped_storage().nbytes():,} stored bytes); a damaged or hostile checkpoint is refused"
            )


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every weight's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_digest(ckpt: dict[str, Any], path: Path) -> None:
    """A stored checksum that no longer matches the weights (a bit flip, a torn copy) is a one-line error."""
    stored = ckpt.get(DIGEST_KEY)
    if stored is None:
        return
    if stored != weights_digest(ckpt["model"]):
        raise UserError(
            f"{path}: the weights do not match their stored checksum; the file was damaged after it was "
            "written (disk or copy error): use another copy"
        )


def check_spec(raw: dict[str, Any]) -> ModelSpec:
    """The stored model spec: known keys, every size in range, and a model of at most MAX_PARAMETERS."""
    known = {f.name for f in fields(ModelSpec)}  # a checkpoint from before a field existed lacks it: its default
    unknown = sorted(set(raw) - known)
    if unknown or "vocab_size" not in raw:
        raise UserError(f"the checkpoint's model_spec has unknown or missing keys ({', '.join(unknown) or 'vocab_size'})")
    problems = range_problems(raw, SPEC_RANGES, "model_spec.")
    problems += [f"model_spec.{k} must be true or false" for k in BOOL_FIELDS
                 if k in raw and not isinstance(raw[k], bool)]
    if problems:
        raise UserError(f"the checkpoint's model is out of range: {'; '.join(problems)}")
    spec = ModelSpec(**raw)
    count = parameter_count(spec)
    if count > MAX_PARAMETERS:
        raise UserError(f"the checkpoint's model_spec declares {count:,} parameters (at most {MAX_PARAMETERS:,})")
    return spec


def with_defaults(raw: Any) -> Any:
    """A stored spec dict with the defaults of the fields it predates (a spec written before they existed)."""
    if not isinstance(raw, dict):
        return raw
    return {**{f.name: f.default for f in fields(ModelSpec) if f.default is not MISSING}, **raw}


def parameter_count(spec: ModelSpec) -> int:
    """How many weights `spec` makes, counted without allocating any."""
    e, h, v, layers = spec.embedding_size, spec.hidden_size, spec.vocab_size, spec.num_layers
    gru = 3 * h * (e + h + 2) + (layers - 1) * 3 * h * (2 * h + 2)
    norms = 6 * h * layers if spec.layer_norm else 0  # the layer-norm gains: 3H + 3H (or 3H + 2H + H) a layer
    return v * e + gru + norms + (0 if spec.tie_weights else v * h) + v


def check_weights(weights: dict[str, torch.Tensor], spec: ModelSpec) -> None:
    """Every weight the spec needs is there with the spec's shape (the model is built on the meta device: no memory)."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(t.shape) for k, t in GRULanguageModel(spec).state_dict().items()}
    except ValueError as err:
        raise UserError(f"the checkpoint's model_spec is inconsistent ({err})") from None
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [f"{k} {tuple(weights[k].shape)} (spec: {expected[k]})" for k in sorted(expected)
             if k in weights and tuple(weights[k].shape) != expected[k]]
    odd = [k for k in sorted(set(expected) & set(weights)) if not weights[k].is_floating_point()]
    if missing or unexpected or wrong or odd:
        parts = [f"missing {', '.join(missing[:3])}" if missing else "", f"unexpected {', '.join(unexpected[:3])}"
                 if unexpected else "", f"wrong shape {', '.join(wrong[:2])}" if wrong else "",
                 f"not floating point {', '.join(odd[:3])}" if odd else ""]
        raise UserError(f"the checkpoint's weights do not fit its model_spec ({'; '.join(p for p in parts if p)})")


def check_vocabulary(tokenizer_size: int, spec_size: int) -> None:
    """The tokenizer must name exactly the rows of the embedding and the head."""
    if tokenizer_size != spec_size:
        raise UserError(
            f"the checkpoint's tokenizer has {tokenizer_size} tokens but its model has {spec_size}; "
            "it is damaged or its parts come from different models"
        )


RESUME_KEYS = ("optimizer", "scheduler", "step", "best_val", "data_state", "rng", "hidden", "config")


def check_training_state(
    ckpt: dict[str, Any], path: Path, spec: dict[str, Any], tokenizer: dict[str, Any], learned: tuple[str, ...] = ()
) -> None:
    """A last.pt holds the training state a resume reads, of the types it reads, for this run's model and data.

    `learned`: tokenizer keys taken from the data (they may be missing from a run saved by an older version).

    The contents of each part are checked as they are restored.
    """
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing or not isinstance(ckpt["rng"], list):
        raise UserError(
            f"{path} holds a model but not the training state to resume from "
            f"({', '.join(missing) or 'per-process state'} missing); start a new run_name=... "
            "(sample and evaluate can still use this file)"
        )
    if with_defaults(ckpt["model_spec"]) != with_defaults(spec):
        raise UserError(f"{path} holds a different model ({ckpt['model_spec']}); resume with the same model.* settings")
    if not isinstance(ckpt["tokenizer"], dict) or _without(ckpt["tokenizer"], learned) != _without(tokenizer, learned):
        raise UserError(f"{path} was trained on a different dataset; resume with the same dataset.* settings")
    problems = []
    if isinstance(ckpt["step"], bool) or not isinstance(ckpt["step"], int) or ckpt["step"] < 0:
        problems.append(f"step is {ckpt['step']!r}, not a count")
    if isinstance(ckpt["best_val"], bool) or not isinstance(ckpt["best_val"], int | float):
        problems.append(f"best_val is {type(ckpt['best_val']).__name__}, not a number")
    train = ckpt["config"].get("train") if isinstance(ckpt["config"], dict) else None
    if not isinstance(train, dict) or not all(isinstance(train.get(k), int) for k in ("batch_size", "seq_len")):
        problems.append("config.train lacks its batch_size and seq_len")
    per_rank = [ckpt[k] for k in ("rng", "data_state", "hidden")]
    if not all(isinstance(v, list) and v for v in per_rank) or len({len(v) for v in per_rank}) != 1:
        problems.append("rng, data_state and hidden are not one entry per process")
    else:
        if not all(isinstance(r, dict) and isinstance(r.get("torch"), torch.Tensor) for r in ckpt["rng"]):
            problems.append("rng holds no torch generator state")
        if not all(h is None or isinstance(h, torch.Tensor) for h in ckpt["hidden"]):
            problems.append("hidden holds something other than tensors")
        if not all(isinstance(s, dict) for s in ckpt["data_state"]):
            problems.append("data_state holds something other than mappings")
    optimizer = ckpt["optimizer"]
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list):
        problems.append("optimizer is not an optimizer's state")
    if not isinstance(ckpt["scheduler"], dict):
        problems.append("scheduler is not a schedule's state")
    if problems:
        raise UserError(f"{path} holds a damaged training state ({'; '.join(problems)}); resume from a good copy "
                        "or start a new run_name=...")


def check_optimizer_state(saved: dict[str, Any], params: list[torch.Tensor], path: Path) -> None:
    """Each saved moment has the shape of the parameter it belongs to (torch would only fail at the next step)."""
    for index, state in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(state, dict):
            raise UserError(f"{path}: the optimizer state names parameter {index!r}, which this model lacks")
        for key, value in state.items():
            if key == "step":
                continue
            if not isinstance(value, torch.Tensor) or value.shape != params[index].shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise UserError(
                    f"{path}: the optimizer's {key} for parameter {index} is {shape}, not "
                    f"{tuple(params[index].shape)}; the training state is damaged: resume from a good copy"
                )


def check_size(spec: ModelSpec) -> None:
    """Refuse a model too large to build, before allocating it."""
    if parameter_count(spec) > MAX_PARAMETERS:
        raise ValueError(f"the model would have {parameter_count(spec):,} parameters; at most {MAX_PARAMETERS:,}: "
                         "lower model.hidden_size or model.num_layers")


def restore_part(path: Path, part: str, fn: Callable[[], Any]) -> None:
    """fn(), with any failure turned into one line naming the damaged part of the checkpoint at `path`."""
    try:
        fn()
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError, OverflowError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise UserError(f"{path}: its {part} is damaged ({detail}); resume from a good copy "
                        "or start a new run_name=...") from None


def restore_stream(stream: Any, state: dict[str, Any]) -> None:
    """Set a training stream's position and read one batch from it (then set it again): a bad position fails here."""
    stream.load_state_dict(state)
    inputs, _, _ = stream.next_batch()
    if tuple(inputs.shape) != (stream.batch_size, stream.seq_len):
        raise ValueError(f"it yields batches of {tuple(inputs.shape)}")
    stream.load_state_dict(state)


def check_shape(tensor: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    """A carried state is None or a floating-point tensor of exactly `shape`."""
    if tensor is not None and (tuple(tensor.shape) != shape or not tensor.is_floating_point()):
        raise ValueError(f"{tuple(tensor.shape)} {tensor.dtype}, not {shape}")


def _without(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}
