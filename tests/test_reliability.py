"""Checkpoints are data, saves are atomic, numerical faults are skipped, one training per run folder."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from generate.checkpoint import build_model, build_tokenizer, load_checkpoint
from generate.cli import run_evaluate as evaluate
from generate.cli import run_train as train
from generate.config import PROJECT_ROOT
from generate.data import load_corpus
from generate.errors import UserError
from generate.model import GRULanguageModel
from generate.storage import atomic_save
from tests.conftest import compose_config, run_cli, train_overrides


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch):
    # Two shared cores: OpenMP threads spinning against other processes make smoke runs ~20x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the subprocesses (run_cli copies os.environ)
    yield
    torch.set_num_threads(before)


def text_run(small_text: Path, tmp_path: Path, *extra: str):
    return compose_config("config", train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", *extra))


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------- 1. checkpoints are data, not code


class Payload:
    """Unpickling this runs code: it writes `marker`. A real attack would do anything else."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def write_evil_checkpoint(path: Path, marker: Path, zip_format: bool = True) -> Path:
    """A file shaped like a checkpoint whose tokenizer entry runs code when unpickled."""
    data = {"model": {}, "model_spec": {"vocab_size": 3}, "tokenizer": Payload(marker)}
    if zip_format:
        torch.save(data, path)  # torch's own zip format, as a shared .pt would be
    else:
        with path.open("wb") as f:  # a bare pickle, the legacy format torch.load also reads
            pickle.dump(data, f, protocol=2)
    return path


@pytest.mark.parametrize("zip_format", [True, False])
def test_the_payload_is_live_so_the_refusal_tests_mean_something(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "marker"
    evil = write_evil_checkpoint(tmp_path / "evil.pt", marker, zip_format)
    try:
        torch.load(evil, weights_only=False)  # what an unsafe loader would do
    except RuntimeError:  # a bare pickle is no full legacy checkpoint, but its code has run by then
        pass
    assert marker.read_text() == "pwned"


def test_sample_cli_refuses_a_checkpoint_that_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = write_evil_checkpoint(tmp_path / "evil.pt", marker)
    result = run_cli("sample", f"checkpoint={evil}", f"out_dir={tmp_path / 'out'}")
    line = assert_one_line_error(result, "refused to load", "evil.pt", "never allowed to run code")
    assert "weights_only" not in line  # torch's advice to disable the safety is not passed on
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_every_checkpoint_reader_refuses_code(small_text: Path, tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "marker"
    evil = write_evil_checkpoint(tmp_path / "evil.pt", marker, zip_format)
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(evil)
    with pytest.raises(UserError, match="refused to load"):
        evaluate(compose_config("evaluate", [f"checkpoint={evil}"]))
    # train.resume=true reads last.pt: a planted one is refused the same way.
    run_dir = tmp_path / "checkpoints" / "text"
    run_dir.mkdir(parents=True)
    write_evil_checkpoint(run_dir / "last.pt", marker, zip_format)
    with pytest.raises(UserError, match="refused to load"):
        train(text_run(small_text, tmp_path, "train.resume=true"))
    assert not marker.exists()


def test_token_cache_is_loaded_as_data_and_a_planted_one_is_rebuilt(small_text: Path, tmp_path: Path, capsys) -> None:
    cfg = compose_config("config", ["dataset=text", f"dataset.path={small_text}", f"dataset.cache_dir={tmp_path / 'cache'}"])
    first = load_corpus(cfg.dataset)
    expected = {name: list(split[0]) for name, split in first.splits.items()}
    del first  # its arrays map the files replaced below
    [store] = (tmp_path / "cache").iterdir()
    marker = tmp_path / "marker"
    # The cache is .npy arrays and JSON: an array that runs code when unpickled is refused, never run.
    payload = np.empty(1, dtype=object)
    payload[0] = Payload(marker)
    np.save(store / "train.tokens.npy", payload, allow_pickle=True)
    (store / "meta.json").write_text((store / "meta.json").read_text())
    capsys.readouterr()
    again = load_corpus(cfg.dataset)
    assert not marker.exists()
    assert "damaged" in capsys.readouterr().out
    assert {name: list(split[0]) for name, split in again.splits.items()} == expected
    assert np.load(store / "train.tokens.npy", mmap_mode="r").dtype == np.uint16  # rewritten as plain ids


@pytest.fixture
def trained(small_text: Path, tmp_path: Path) -> Path:
    """A run folder with last.pt and best.pt from a 5-step training."""
    train(text_run(small_text, tmp_path, "train.max_steps=5", "train.eval_every=5"))
    return tmp_path / "checkpoints" / "text"


def test_damaged_or_foreign_checkpoints_are_one_line_errors(trained: Path, small_text: Path, tmp_path: Path) -> None:
    data = (trained / "last.pt").read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "noise": os.urandom(4096),
        "text": b"hello, not a checkpoint\n",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        with pytest.raises(UserError) as err:
            load_checkpoint(path)
        assert "\n" not in str(err.value), name
    # Plain data that does not fit together: refused when rebuilt, not with a traceback.
    ckpt = load_checkpoint(trained / "last.pt")
    for broken in (
        {**ckpt, "model_spec": {**ckpt["model_spec"], "hidden_size": 7}},
        {**ckpt, "model_spec": {"vocab_size": 3, "bogus": 1}},
        {**ckpt, "model": {"embedding.weight": torch.zeros(2, 2)}},
    ):
        with pytest.raises(UserError, match="model"):
            build_model(broken)
    for tokenizer in ({"kind": "nope"}, {"kind": "char"}, "just a string"):
        with pytest.raises(UserError, match="tokenizer"):
            build_tokenizer({**ckpt, "tokenizer": tokenizer})
    # A model-only file (an export, an older format) in place of last.pt: resume says why it cannot.
    atomic_save({k: ckpt[k] for k in ("model", "model_spec", "tokenizer")}, trained / "last.pt")
    with pytest.raises(UserError, match="not the training state"):
        train(text_run(small_text, tmp_path, "train.max_steps=10", "train.eval_every=5", "train.resume=true"))


# ---------------------------------------------------------------- 2. a save is never torn


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    old = {"weights": torch.arange(1000.0), "step": 1}
    atomic_save(old, path)
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs) -> None:
        real_save(obj, f, *args, **kwargs)
        f.seek(len(f.getvalue()) // 2 if hasattr(f, "getvalue") else 0)
        f.truncate()  # half a checkpoint is on disk...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...when the disk fills up

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"weights": torch.zeros(100_000), "step": 2}, path)
    monkeypatch.undo()
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], old["weights"])
    assert files_in(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_a_real_full_disk_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes the kernel fail writes past a size with EFBIG, as a full disk fails them.
    import resource

    path = tmp_path / "best.pt"
    atomic_save({"weights": torch.ones(1000), "step": 1}, path)
    code = (
        "import sys, torch; from generate.storage import atomic_save\n"
        "atomic_save({'weights': torch.zeros(1_000_000), 'step': 2}, sys.argv[1])\n"
    )
    limit = 256 * 1024  # the new checkpoint needs ~4 MB

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        timeout=120,
    )
    assert result.returncode != 0 and "File too large" in result.stderr, result.stderr[-1500:]
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], torch.ones(1000))
    assert files_in(tmp_path) == ["best.pt"]


