"""train(cfg) end to end on a small text: artifacts, checkpoint contents, learning, both GRU forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from generate.checkpoint import build_model, build_tokenizer, load_checkpoint
from generate.cli import run_train as train
from generate.errors import UserError
from generate.optim import lr_at
from tests.conftest import compose_config, run_cli, train_overrides


def text_run(small_text: Path, tmp_path: Path, *extra: str):
    return compose_config("config", train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", *extra))


@pytest.mark.parametrize("reset_after", [True, False])
def test_training_writes_checkpoints_metrics_and_plot_and_learns(small_text: Path, tmp_path: Path, reset_after: bool) -> None:
    cfg = text_run(small_text, tmp_path, f"model.reset_after={str(reset_after).lower()}", "train.max_steps=40")
    summary = train(cfg)
    run_dir = tmp_path / "checkpoints" / "text"
    assert Path(summary.run_dir) == run_dir
    for name in ("last.pt", "best.pt", "metrics.jsonl", "loss.png"):
        assert (run_dir / name).is_file(), name

    ckpt = load_checkpoint(run_dir / "last.pt")
    for key in ("model", "model_spec", "tokenizer", "optimizer", "scheduler", "step", "rng", "data_state", "config"):
        assert key in ckpt, key
    assert ckpt["step"] == 40 and ckpt["model_spec"]["reset_after"] is reset_after
    assert ckpt["config"]["model"]["hidden_size"] == 32  # the resolved config travels along

    # Uniform guessing costs ln(vocab) nats; 40 steps on a repetitive text must do much better.
    vocab = build_tokenizer(ckpt).vocab_size
    assert summary.best_val < 0.85 * math.log(vocab)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val_rows] == [10, 20, 30, 40]  # eval_every=10 in the smoke bundle
    assert all(abs(r["val_bits"] - r["val_loss"] / math.log(2)) < 1e-9 for r in val_rows)
    assert min(r["val_loss"] for r in val_rows) == pytest.approx(load_checkpoint(run_dir / "best.pt")["val_loss"])

    model = build_model(ckpt)  # rebuilds from the checkpoint alone
    logits, hidden = model(torch.zeros(1, 3, dtype=torch.long))
    assert logits.shape == (1, 3, vocab) and hidden.shape == (2, 1, 32)


def test_rerun_without_resume_refuses_to_overwrite(small_text: Path, tmp_path: Path) -> None:
    train(text_run(small_text, tmp_path, "train.max_steps=5", "train.eval_every=5"))
    with pytest.raises(UserError, match="train.resume=true"):
        train(text_run(small_text, tmp_path, "train.max_steps=5", "train.eval_every=5"))
    # Resuming with a larger step budget continues where the run stopped.
    summary = train(text_run(small_text, tmp_path, "train.max_steps=10", "train.eval_every=5", "train.resume=true"))
    assert summary.step == 10


def test_learning_rate_warms_up_then_decays_by_cosine() -> None:
    cfg = compose_config("config", ["train.max_steps=100", "train.warmup_steps=10", "train.min_lr_ratio=0.1"]).train
    values = [lr_at(step, cfg) for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:]))
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_multirun_trains_one_folder_per_job(small_text: Path, tmp_path: Path) -> None:
    result = run_cli(
        "train", "-m", "model.hidden_size=16,24", "model.embedding_size=8", "train=smoke", "train.max_steps=4",
        "dataset=text", f"dataset.path={small_text}", f"dataset.cache_dir={tmp_path / 'cache'}",
        f"checkpoints_dir={tmp_path / 'checkpoints'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for hidden in (16, 24):
        # dataset=text takes its run name from the file (small.txt), train=smoke adds -smoke
        ckpt = load_checkpoint(tmp_path / "checkpoints" / "small-smoke" / f"model.hidden_size={hidden}" / "best.pt")
        assert ckpt["model_spec"]["hidden_size"] == hidden
