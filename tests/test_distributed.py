"""torchrun with 2 CPU processes (gloo): identical replicas, rank 0 alone writes, exact resume, CUDA twin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from generate.config import PROJECT_ROOT

# Shared across ranks only through DDP: each rank reads its own rows, so the ranks see different data.
SETTINGS = ("model.dropout=0.2", "train.max_steps=16", "train.eval_every=8", "train.log_every=4")


def torchrun(*args: str, nproc: int = 2, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N args...` with this interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )


def cli_overrides(tmp_path: Path, small_text: Path, run_name: str, *extra: str) -> list[str]:
    from tests.conftest import train_overrides

    return train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", f"run_name={run_name}", *SETTINGS, *extra)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tmp folder, text file) after an uninterrupted 2-process run `whole` that saved each rank's weights."""
    root = tmp_path_factory.mktemp("ddp")
    text = root / "small.txt"
    text.write_text("".join(f"{n}: the {w} is {a}.\n" for n in "ABC" for w in ("cat", "dog", "owl") for a in ("big", "shy")) * 12)
    result = torchrun(__file__, str(root), *cli_overrides(root, text, "whole"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stdout and result.stdout.count("done:") == 1  # rank 0 alone reports
    return root, text


def test_two_gloo_processes_train_identical_replicas_and_rank_0_writes(reference: tuple[Path, Path]) -> None:
    from generate.checkpoint import load_checkpoint
    from tests.conftest import run_cli

    root, _ = reference
    rank0, rank1 = (torch.load(root / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert same_weights(rank0, rank1), "the two replicas drifted apart"
    run_dir = root / "checkpoints" / "whole"
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["step"] == 16 and same_weights(ckpt["model"], rank0)
    # Per-rank state: each rank carried its own hidden state over its own rows, with its own RNG.
    assert len(ckpt["hidden"]) == len(ckpt["rng"]) == 2
    assert ckpt["hidden"][0].shape == ckpt["hidden"][1].shape == (2, 8, 32)
    assert not torch.equal(ckpt["hidden"][0], ckpt["hidden"][1])
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    steps = [(row["step"], "val_loss" in row) for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    assert steps == [(4, False), (8, False), (8, True), (12, False), (16, False), (16, True)]  # written once

    sampled = run_cli("sample", f"checkpoint={run_dir / 'best.pt'}", "length=20", "quiet=true", f"out_dir={root / 's'}")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert len((root / "s" / "sample_0.txt").read_text()) >= 20


def test_distributed_resume_after_sigkill_is_exact(reference: tuple[Path, Path]) -> None:
    from generate.checkpoint import load_checkpoint
    root, text = reference
    killed = torchrun("-m", "tests.kill_after_save", "1", *cli_overrides(root, text, "cut"))
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    assert load_checkpoint(root / "checkpoints" / "cut" / "last.pt")["step"] == 8
    resumed = torchrun("-m", "generate.train", *cli_overrides(root, text, "cut", "train.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = (load_checkpoint(root / "checkpoints" / name / "last.pt") for name in ("whole", "cut"))
    assert a["step"] == b["step"] == 16 and same_weights(a["model"], b["model"])
    rows = [(root / "checkpoints" / name / "metrics.jsonl").read_text().splitlines() for name in ("whole", "cut")]
    strip = [[{k: v for k, v in json.loads(r).items() if k != "tokens_per_s"} for r in run] for run in rows]
    assert strip[0] == strip[1]


def test_an_error_on_rank_0_stops_every_rank_with_its_message(reference: tuple[Path, Path]) -> None:
    root, text = reference
    again = torchrun("-m", "generate.train", *cli_overrides(root, text, "whole"))  # last.pt exists, no resume
    assert again.returncode != 0
    # Rank 0 found the problem; rank 1 got the same one-line error instead of waiting in a collective.
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("already exists" in line and "train.resume=true" in line for line in errors), again.stderr[-3000:]


def test_a_two_process_checkpoint_resumes_in_one_process_with_a_warning(reference: tuple[Path, Path], capsys) -> None:
    import shutil

    from generate.cli import run_train as train
    from tests.conftest import compose_config

    root, text = reference
    (root / "checkpoints" / "single").mkdir()
    shutil.copy(root / "checkpoints" / "whole" / "last.pt", root / "checkpoints" / "single" / "last.pt")
    summary = train(compose_config("config", cli_overrides(root, text, "single", "train.max_steps=20", "train.resume=true")))
    assert summary.step == 20
    assert "written by 2 process(es)" in capsys.readouterr().out  # it says the resume is not exact


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the NCCL path); CI machines have none")
def test_cuda_torchrun_trains_and_resumes(small_text: Path, tmp_path: Path) -> None:
    from generate.checkpoint import load_checkpoint

    nproc = min(2, torch.cuda.device_count())
    first = torchrun("-m", "generate.train", *cli_overrides(tmp_path, small_text, "gpu", "train.device=cuda", "train.max_steps=8"), nproc=nproc)
    assert first.returncode == 0, first.stderr[-3000:]
    again = torchrun("-m", "generate.train", *cli_overrides(tmp_path, small_text, "gpu", "train.device=cuda", "train.resume=true"), nproc=nproc)
    assert again.returncode == 0, again.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "gpu" / "last.pt")
    assert ckpt["step"] == 16 and len(ckpt["rng"]) == nproc and ckpt["rng"][0]["cuda"] is not None


def _rank_worker() -> None:
    """Run by torchrun from the first test: the real CLI entry point, then save this rank's weights."""
    out = Path(sys.argv.pop(1))
    import generate.trainer as train_module
    from generate.cli import main

    models: list[torch.nn.Module] = []

    class Captured(train_module.GRULanguageModel):  # type: ignore[misc, valid-type]
        def __init__(self, spec) -> None:
            super().__init__(spec)
            models.append(self)

    train_module.GRULanguageModel = Captured  # type: ignore[misc]
    try:
        main("train")
    except SystemExit as exit_:  # a one-line error: pass its status on
        raise SystemExit(exit_.code) from None
    torch.save(models[0].state_dict(), out / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    _rank_worker()
