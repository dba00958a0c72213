"""train.ema_decay: an exponential moving average of the weights is what validation scores and checkpoints carry."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from generate import trainer as train_module
from generate.api import Model
from generate.averaging import COUNT_KEY, RAW_KEY, make_average, warm_decay
from generate.checkpoint import export_checkpoint, load_checkpoint
from generate.cli import run_train as train
from generate.config import PROJECT_ROOT
from tests.conftest import compose_config, train_overrides

SETTINGS = ("model.dropout=0.3", "train.max_steps=24", "train.eval_every=8", "train.log_every=3", "train.lr=0.01")


def overrides(small_text: Path, tmp_path: Path, run_name: str, *extra: str) -> list[str]:
    return train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", f"run_name={run_name}", *SETTINGS,
                           *extra)


def run(small_text: Path, tmp_path: Path, name: str, *extra: str) -> Path:
    train(compose_config("config", overrides(small_text, tmp_path, name, *extra)))
    return tmp_path / "checkpoints" / name


def stop_after_checkpoints(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Interrupt training right after its `count`-th last.pt is written."""
    real_save, saves = train_module.atomic_save, []

    def save_then_stop(obj, path) -> None:
        real_save(obj, path)
        saves.append(Path(path).name)
        if saves.count("last.pt") == count:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "atomic_save", save_then_stop)


def test_the_average_follows_the_warm_up_decay_step_by_step() -> None:
    assert make_average(torch.nn.Linear(2, 2), 0.0) is None
    assert [round(warm_decay(0.9, n), 4) for n in (0, 1, 8, 100)] == [0.1, 0.1818, 0.5, 0.9]
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = make_average(model, 0.9)
    expected = [p.detach().clone() for p in model.parameters()]  # the first update copies
    average.update_parameters(model)
    for n in range(1, 30):  # an independent transcription: ema = d * ema + (1 - d) * w, d = min(0.9, (1+n)/(10+n))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update_parameters(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters(), strict=True)]
    got = list(average.module.parameters())
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected, strict=True))
    assert int(average.n_averaged) == 30
    assert not torch.allclose(got[0], model.weight)  # the average is not simply the last weights


