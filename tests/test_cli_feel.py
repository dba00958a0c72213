"""The command line as a new user meets it: help, the key=value spelling, prompts, named models, listing, smoke runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from generate.checkpoint import build_tokenizer, load_checkpoint
from generate.config import PROJECT_ROOT
from tests.conftest import run_cli, train_overrides

COMMANDS = ("train", "sample", "evaluate", "export", "quality", "list", "app")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_the_commands_own_keys_without_importing_torch(command: str) -> None:
    code = (f"import sys; sys.argv = ['generate.{command}', '--help']; from generate.cli import main; main({command!r}); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.rstrip().endswith("NO-TORCH") and f"usage: python -m generate.{command}" in text and "examples:" in text
    assert "_schema" not in text and "Hydra" not in text  # no internal names
    own = {"train": "train.max_steps", "sample": "prompt_file", "evaluate": "dataset_path", "export": "dtype",
           "quality": "num_samples", "list": "checkpoints_dir", "app": "port"}[command]
    line = next(line for line in text.splitlines() if line.strip().startswith(own + " "))
    assert len(line.split()) >= 4  # key, type, default, description
    if command != "train":
        assert "train.max_steps" not in text and "dataset=" not in text  # only this command's keys


def test_help_through_the_real_module_is_fast_enough_to_use() -> None:
    done = run_cli("sample", "--help")
    assert done.returncode == 0 and "temperature" in done.stdout and "float" in done.stdout


@pytest.mark.parametrize("args", [["--temperature", "0.8"], ["--checkpoint=bach"], ["--length", "10"]])
def test_argparse_habits_get_the_key_value_spelling(args: list[str]) -> None:
    done = run_cli("sample", *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    key = args[0].lstrip("-").split("=")[0]
    assert line.startswith("error: write settings as key=value") and f"{key}=" in line


@pytest.mark.parametrize("prompt", ["What, ho! Romeo", "O Romeo, Romeo", "Is it so? 'Tis", "a\\b ${x} [1,2] #3"])
def test_prompts_with_symbols_reach_the_model_as_written(prompt: str, text_checkpoint: Path, tmp_path: Path) -> None:
    # The tiny test model knows few characters: the prompt is checked against its vocabulary, so an
    # error naming exactly the characters it never saw proves the whole prompt arrived unchanged.
    done = run_cli("sample", f"checkpoint={text_checkpoint}", f"prompt={prompt}", "length=5", f"out_dir={tmp_path}")
    assert "Traceback" not in done.stderr and "Ambiguous" not in done.stderr and "Lexer" not in done.stderr
    unseen = sorted(set(prompt) - set(build_tokenizer(load_checkpoint(text_checkpoint)).chars))
    if not unseen:
        assert done.returncode == 0 and (tmp_path / "sample_0.txt").read_text().startswith(prompt)
        return
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2 and f"{len(unseen)} character(s) the model never saw" in line, line
    assert all(repr(ch) in line for ch in unseen[:10]), line  # the message names the first ten


@pytest.mark.parametrize(("spelling", "models"), [("[jsb]", 2), ("jsb", 2), ("jsb,jsb", 3)])
def test_a_list_setting_takes_one_value_or_several_with_or_without_brackets(spelling: str, models: int,
                                                                              tmp_path: Path) -> None:
    done = run_cli("evaluate", "checkpoint=jsb", f"ensemble={spelling}", "max_tokens=200", f"cache_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert f"scored as the equal mixture of {models} models (jsb.pt and {spelling.strip('[]').replace(',', ', ')})" \
        in done.stdout


def test_a_missing_ensemble_member_is_one_line(tmp_path: Path) -> None:
    done = run_cli("evaluate", "checkpoint=jsb", f"ensemble={tmp_path / 'gone.pt'}", f"cache_dir={tmp_path}")
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith("error: checkpoint not found:") and "gone.pt" in line


def test_prompt_file_and_shipped_models_by_name_from_another_folder(tmp_path: Path) -> None:
    opening = tmp_path / "opening.txt"
    opening.write_text("ROMEO:\nWhat, ho! Is it so?\n", encoding="utf-8")
    done = run_cli("sample", "checkpoint=shakespeare", f"prompt_file={opening}", "length=20", f"out_dir={tmp_path / 's'}",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s" / "sample_0.txt").read_text().startswith(opening.read_text())
    assert "the shipped shakespeare model" in done.stderr
    both = run_cli("sample", "checkpoint=shakespeare", f"prompt_file={opening}", "prompt=x", cwd=tmp_path)
    assert both.returncode == 2 and "cannot be used together" in both.stderr
    missing = run_cli("sample", "checkpoint=shakespeare", f"prompt_file={tmp_path / 'nope.txt'}", cwd=tmp_path)
    assert missing.returncode == 2 and "prompt file not found" in missing.stderr
    music = run_cli("sample", "checkpoint=bach", "length=16", f"out_dir={tmp_path / 'm'}", cwd=tmp_path)
    assert music.returncode == 0 and (tmp_path / "m" / "sample_0.mid").is_file(), music.stderr


def test_smoke_runs_go_to_their_own_folder_and_the_listing_shows_them(small_text: Path, tmp_path: Path) -> None:
    args = [arg for arg in train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}")
            if not arg.startswith("run_name=")]
    trained = run_cli("train", *args)
    assert trained.returncode == 0, trained.stderr[-2000:]
    best = (tmp_path / "checkpoints" / "small-smoke" / "best.pt").resolve()  # the file's name, then -smoke
    assert best.is_file() and f"sample it: python -m generate.sample checkpoint={best}" in trained.stdout
    listed = run_cli("list", f"checkpoints_dir={tmp_path / 'checkpoints'}")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert {"shakespeare", "bach", "jsb", "small-smoke"} <= rows.keys()
    assert "your run" in rows["small-smoke"] and str(best) in rows["small-smoke"] and " 20 " in rows["small-smoke"]
