"""Checkpoints: atomic saves, data-only loads, and rebuilding the model and tokenizer from one."""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from generate.config import PROJECT_ROOT
from generate.model import GRULanguageModel, ModelSpec
from generate.runtime import UserError
from generate.tokenizers import Tokenizer, tokenizer_from_dict

DEFAULT_RUN = Path("checkpoints") / "shakespeare" / "best.pt"  # relative to where the user runs
SHIPPED_DEFAULT = PROJECT_ROOT / "checkpoints" / "pretrained" / "shakespeare.pt"
TMP_SUFFIX = ".tmp"  # atomic_save's temporary files: .<name>.<random>.tmp next to the target

# mkstemp makes 0600 files; a checkpoint gets the mode any other file would (0666 minus the umask).
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash or full disk at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temporary files left by saves that were killed mid-write (SIGKILL skips cleanup).

    Only call this while holding the folder's RunLock: another writer's live temp file looks the same.
    """
    stale = [p for p in folder.glob(f".*.pt.*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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
