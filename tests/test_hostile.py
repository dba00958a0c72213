"""Hostile checkpoints and files: each case is built here and run through the real command in a subprocess.

Every case must end with exit status 2, exactly one line on stderr (no traceback), no file written
outside the test's run folder, and a peak RSS under 500 MB (the subprocess's own getrusage).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from generate.checkpoint import export_checkpoint, load_checkpoint
from generate.cli import run_train
from generate.config import PROJECT_ROOT
from tests.conftest import compose_config, train_overrides

MAX_RSS_MB = 500
# Runs the command and, at exit (sys.exit included), writes this process's peak RSS in KiB to RSS_FILE.
# VmHWM is the high-water mark of the process's own memory since exec. getrusage's ru_maxrss is not used:
# Linux carries the pre-exec image's high-water mark over exec, and a child forked from a large pytest
# process then reports the parent's size (measured: 874 MB for `import torch` after the fuzz tests ran).
WRAPPER = (
    "import atexit, os, re, runpy, sys\n"
    "def peak():\n"
    "    return re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
    "atexit.register(lambda: open(os.environ['RSS_FILE'], 'w').write(peak()))\n"
    "module = sys.argv[1]; sys.argv = [module, *sys.argv[2:]]\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)
TEXT = "".join(f"{n}: the {w} is {a}.\n" for n in ("ANNA", "BEN") for w in ("cat", "dog", "fish") for a in ("small", "kind"))


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folders` with its size and modification time."""
    files = {}
    for folder in folders:
        if folder.exists():
            for path in folder.rglob("*"):
                if path.is_file():
                    stat = path.stat()
                    files[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained run (last.pt with its full training state) and an exported copy."""
    root = tmp_path_factory.mktemp("trained")
    text = root / "text.txt"
    text.write_text(TEXT * 12, encoding="utf-8")
    torch.set_num_threads(1)
    run_train(compose_config("config", train_overrides(root, "dataset=text", f"dataset.path={text}", "run_name=r",
                                                       "train.max_steps=4", "train.eval_every=4")))
    exported = export_checkpoint(root / "checkpoints" / "r" / "last.pt", root / "exported.pt")
    return {"root": root, "text": text, "last": root / "checkpoints" / "r" / "last.pt", "exported": exported}


class Case:
    """A folder for one hostile case: `run/` is where the command runs and may write; `elsewhere/` must stay empty."""

    def __init__(self, tmp_path: Path):
        self.run_dir, self.elsewhere, self.home = tmp_path / "run", tmp_path / "elsewhere", tmp_path / "home"
        for folder in (self.run_dir, self.elsewhere, self.home):
            folder.mkdir()
        self.rss_file = tmp_path / "rss.txt"
        self.watched = (self.elsewhere, self.home, PROJECT_ROOT / "datasets" / ".cache", PROJECT_ROOT / "checkpoints")

    def run(self, module: str, *args: str, preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
        before = snapshot(*self.watched)
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "HOME": str(self.home),
               "RSS_FILE": str(self.rss_file)}
        result = subprocess.run([sys.executable, "-c", WRAPPER, f"generate.{module}", *args], cwd=self.run_dir, env=env,
                                capture_output=True, text=True, timeout=300, preexec_fn=preexec)
        assert snapshot(*self.watched) == before, "a file outside the run folder was written"
        return result

    def refuses(self, module: str, *args: str, needle: str = "", **kwargs) -> str:
        """Run and check the four promises; → the error line."""
        result = self.run(module, *args, **kwargs)
        assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
        peak_mb = int(self.rss_file.read_text()) / 1024
        assert peak_mb < MAX_RSS_MB, f"peak RSS {peak_mb:.0f} MB"
        assert needle in lines[0], lines[0]
        return lines[0]


@pytest.fixture
def case(tmp_path: Path) -> Case:
    return Case(tmp_path)


def altered(trained: dict[str, Path], folder: Path, change: Callable[[dict], None], source: str = "exported") -> Path:
    """A copy of a trained checkpoint with `change` applied (the data is edited, not the file's bytes)."""
    ckpt = dict(torch.load(trained[source], weights_only=True))
    change(ckpt)
    path = folder / "hostile.pt"
    torch.save(ckpt, path)
    return path


# ---------------------------------------------------------------- paths and settings inside a checkpoint


def test_an_environment_interpolation_in_a_stored_path_is_refused(trained, case: Case) -> None:
    secret = case.home / "key.txt"
    secret.write_text("the secret")

    def plant(ckpt: dict) -> None:
        ckpt["config"]["dataset"]["path"] = "${oc.env:HOME}/key.txt"
        ckpt["config"]["dataset"]["cache_dir"] = str(case.elsewhere)

    path = altered(trained, case.run_dir, plant)
    case.refuses("evaluate", f"checkpoint={path}", f"cache_dir={case.run_dir / 'cache'}", needle="interpolation")


def test_a_checkpoint_never_chooses_where_the_cache_is_written(trained, case: Case) -> None:
    secret = case.home / "key.txt"
    secret.write_text("QZX secret! 0123456789\n" * 50)

    def plant(ckpt: dict) -> None:
        ckpt["config"]["dataset"]["path"] = str(secret)
        ckpt["config"]["dataset"]["cache_dir"] = str(case.elsewhere)  # the leak: a world-readable folder

    path = altered(trained, case.run_dir, plant)
    # The secret's characters differ from the training text's, so evaluation refuses; the cache it
    # built went to this run's cache folder, never to `elsewhere` (checked by Case.run).
    case.refuses("evaluate", f"checkpoint={path}", f"cache_dir={case.run_dir / 'cache'}", needle="no longer tokenizes")


def test_a_dataset_name_that_climbs_out_of_the_cache_folder_is_refused(trained, case: Case) -> None:
    path = altered(trained, case.run_dir, lambda c: c["config"]["dataset"].__setitem__("name", "../../elsewhere/x"))
    case.refuses("evaluate", f"checkpoint={path}", f"cache_dir={case.run_dir / 'cache'}", needle="plain name")


def test_a_checkpoint_without_its_config_cannot_be_evaluated(trained, case: Case) -> None:
    path = altered(trained, case.run_dir, lambda c: c.pop("config"))
    case.refuses("evaluate", f"checkpoint={path}", f"cache_dir={case.run_dir / 'cache'}", needle="does not record")


# ---------------------------------------------------------------- size bombs


def test_stride_0_weights_declaring_a_huge_model_are_refused_before_allocating(trained, case: Case) -> None:
    hidden = 20_000  # ~28 GB if it were allocated

    def inflate(ckpt: dict) -> None:
        spec = dict(ckpt["model_spec"], hidden_size=hidden)
        ckpt["model_spec"] = spec
        with torch.device("meta"):
            from generate.model import GRULanguageModel, ModelSpec

            shapes = {k: t.shape for k, t in GRULanguageModel(ModelSpec(**spec)).state_dict().items()}
        ckpt["model"] = {k: torch.zeros(1).expand(shape) for k, shape in shapes.items()}  # 4 bytes each on disk
        ckpt.pop("weights_sha256", None)

    path = altered(trained, case.run_dir, inflate)
    assert path.stat().st_size < 100_000
    case.refuses("sample", f"checkpoint={path}", "length=5", f"out_dir={case.run_dir}", needle="not stored densely")


def test_a_deflate_bomb_is_refused_before_it_is_inflated(trained, case: Case) -> None:
    bomb = case.run_dir / "bomb.pt"
    with zipfile.ZipFile(trained["exported"]) as source, zipfile.ZipFile(bomb, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))  # the real checkpoint, stored as torch writes it
        info = zipfile.ZipInfo("exported/data/999")
        info.compress_type = zipfile.ZIP_DEFLATED
        with target.open(info, "w", force_zip64=True) as entry:
            zeros = bytes(1 << 24)
            for _ in range(40):  # 640 MiB inflated (more than the RSS limit), under 1 MB on disk
                entry.write(zeros)
    assert bomb.stat().st_size < 5_000_000
    case.refuses("sample", f"checkpoint={bomb}", "length=5", f"out_dir={case.run_dir}", needle="compressed")


def test_a_model_spec_with_a_million_layers_is_refused(trained, case: Case) -> None:
    path = altered(trained, case.run_dir, lambda c: c["model_spec"].__setitem__("num_layers", 10**6))
    case.refuses("sample", f"checkpoint={path}", "length=5", f"out_dir={case.run_dir}", needle="num_layers")


# ---------------------------------------------------------------- parts that disagree


@pytest.mark.parametrize("change", [-1, +3])
def test_a_tokenizer_that_does_not_match_the_weights_is_refused(trained, case: Case, change: int) -> None:
    def resize(ckpt: dict) -> None:
        chars = ckpt["tokenizer"]["chars"]
        ckpt["tokenizer"] = dict(ckpt["tokenizer"], chars=chars[:change] if change < 0 else chars + "\u00e9\u00e8\u00ea")

    path = altered(trained, case.run_dir, resize)
    case.refuses("sample", f"checkpoint={path}", "length=5", f"out_dir={case.run_dir}", needle="tokenizer has")


def test_a_bit_flip_inside_a_weight_is_a_one_line_error(trained, case: Case) -> None:
    flipped = case.run_dir / "flipped.pt"
    data = bytearray(trained["exported"].read_bytes())
    with zipfile.ZipFile(trained["exported"]) as archive:  # every data/ entry of an export is a weight
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        # where the entry's bytes start: after its local header, whose name and extra lengths are at 26 and 28
        lengths = data[entry.header_offset + 26 : entry.header_offset + 30]
        start = entry.header_offset + 30 + int.from_bytes(lengths[:2], "little") + int.from_bytes(lengths[2:], "little")
    data[start + entry.file_size // 2] ^= 0x10
    flipped.write_bytes(bytes(data))
    case.refuses("sample", f"checkpoint={flipped}", "length=5", f"out_dir={case.run_dir}", needle="checksum")


# ---------------------------------------------------------------- damaged training state on resume


def bad_optimizer_shape(ckpt: dict) -> None:
    state = ckpt["optimizer"]["state"]
    state[0] = dict(state[0], exp_avg=torch.zeros(3, 3))


DAMAGES = {
    "optimizer moment of the wrong shape": (bad_optimizer_shape, "optimizer"),
    "random state of the wrong size": (lambda c: c["rng"][0].__setitem__("torch", torch.zeros(7, dtype=torch.uint8)),
                                       "random state"),
    "scheduler missing": (lambda c: c.pop("scheduler"), "scheduler"),
    "step not a number": (lambda c: c.__setitem__("step", "ten"), "step"),
    "best_val not a number": (lambda c: c.__setitem__("best_val", [1.0]), "best_val"),
    "data position out of range": (lambda c: c["data_state"][0].__setitem__("position", -5), "data position"),
    "hidden state of the wrong shape": (lambda c: c.__setitem__("hidden", [torch.zeros(2, 2)]), "hidden state"),
    "optimizer groups missing": (lambda c: c["optimizer"].__setitem__("param_groups", []), "optimizer"),
    "config without train settings": (lambda c: c["config"].pop("train"), "config.train"),
    "optimizer not a mapping": (lambda c: c.__setitem__("optimizer", [1, 2]), "optimizer"),
}


@pytest.mark.parametrize("damage", [
    pytest.param(name, marks=[] if i == 0 else [pytest.mark.slow]) for i, name in enumerate(DAMAGES)
])
def test_a_damaged_training_state_is_a_one_line_error_on_resume(trained, case: Case, damage: str) -> None:
    change, needle = DAMAGES[damage]
    run = case.run_dir / "checkpoints" / "r"
    run.mkdir(parents=True)
    altered(trained, run, change, source="last").rename(run / "last.pt")
    args = train_overrides(case.run_dir, "dataset=text", f"dataset.path={trained['text']}", "run_name=r",
                           "train.max_steps=8", "train.eval_every=4", "train.resume=true")
    case.refuses("train", *args, needle=needle)


# ---------------------------------------------------------------- OS errors and paths


def test_an_output_folder_under_a_file_is_one_line(trained, case: Case) -> None:
    case.refuses("sample", f"checkpoint={trained['exported']}", "length=5", "out_dir=/dev/null/x", needle="not a folder")


def test_a_file_size_limit_while_exporting_keeps_the_previous_file(trained, case: Case) -> None:
    target = case.run_dir / "model.pt"
    target.write_bytes(b"the previous export")
    limit = 4096  # the export needs more

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    case.refuses("export", f"checkpoint={trained['last']}", f"out={target}", "overwrite=true",
                 preexec=limit_file_size, needle="File too large")
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in case.run_dir.iterdir()) == ["model.pt"]  # no temporary file left


def test_export_never_overwrites_without_permission_nor_a_runs_last_pt(trained, case: Case) -> None:
    target = case.run_dir / "model.pt"
    target.write_bytes(b"keep me")
    case.refuses("export", f"checkpoint={trained['last']}", f"out={target}", needle="overwrite=true")
    run = case.run_dir / "checkpoints" / "r"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"resume state")
    case.refuses("export", f"checkpoint={trained['last']}", f"out={run / 'last.pt'}", "overwrite=true", needle="never")
    assert target.read_bytes() == b"keep me" and (run / "last.pt").read_bytes() == b"resume state"


