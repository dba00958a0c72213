"""The real command line in a subprocess: contract commands and the one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, train_overrides


def assert_one_line_error(result, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_train_sample_evaluate_round_trip(small_text: Path, tmp_path: Path) -> None:
    trained = run_cli("train", *train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}"))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "bits/token" in trained.stdout and "nats/token" in trained.stdout
    ckpt = tmp_path / "checkpoints" / "text" / "best.pt"

    sampled = run_cli("sample", f"checkpoint={ckpt}", "temperature=0.8", "length=40", "prompt=ANNA:", f"out_dir={tmp_path / 's'}")
    assert sampled.returncode == 0, sampled.stderr
    written = (tmp_path / "s" / "sample_0.txt").read_text()
    assert written.startswith("ANNA:") and written in sampled.stdout
    assert "(given)" in sampled.stderr  # says which checkpoint it used

    evaluated = run_cli("evaluate", f"checkpoint={ckpt}", "split=test")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "nats/token" in evaluated.stdout and "bits/token" in evaluated.stdout


@pytest.mark.parametrize(
    "make_file, needle",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_text("   \n"), "empty"),
        (lambda p: p.write_bytes(b"caf\xe9 au lait\n" * 100), "not UTF-8"),
        (lambda p: p.write_text("too short"), "fewer than one training window"),
    ],
    ids=["missing", "empty", "not-utf8", "too-short"],
)
def test_bad_text_files(tmp_path: Path, make_file, needle: str) -> None:
    path = tmp_path / "data.txt"
    make_file(path)
    result = run_cli("train", *train_overrides(tmp_path, "dataset=text", f"dataset.path={path}"))
    assert_one_line_error(result, needle)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["model.hiden_size=3"], ["hiden_size", "not in"]),
        (["model.hidden_size=big"], ["hidden_size", "Integer"]),
        (["train.device=gpu"], ["gpu", "auto, cpu, cuda"]),
        (["dataset=nonexistent"], ["dataset/nonexistent"]),
    ],
)
def test_bad_train_settings_fail_before_any_work(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    result = run_cli("train", f"checkpoints_dir={tmp_path}", *args)
    assert_one_line_error(result, *needles)
    assert not any(tmp_path.iterdir()), "nothing may be written before the config is valid"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(small_text: Path, tmp_path: Path) -> None:
    result = run_cli("train", *train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", "train.device=cuda"))
    assert_one_line_error(result, "CUDA is not available", "device=cpu")


def test_bad_sample_inputs(text_checkpoint: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    cases = [
        (["checkpoint=" + str(tmp_path / "missing.pt")], ["checkpoint not found"]),
        ([f"checkpoint={garbage}"], ["cannot read checkpoint"]),
        ([f"checkpoint={text_checkpoint}", "prompt=Zq"], ["never saw", "'Z'", "'q'"]),
        ([f"checkpoint={text_checkpoint}", "temperature=-1", "length=0"], ["temperature", "length"]),
        ([f"checkpoint={text_checkpoint}", "top_p=1.5", "top_k=-2", "num_samples=0"], ["top_p", "top_k", "num_samples"]),
    ]
    for args, needles in cases:
        assert_one_line_error(run_cli("sample", *args, f"out_dir={tmp_path / 'out'}"), *needles)