def test_a_failed_save_during_training_keeps_the_last_good_checkpoint(
    small_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save
    calls = []

    def fail_on_the_third_file(obj, f, *args, **kwargs) -> None:
        calls.append(1)
        real_save(obj, f, *args, **kwargs)
        if len(calls) == 3:  # step 10 (best.pt, last.pt), then step 20's first file (the token cache is .npy)
            f.truncate(100)
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fail_on_the_third_file)
    with pytest.raises(OSError):
        train(text_run(small_text, tmp_path))
    monkeypatch.undo()
    run_dir = tmp_path / "checkpoints" / "text"
    assert load_checkpoint(run_dir / "last.pt")["step"] == 10
    assert load_checkpoint(run_dir / "best.pt")["step"] == 10
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_checkpoints_get_ordinary_file_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Temporary files are created 0600; a shared checkpoint must not stay readable by its owner only.
    from generate import storage

    monkeypatch.setattr(storage, "_UMASK", 0o022)
    atomic_save({"x": 1}, tmp_path / "a.pt")
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------- 4. numerical faults


class FaultyModel(GRULanguageModel):
    """Returns NaN logits on chosen training forward passes (1-based), or on evaluation passes."""

    bad_train_calls: set[int] | range = set()
    nan_in_eval_after: int | None = None  # training calls after which evaluation goes NaN
    calls = 0

    def forward(self, tokens, hidden=None):
        logits, hidden = super().forward(tokens, hidden)
        cls = type(self)
        if self.training:
            cls.calls += 1
            if cls.calls > 200:  # a guard so a broken stop rule fails the test instead of hanging it
                raise RuntimeError("training did not stop on repeated non-finite losses")
            if cls.calls in cls.bad_train_calls:
                logits = logits * float("nan")
        elif cls.nan_in_eval_after is not None and cls.calls > cls.nan_in_eval_after:
            logits = logits * float("nan")
        return logits, hidden


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch) -> type[FaultyModel]:
    cls = type("Faulty", (FaultyModel,), {"bad_train_calls": set(), "nan_in_eval_after": None, "calls": 0})
    monkeypatch.setattr("generate.trainer.GRULanguageModel", cls)
    return cls


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values())