def test_export_removes_the_temporary_file_of_a_killed_export(trained, tmp_path: Path) -> None:
    stale = tmp_path / ".model.pt.abc123.tmp"
    stale.write_bytes(b"half an export")
    other = tmp_path / ".other.pt.abc123.tmp"  # another file's save: not ours to delete
    other.write_bytes(b"someone else")
    export_checkpoint(trained["last"], tmp_path / "model.pt")
    assert not stale.exists() and other.exists()
    assert load_checkpoint(tmp_path / "model.pt")["weights_sha256"]


@pytest.mark.parametrize("name", ["/abs/run", "../../x", "..", "a/b"])
def test_run_name_must_be_a_plain_name(case: Case, name: str) -> None:
    case.refuses("train", "train=smoke", f"run_name={name}", f"checkpoints_dir={case.run_dir}", needle="plain name")


# ---------------------------------------------------------------- a frozen torchrun rank

FREEZE_RANK_1 = """
import sys, time
from generate import trainer
from generate.cli import main

real_save = trainer.Trainer.save

def save_then_freeze(self, result):
    real_save(self, result)
    if self.d.rank == 1:
        time.sleep(3600)  # alive but silent, as a hung GPU or a stopped job is (and SIGTERM still ends it)

trainer.Trainer.save = save_then_freeze
sys.argv = ["generate.train", *sys.argv[1:]]
main("train")
"""


@pytest.mark.slow
def test_a_frozen_rank_ends_the_job_with_one_line_on_the_others(trained, tmp_path: Path) -> None:
    import time

    script = tmp_path / "freeze.py"
    script.write_text(FREEZE_RANK_1)
    args = train_overrides(tmp_path, "dataset=text", f"dataset.path={trained['text']}", "run_name=frozen",
                           "train.max_steps=40", "train.eval_every=4", "train.dist_timeout_minutes=0.1")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=240,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"},
    )
    elapsed = time.perf_counter() - start
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: rank 0")]
    assert len(errors) == 1 and "stopped answering" in errors[0], result.stderr[-3000:]
    assert elapsed < 120, elapsed  # the default timeout would have waited 5 minutes
