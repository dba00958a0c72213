"""Exported checkpoints: smaller, training state gone, and they still sample and evaluate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generate.checkpoint import build_model, load_checkpoint
from generate.cli import run_export as export
from generate.cli import run_sample as sample
from generate.errors import UserError
from tests.conftest import compose_config


def test_export_keeps_what_sampling_needs_and_drops_the_rest(text_checkpoint: Path, tmp_path: Path) -> None:
    out = export(compose_config("export", [f"checkpoint={text_checkpoint}", f"out={tmp_path / 'small.pt'}"]))
    shipped = load_checkpoint(out)
    assert "optimizer" not in shipped and "rng" not in shipped and "hidden" not in shipped
    assert all(v.dtype == torch.float16 for v in shipped["model"].values() if v.is_floating_point())
    assert out.stat().st_size < text_checkpoint.stat().st_size / 2
    original, exported = build_model(load_checkpoint(text_checkpoint)), build_model(shipped)
    tokens = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(exported(tokens)[0], original(tokens)[0], atol=2e-2, rtol=0)  # float16 rounding
    (text,) = sample(compose_config("sample", [f"checkpoint={out}", f"out_dir={tmp_path / 's'}", "length=20", "quiet=true"]))
    assert len(text) == 20


def test_export_refuses_to_overwrite_its_source(text_checkpoint: Path) -> None:
    with pytest.raises(UserError, match="never overwrites"):
        export(compose_config("export", [f"checkpoint={text_checkpoint}", f"out={text_checkpoint}"]))
