"""A plain (non-editable) install: build the wheel, install it in a fresh venv, run every command from another folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from generate.config import PROJECT_ROOT


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_wheel_works_from_any_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GENERATE_HOME")} | {"OMP_NUM_THREADS": "1"}
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                 str(PROJECT_ROOT)], tmp_path, env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("gru_generate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("generate/_bundled/conf/config.yaml", "generate/_bundled/conf/dataset/bach.yaml",
                    "generate/_bundled/datasets/tinyshakespeare.txt", "generate/_bundled/datasets/music/jsb_chorales.json.gz",
                    "generate/_bundled/checkpoints/pretrained/shakespeare.pt", "generate/_bundled/checkpoints/pretrained/bach.pt",
                    "generate/native.c"):
        assert shipped in names, shipped

    # --system-site-packages lends torch and the other dependencies (no network here); the project itself
    # comes from the wheel alone, and the commands run from a folder that is not the repository.
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path, env).returncode == 0
    python = str(venv / "bin" / "python")
    installed = run([python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp_path, env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run([python, "-c", "import generate.paths as p; print(p.PROJECT_ROOT)"], work, env)
    assert "_bundled" in where.stdout and str(PROJECT_ROOT) not in where.stdout, where.stdout + where.stderr

    start = time.perf_counter()
    helped = run([python, "-m", "generate.sample", "--help"], work, env)
    assert helped.returncode == 0 and "prompt_file" in helped.stdout
    print(f"--help from the wheel: {time.perf_counter() - start:.2f} s")
    for command in (
        ["generate.sample", "length=40", "quiet=true"],
        ["generate.sample", "checkpoint=bach", "length=32"],
        ["generate.train", "train=smoke"],
        ["generate.evaluate", "checkpoint=checkpoints/shakespeare-smoke/best.pt", "split=val"],
    ):
        done = run([python, "-m", *command], work, env)
        assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    assert (work / "samples" / "sample_0.mid").is_file() and (work / "checkpoints" / "shakespeare-smoke" / "best.pt").is_file()
    assert (work / "cache").is_dir()  # token caches go under the current folder, never into site-packages
    site = Path(run([python, "-c", "import generate; print(generate.__file__)"], work, env).stdout.strip()).parent
    assert not (site / "_bundled" / "datasets" / ".cache").exists() and not (site / "cache").exists()
