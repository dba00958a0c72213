"""Shared test helpers: compose real configs (as the CLI does) and run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from generate.config import CONFIG_DIR, PROJECT_ROOT, register_configs

register_configs()
# Test models are tiny: one thread each is faster than two fighting for a shared 2-core machine.
torch.set_num_threads(1)


def compose_config(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@pytest.fixture
def small_text(tmp_path: Path) -> Path:
    """A few KB of text: enough for train/val/test windows of the smoke config."""
    lines = [f"{name}: the {word} is {adj} and {word}s are {adj}.\n" for name in ("ANNA", "BEN", "CARL")
             for word in ("cat", "dog", "bird", "fish") for adj in ("small", "loud", "kind", "quick")]
    path = tmp_path / "small.txt"
    path.write_text("".join(lines) * 6, encoding="utf-8")
    return path


def train_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """The smoke bundle, writing checkpoints and caches under tmp_path."""
    return [
        "train=smoke",
        f"checkpoints_dir={tmp_path / 'checkpoints'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "model.hidden_size=32",
        "model.embedding_size=16",
        "model.num_layers=2",
        "run_name=${dataset.name}",  # tests name folders by dataset; the smoke bundle's own is <name>-smoke
        *extra,
    ]


def run_cli(
    module: str, *args: str, cwd: Path | None = None, timeout: int = 300, kill_after_save: int = 0
) -> subprocess.CompletedProcess:
    """`python -m generate.<module> args...` as a user types it (train: SIGKILLed after a save when asked)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    command = ["-m", f"generate.{module}"]
    if kill_after_save:
        assert module == "train"
        command = ["-m", "tests.kill_after_save", str(kill_after_save)]
    return subprocess.run(
        [sys.executable, *command, *args],
        capture_output=True,
        text=True,
        cwd=cwd or PROJECT_ROOT,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def text_checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained for a few steps on a small text; shared by the sample/evaluate tests."""
    from generate.cli import run_train as train

    root = tmp_path_factory.mktemp("text_ckpt")
    text = root / "corpus.txt"
    text.write_text(("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n") * 40)
    train(compose_config("config", train_overrides(root, "dataset=text", f"dataset.path={text}", "run_name=tiny")))
    return root / "checkpoints" / "tiny" / "best.pt"
