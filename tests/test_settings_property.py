"""Random hostile values for every numeric and path setting of train, sample and evaluate, through the CLI's own
entry (check_overrides, compose, report_errors): a one-line error or a sensible run, never a traceback, and
never a file written outside the run folder."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from generate.cli import COMMANDS, CONFIG_NAMES, check_overrides, report_errors
from generate.config import PROJECT_ROOT, DatasetConfig, EvaluateConfig, ModelConfig, SampleConfig, TrainConfig
from tests.conftest import compose_config

NUMBERS = ["0", "-1", "-9223372036854775808", "9223372036854775808", "1" + "0" * 30, "1", "2", "3",
           "0.0", "-1.5", "nan", "inf", "-inf", "1e-40", "1e300", "0.5", "abc"]
# Paths: strange but harmless ones for settings that write (the user chooses those folders), and
# anything at all for names that become a folder or file inside one, and for files that are read.
WRITE_PATHS = ["''", "/dev/null/x", "sub/dir", "a b", "./x/../y", "'${oc.env:HOME}/x'", "'${nope}'"]
NAMES = ["''", "..", "../../escape", "/abs/olute", "a/b", "~", "ok_name", "'${oc.env:HOME}'", "' '"]
READ_PATHS = ["''", "/dev/null/x", "/etc/passwd", "/", "missing.txt", "..", "'${oc.env:HOME}'", "'${nope}'"]
VALID = {"train": {"train.max_steps": "1", "run_name": "ok_name"}, "sample": {"length": "2", "out_dir": "a b"},
         "evaluate": {"batch_size": "1", "cache_dir": "sub/dir"}}
WRITES = {"out_dir", "checkpoints_dir", "cache_dir", "dataset.cache_dir", "out"}
NAMED = {"run_name", "dataset.name"}


def numeric_and_path_keys(schema: type, prefix: str = "") -> tuple[list[str], list[str]]:
    """A dataclass's number settings and its text settings (paths and names), as command-line keys."""
    numbers, paths = [], []
    for field in dataclasses.fields(schema):
        kind = str(field.type)
        if kind in ("int", "float"):
            numbers.append(prefix + field.name)
        elif kind.startswith("str") and field.name not in ("prompt",):
            paths.append(prefix + field.name)
    return numbers, paths


def keys_of(command: str) -> tuple[list[str], list[str]]:
    if command == "train":
        parts = [numeric_and_path_keys(s, p) for s, p in ((DatasetConfig, "dataset."), (ModelConfig, "model."),
                                                          (TrainConfig, "train."))]
        return [k for n, _ in parts for k in n], [k for _, p in parts for k in p] + ["run_name", "checkpoints_dir"]
    return numeric_and_path_keys({"sample": SampleConfig, "evaluate": EvaluateConfig}[command])


def values_for(key: str) -> st.SearchStrategy[str]:
    if key in NAMED:
        return st.sampled_from(NAMES)
    if key.split(".")[-1] in {k.split(".")[-1] for k in WRITES}:
        return st.sampled_from(WRITE_PATHS)
    numbers, _ = keys_of("train")
    is_number = key in numbers or key in keys_of("sample")[0] or key in keys_of("evaluate")[0]
    return st.sampled_from(NUMBERS) if is_number else st.sampled_from(READ_PATHS)


def overrides(command: str) -> st.SearchStrategy[dict[str, str]]:
    """One to three settings of `command`, each given a hostile value."""
    numbers, paths = keys_of(command)
    return st.lists(st.sampled_from(numbers + paths), min_size=1, max_size=3, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: values_for(k) for k in keys})
    )


def snapshot(*folders: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for f in folders if f.exists() for p in f.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small text and a tiny trained checkpoint, outside every run folder (they must stay unchanged)."""
    root = tmp_path_factory.mktemp("world")
    text = root / "text.txt"
    text.write_text("".join(f"{a} {b} sat.\n" for a in ("ann", "bob", "cy") for b in ("up", "down")) * 40)
    torch.set_num_threads(1)
    base = tiny_train(root / "trained", text)
    cfg = compose_config("config", base)
    COMMANDS["train"](cfg)
    # train=smoke names the run after the file (text.txt) with -smoke
    return {"root": root, "text": text, "checkpoint": root / "trained" / "ckpt" / "text-smoke" / "last.pt"}


def tiny_train(folder: Path, text: Path) -> list[str]:
    return ["train=smoke", "dataset=text", f"dataset.path={text}", f"dataset.cache_dir={folder / 'cache'}",
            f"checkpoints_dir={folder / 'ckpt'}", "model.hidden_size=8", "model.embedding_size=8",
            "train.max_steps=2", "train.eval_every=2", "train.batch_size=2", "train.seq_len=8",
            "train.eval_batch_size=2", "train.log_every=1"]


def base_overrides(command: str, world: dict[str, Path], run: Path) -> list[str]:
    if command == "train":
        return tiny_train(run, world["text"])
    if command == "sample":
        return [f"checkpoint={world['checkpoint']}", "length=3", f"out_dir={run / 'samples'}", "quiet=true"]
    return [f"checkpoint={world['checkpoint']}", f"cache_dir={run / 'cache'}", "batch_size=4", "seq_len=16"]


def run_command(command: str, args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, object, str]:
    """The CLI's path: check the overrides (exit 2 on a bad one), compose, run under report_errors."""
    capsys.readouterr()
    try:
        check_overrides(command, args)
        result = report_errors(COMMANDS[command], compose_config(CONFIG_NAMES[command], args))
        code = 0
    except SystemExit as stop:
        result, code = None, int(stop.code or 0)
    return code, result, capsys.readouterr().err


def check_outcome(command: str, code: int, result: object, err: str, run: Path) -> None:
    if code:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
        return
    if command == "train":  # a sensible run: a finite loss and its checkpoint
        assert math.isfinite(result.best_val) and result.best_path.is_file()
        assert run in result.best_path.resolve().parents
    elif command == "sample":
        assert result and all(len(str(s)) > 0 for s in result)
    else:
        assert math.isfinite(result.nats_per_token) and result.tokens > 0


@pytest.mark.parametrize("command", ["train", "sample", pytest.param("evaluate", marks=pytest.mark.slow)])  # evaluate: ~13 s
def test_hostile_settings_get_one_line_or_a_sensible_run(command: str, world, capsys, monkeypatch) -> None:
    watched = (world["root"], PROJECT_ROOT / "datasets" / ".cache", PROJECT_ROOT / "checkpoints")
    exit_codes: list[int] = []

    @settings(max_examples=25 if command != "train" else 18, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(chosen=overrides(command))
    @example(chosen=VALID[command])  # always one real run, whatever the draw
    def one_example(chosen: dict[str, str]) -> None:
        with tempfile.TemporaryDirectory(dir=world["root"].parent) as tmp:
            run = Path(tmp).resolve() / "run"
            run.mkdir()
            monkeypatch.chdir(run)  # relative paths land in the run folder
            monkeypatch.setenv("HOME", str(run))  # and so do ${oc.env:HOME} ones
            before = snapshot(*watched)
            args = base_overrides(command, world, run) + [f"{k}={v}" for k, v in chosen.items()]
            code, result, err = run_command(command, args, capsys)
            exit_codes.append(code)
            check_outcome(command, code, result, err, run)
            assert snapshot(*watched) == before, f"a file outside the run folder was written by {chosen}"
            os.chdir(world["root"])

    one_example()
    assert {0, 2} <= set(exit_codes), exit_codes  # both outcomes were exercised: refusals and real runs