def test_validation_best_pt_and_export_use_the_averaged_weights(small_text: Path, tmp_path: Path) -> None:
    run_dir = run(small_text, tmp_path, "ema", "train.ema_decay=0.9")
    best, last = load_checkpoint(run_dir / "best.pt"), load_checkpoint(run_dir / "last.pt")
    assert last[COUNT_KEY] == 24 and last["card"]["weights"] == "ema 0.9"
    assert any(not torch.equal(last["model"][k], last[RAW_KEY][k]) for k in last["model"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["weights"] for r in rows if "val_loss" in r] == ["ema"] * 3  # metrics say which weights were scored
    # The recorded validation loss is the averaged weights' (scored again here), not the raw weights'.
    cfg = best["config"]["train"]
    scored = Model(best, run_dir / "best.pt").evaluate("val", batch_size=cfg["eval_batch_size"], seq_len=cfg["seq_len"],
                                                      cache_dir=str(tmp_path / "cache"))
    raw = Model({**best, "model": best[RAW_KEY], "weights_sha256": None}, run_dir / "best.pt")
    raw_scored = raw.evaluate("val", batch_size=cfg["eval_batch_size"], seq_len=cfg["seq_len"],
                              cache_dir=str(tmp_path / "cache"))
    assert scored.nats_per_token == pytest.approx(best["val_loss"], abs=1e-4)
    assert abs(raw_scored.nats_per_token - best["val_loss"]) > 1e-3
    exported = load_checkpoint(export_checkpoint(run_dir / "best.pt", tmp_path / "shared.pt"))
    assert RAW_KEY not in exported and COUNT_KEY not in exported
    assert all(torch.equal(exported["model"][k], best["model"][k].half()) for k in best["model"])


def test_a_run_stopped_and_resumed_with_ema_ends_identical_to_an_uninterrupted_one(
    small_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = run(small_text, tmp_path, "whole", "train.ema_decay=0.95")
    stop_after_checkpoints(monkeypatch, 2)  # as if killed at step 16
    with pytest.raises(KeyboardInterrupt):
        run(small_text, tmp_path, "cut", "train.ema_decay=0.95")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoints" / "cut" / "last.pt")["step"] == 16
    cut = run(small_text, tmp_path, "cut", "train.ema_decay=0.95", "train.resume=true")
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(whole / name), load_checkpoint(cut / name)
        assert a["step"] == b["step"] and a["val_loss"] == b["val_loss"] and a[COUNT_KEY] == b[COUNT_KEY]
        for part in ("model", RAW_KEY):
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), f"{name}: {part} differs"
    assert load_checkpoint(cut / "last.pt")["card"]["best_step"] == load_checkpoint(whole / "last.pt")["card"]["best_step"]


def test_turning_ema_on_or_off_at_resume_continues_from_the_raw_weights(
    small_text: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    plain = run(small_text, tmp_path, "plain", "train.max_steps=8")
    before = load_checkpoint(plain / "last.pt")["model"]
    run(small_text, tmp_path, "plain", "train.max_steps=16", "train.ema_decay=0.9", "train.resume=true")
    assert "holds no weight average" in capsys.readouterr().out
    on = load_checkpoint(plain / "last.pt")
    assert on[COUNT_KEY] == 8 and any(not torch.equal(on[RAW_KEY][k], before[k]) for k in before)
    # Averaging off again: it goes on from the raw weights exactly as a last.pt that only ever held them does.
    import shutil

    from generate.checkpoint import with_digest
    from generate.storage import atomic_save

    shutil.copytree(plain, tmp_path / "checkpoints" / "raw")
    only_raw = {k: v for k, v in on.items() if k not in (RAW_KEY, COUNT_KEY, "weights_sha256")}
    atomic_save(with_digest({**only_raw, "model": on[RAW_KEY]}), tmp_path / "checkpoints" / "raw" / "last.pt")
    for name in ("plain", "raw"):
        run(small_text, tmp_path, name, "train.max_steps=17", "train.resume=true")
    off, reference = (load_checkpoint(tmp_path / "checkpoints" / n / "last.pt") for n in ("plain", "raw"))
    assert RAW_KEY not in off and off["step"] == 17
    assert all(torch.equal(off["model"][k], reference["model"][k]) for k in before)


def test_a_damaged_average_in_last_pt_is_one_line(small_text: Path, tmp_path: Path) -> None:
    from generate.errors import UserError
    from generate.storage import atomic_save

    run_dir = run(small_text, tmp_path, "bad", "train.max_steps=8", "train.ema_decay=0.9")
    ckpt = load_checkpoint(run_dir / "last.pt")
    atomic_save({**ckpt, COUNT_KEY: "many"}, run_dir / "last.pt")
    with pytest.raises(UserError, match="weight average is damaged"):
        run(small_text, tmp_path, "bad", "train.max_steps=16", "train.ema_decay=0.9", "train.resume=true")
    atomic_save({**ckpt, RAW_KEY: [1, 2]}, run_dir / "last.pt")
    with pytest.raises(UserError, match="train_weights is not a mapping"):
        run(small_text, tmp_path, "bad", "train.max_steps=16", "train.ema_decay=0.9", "train.resume=true")


def torchrun(*args: str) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_under_ddp_every_rank_holds_the_same_average(small_text: Path, tmp_path: Path) -> None:
    torchrun(__file__, str(tmp_path), *overrides(small_text, tmp_path, "ddp", "train.ema_decay=0.9", "train.max_steps=8"))
    rank0, rank1 = (torch.load(tmp_path / f"ema{r}.pt", weights_only=True) for r in (0, 1))
    saved = load_checkpoint(tmp_path / "checkpoints" / "ddp" / "last.pt")
    assert saved[COUNT_KEY] == 8
    for k in saved["model"]:
        assert torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], saved["model"][k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; CI machines have none")
def test_cuda_training_averages_on_the_device_and_resumes(
    small_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda = ("train.device=cuda", "train.ema_decay=0.9")
    whole = run(small_text, tmp_path, "whole", *cuda)
    stop_after_checkpoints(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(small_text, tmp_path, "cut", *cuda)
    monkeypatch.undo()
    cut = run(small_text, tmp_path, "cut", *cuda, "train.resume=true")
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a[COUNT_KEY] == b[COUNT_KEY] == 24 and a["card"]["device"].startswith("cuda")
    for part in ("model", RAW_KEY):  # cuDNN's GRU kernels need not be bitwise deterministic: close, not equal
        assert all(torch.allclose(a[part][k], b[part][k], atol=1e-5) for k in a[part]), part


def _rank_worker() -> None:
    """Run by torchrun: the real train CLI, then each rank saves the averaged weights it holds."""
    out = Path(sys.argv.pop(1))
    from generate.cli import main

    averages: list[torch.nn.Module] = []
    real = train_module.make_average

    def recording(model: torch.nn.Module, decay: float):
        averages.append(real(model, decay))
        return averages[-1]

    train_module.make_average = recording  # type: ignore[assignment]
    main("train")
    torch.save(averages[0].module.state_dict(), out / f"ema{os.environ['RANK']}.pt")


if __name__ == "__main__":
    _rank_worker()