def test_a_non_finite_loss_skips_the_step_and_training_goes_on(small_text: Path, tmp_path: Path, faulty, capsys) -> None:
    faulty.bad_train_calls = {12, 13}
    summary = train(text_run(small_text, tmp_path))
    out = capsys.readouterr().out
    assert out.count("non-finite loss/gradient") == 2 and "update skipped" in out
    assert summary.step == 20 and faulty.calls == 22  # two batches spent on skipped steps
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "text" / "last.pt")
    assert ckpt["step"] == 20 and all_finite(ckpt["model"])
    rows = [json.loads(line) for line in (tmp_path / "checkpoints" / "text" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r.get("train_loss", 0.0))) for r in rows)


def test_repeated_faults_stop_training_and_keep_the_last_good_checkpoint(
    small_text: Path, tmp_path: Path, faulty
) -> None:
    faulty.bad_train_calls = range(14, 10_000)  # from step 13 on, every loss is NaN
    with pytest.raises(UserError) as err:
        train(text_run(small_text, tmp_path, "train.max_bad_steps=4"))
    message = str(err.value)
    assert "\n" not in message and "4 non-finite steps in a row at step 13" in message
    assert "last.pt (step 10) is kept" in message and "train.lr" in message
    run_dir = tmp_path / "checkpoints" / "text"
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run_dir / name)
        assert ckpt["step"] == 10 and all_finite(ckpt["model"]) and all_finite(ckpt["optimizer"]["state"][0])


def test_a_non_finite_validation_loss_is_never_saved(small_text: Path, tmp_path: Path, faulty, capsys) -> None:
    faulty.nan_in_eval_after = 15  # the step-20 evaluation is NaN
    train(text_run(small_text, tmp_path))
    assert "validation loss is not finite" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "text" / "last.pt")
    assert ckpt["step"] == 10 and ckpt["val_loss"] == ckpt["best_val"]


def test_diverging_training_stops_with_one_line_from_the_cli(small_text: Path, tmp_path: Path) -> None:
    # A learning rate this absurd overflows the weights within a few steps: a real fault, no mocks.
    result = run_cli("train", *train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", "train.lr=1e30", "train.max_bad_steps=3"))
    assert_one_line_error(result, "non-finite steps in a row", "Lower train.lr")
    assert "update skipped" in result.stdout


# ---------------------------------------------------------------- 6. one training per run folder


def start_training(tmp_path: Path, small_text: Path, *extra: str) -> subprocess.Popen:
    args = train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", *extra)
    return subprocess.Popen(
        [sys.executable, "-m", "generate.train", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_second_training_on_the_same_folder_refuses_and_resume_works_after_a_crash(small_text: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "checkpoints" / "text"
    first = start_training(tmp_path, small_text, "train.max_steps=1000000", "train.eval_every=5")
    try:
        wait_for(lambda: (run_dir / "last.pt").is_file() or first.poll() is not None, "the first run's checkpoint")
        assert first.poll() is None, "the first training died"
        first.send_signal(signal.SIGSTOP)  # frozen, it still holds the lock, and leaves the CPU to the rest

        second = run_cli("train", *train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}"))
        assert_one_line_error(second, "is in use by a training run", f"pid {first.pid}", "run_name=")
        with pytest.raises(UserError, match="in use"):  # resuming a live run is refused too
            train(text_run(small_text, tmp_path, "train.resume=true"))
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock, perhaps mid-save
        first.wait()
    (run_dir / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # what a kill mid-save leaves

    step = load_checkpoint(run_dir / "last.pt")["step"]
    summary = train(text_run(small_text, tmp_path, f"train.max_steps={step + 5}", "train.eval_every=5", "train.resume=true"))
    assert summary.step == step + 5  # the kernel released the dead run's lock
    assert not (run_dir / ".last.pt.abc123.tmp").exists()
