"""Ctrl-C and SIGTERM during training keep the work: last.pt is saved, the resume command is printed, resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from generate.checkpoint import load_checkpoint
from generate.config import PROJECT_ROOT
from tests.conftest import run_cli, train_overrides

SETTINGS = ("train.max_steps=400", "train.eval_every=1000", "train.log_every=2", "train.save_every_minutes=0",
            "dataset.val_fraction=0.05", "dataset.test_fraction=0.05")


def start(small_text: Path, tmp_path: Path, run_name: str, *extra: str) -> subprocess.Popen:
    args = train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", f"run_name={run_name}", *SETTINGS, *extra)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "generate.train", *args], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(metrics: Path, process: subprocess.Popen, steps: int = 4, timeout: float = 120) -> None:
    """Until the run has logged `steps` steps (it is inside the training loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and any(json.loads(r).get("step", 0) >= steps for r in metrics.read_text().splitlines() if r):
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not reach step {steps}: {process.poll()}")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_last_pt_and_prints_the_resume_command(small_text: Path, tmp_path: Path, signum: int, code: int) -> None:
    run_dir = tmp_path / "checkpoints" / "cut"
    process = start(small_text, tmp_path, "cut")
    wait_for_steps(run_dir / "metrics.jsonl", process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err[-2000:]
    assert "Traceback" not in err
    step = load_checkpoint(run_dir / "last.pt")["step"]
    assert 4 <= step < 400 and not (run_dir / "best.pt").exists()  # saved without an evaluation
    assert f"stopped at step {step}; saved {(run_dir / 'last.pt').resolve()}" in out
    resume = next(line for line in out.splitlines() if line.startswith("resume with: "))[len("resume with: "):]
    assert resume.startswith("python -m generate.train ") and resume.endswith(" train.resume=true")


def test_resume_after_ctrl_c_is_exact_and_a_second_ctrl_c_leaves_at_once(small_text: Path, tmp_path: Path) -> None:
    short = ("train.max_steps=60", "train.eval_every=30")
    whole = run_cli("train", *train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", "run_name=whole",
                                              *SETTINGS, *short))
    assert whole.returncode == 0, whole.stderr[-2000:]

    process = start(small_text, tmp_path, "cut", *short)
    wait_for_steps(tmp_path / "checkpoints" / "cut" / "metrics.jsonl", process, steps=6)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    resumed = run_cli("train", *train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", "run_name=cut",
                                                *SETTINGS, *short, "train.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (load_checkpoint(tmp_path / "checkpoints" / name / "last.pt") for name in ("whole", "cut"))
    assert a["step"] == b["step"] == 60
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    curves = [[{k: v for k, v in json.loads(r).items() if k != "tokens_per_s"}
               for r in (tmp_path / "checkpoints" / name / "metrics.jsonl").read_text().splitlines()] for name in ("whole", "cut")]
    assert curves[0] == curves[1]  # the train-loss row that the interruption split is summed as if it had not been

    # Two signals in a row: the second leaves at once; whatever was on disk is still whole.
    process = start(small_text, tmp_path, "twice")
    wait_for_steps(tmp_path / "checkpoints" / "twice" / "metrics.jsonl", process)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err[-2000:]
    last = tmp_path / "checkpoints" / "twice" / "last.pt"
    assert not last.exists() or load_checkpoint(last)["step"] > 0
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_run_shows_the_real_error_and_leaves_no_folder(tmp_path: Path) -> None:
    result = run_cli("train", "dataset=text", f"dataset.path={tmp_path / 'missing.txt'}", f"checkpoints_dir={tmp_path / 'ck'}")
    assert result.returncode == 2 and "text file not found" in result.stderr
    assert not (tmp_path / "ck" / "missing").exists()
