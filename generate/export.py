"""export(cfg): a checkpoint stripped to what sampling and evaluation need, for sharing or shipping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from generate.checkpoint import atomic_save, build_model, load_checkpoint
from generate.config import portable_paths
from generate.runtime import UserError, hydra_entry

# Everything sample/evaluate read; optimizer, scheduler, data position, RNG and carried state are dropped.
KEPT_KEYS = ("model_spec", "tokenizer", "config", "step", "val_loss", "best_val")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export(cfg: Any) -> Path:
    if cfg.dtype not in DTYPES:
        raise UserError(f"dtype={cfg.dtype!r} is not one of {', '.join(DTYPES)}")
    if not cfg.checkpoint or not cfg.out:
        raise UserError("give both checkpoint=PATH (a training checkpoint) and out=PATH (the file to write)")
    source, target = Path(cfg.checkpoint), Path(cfg.out)
    if source.resolve() == target.resolve():
        raise UserError("out= must differ from checkpoint=: export never overwrites its source")
    ckpt = load_checkpoint(source)
    build_model(ckpt)  # refuse to export anything that would not load back
    dtype = DTYPES[cfg.dtype]
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    kept = {k: ckpt[k] for k in KEPT_KEYS if k in ckpt}
    if "config" in kept:
        kept["config"] = portable_paths(kept["config"])  # checkpoints from before paths were portable
    atomic_save({"model": weights, **kept}, target)
    size_mb = target.stat().st_size / 1e6
    print(f"wrote {target} ({size_mb:.1f} MB, {cfg.dtype} weights; training state dropped)")
    return target


main = hydra_entry(export, "export")

if __name__ == "__main__":
    main()
