"""Resume is exact: after SIGKILL (or a crash at any save), the run ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from generate import trainer as train_module
from generate.checkpoint import load_checkpoint
from generate.cli import run_train as train
from tests.conftest import compose_config, run_cli, train_overrides

# Dropout on, so the restored random streams matter; eval_every not a multiple of log_every, so a
# checkpoint can fall inside a logging window.
SETTINGS = ("model.dropout=0.3", "train.max_steps=24", "train.eval_every=8", "train.log_every=3")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch):
    # Two shared cores: OpenMP threads spinning against other processes make smoke runs ~20x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


def overrides(small_text: Path, tmp_path: Path, run_name: str, *extra: str) -> list[str]:
    return train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", f"run_name={run_name}", *SETTINGS, *extra)


def curve(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock column."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in rows]


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        x, y = load_checkpoint(a / name), load_checkpoint(b / name)
        assert x["step"] == y["step"] and x["val_loss"] == y["val_loss"], name
        for key in x["model"]:
            assert torch.equal(x["model"][key], y["model"][key]), f"{name}: {key} differs"
        for p, q in zip(x["optimizer"]["state"].values(), y["optimizer"]["state"].values(), strict=True):
            assert all(torch.equal(p[k], q[k]) for k in p), f"{name}: optimizer state differs"
    assert curve(a) == curve(b)


def test_resume_after_sigkill_is_bit_exact(small_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = run_cli("train", *overrides(small_text, tmp_path, "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]

    # SIGKILL right after the step-8 checkpoint (tests/kill_after_save.py wraps the train CLI)
    killed = run_cli("train", *overrides(small_text, tmp_path, "cut"), kill_after_save=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    cut = tmp_path / "checkpoints" / "cut"
    assert load_checkpoint(cut / "last.pt")["step"] == 8

    resumed = run_cli("train", *overrides(small_text, tmp_path, "cut", "train.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed" in resumed.stderr + resumed.stdout
    assert_same_run(tmp_path / "checkpoints" / "whole", cut)


def test_a_crash_between_or_after_any_checkpoint_file_resumes_exactly(
    small_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Die right after each file a run writes (best.pt, then last.pt, at every evaluation): the
    resumed run must end where an uninterrupted one does, best.pt included."""
    train(compose_config("config", overrides(small_text, tmp_path, "whole")))
    real_save = train_module.atomic_save
    writes: list[Path] = []

    def count(obj, path) -> None:
        real_save(obj, path)
        writes.append(Path(path))

    monkeypatch.setattr(train_module, "atomic_save", count)
    train(compose_config("config", overrides(small_text, tmp_path, "probe")))
    assert [p.name for p in writes].count("last.pt") == 3 and len(writes) > 3

    class Crash(Exception):
        pass

    for n in range(1, len(writes) + 1):
        def crash_after_nth(obj, path, n: int = n) -> None:
            real_save(obj, path)
            writes.append(Path(path))
            if len(writes) == n:
                raise Crash(f"died after writing {path}")

        writes.clear()
        monkeypatch.setattr(train_module, "atomic_save", crash_after_nth)
        name = f"crash{n}"
        with pytest.raises(Crash):
            train(compose_config("config", overrides(small_text, tmp_path, name)))
        monkeypatch.setattr(train_module, "atomic_save", real_save)
        # Died before the first last.pt: nothing to resume, the same command starts the run afresh.
        resume = (tmp_path / "checkpoints" / name / "last.pt").is_file()
        train(compose_config("config", overrides(small_text, tmp_path, name, f"train.resume={str(resume).lower()}")))
        assert_same_run(tmp_path / "checkpoints" / "whole", tmp_path / "checkpoints" / name)


def test_resume_is_exact_on_music_documents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Music trains on separate pieces (each row its own document and position): resume restores them."""
    from tests.music_helpers import write_songs

    write_songs(tmp_path / "midi", 6)
    music = ("dataset=midi", f"dataset.path={tmp_path / 'midi'}", "dataset.num_workers=1", "model.dropout=0.3",
             "train.max_steps=12", "train.eval_every=4", "train.log_every=3")

    def run(name: str, *extra: str) -> None:
        train(compose_config("config", train_overrides(tmp_path, *music, f"run_name={name}", *extra)))

    run("whole")
    real_save = train_module.atomic_save
    saves: list[str] = []

    def die_after_the_first_checkpoint(obj, path) -> None:
        real_save(obj, path)
        saves.append(Path(path).name)
        if saves.count("last.pt") == 1:
            raise KeyboardInterrupt  # as if killed at step 4

    monkeypatch.setattr(train_module, "atomic_save", die_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run("cut")
    monkeypatch.setattr(train_module, "atomic_save", real_save)
    assert load_checkpoint(tmp_path / "checkpoints" / "cut" / "last.pt")["data_state"][0]["rows"]  # per-row documents
    run("cut", "train.resume=true")
    assert_same_run(tmp_path / "checkpoints" / "whole", tmp_path / "checkpoints" / "cut")


def test_each_row_starts_its_document_from_a_zero_state_and_carries_it_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from generate.model import GRULanguageModel

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (reset rows, hidden state fed in) per step
    resets: list[torch.Tensor] = []

    class Recording(GRULanguageModel):
        def forward(self, tokens, hidden=None):
            if self.training:
                seen.append((resets[-1], hidden.clone()))
            return super().forward(tokens, hidden)

    real_stream = train_module.training_stream

    def recording_stream(*args, **kwargs):
        stream = real_stream(*args, **kwargs)
        next_batch = stream.next_batch

        def record():
            batch = next_batch()
            resets.append(batch[2].clone())
            return batch

        stream.next_batch = record
        return stream

    monkeypatch.setattr(train_module, "GRULanguageModel", Recording)
    monkeypatch.setattr(train_module, "training_stream", recording_stream)
    text = tmp_path / "songs.txt"  # stand-in documents: many short pieces, so rows change pieces often
    text.write_text("abcdefgh " * 400)
    docs = [[1 + (i + j) % 7 for j in range(20 + 7 * i % 90)] for i in range(60)]
    monkeypatch.setattr(train_module, "load_corpus", lambda cfg, verbose=True: _corpus(docs))
    train(compose_config("config", train_overrides(tmp_path, "dataset=text", f"dataset.path={text}", "train.max_steps=12")))
    assert len(seen) == 12 and seen[0][0].all()
    mixed = 0
    for reset, hidden in seen[1:]:
        assert (hidden[:, reset] == 0).all()  # a new piece starts from a zero state
        assert (hidden[:, ~reset].abs().sum(dim=(0, 2)) > 0).all()  # the others carry theirs on
        mixed += bool(reset.any() and not reset.all())
    assert mixed >= 3  # the test saw steps where some rows, not all, began a new piece


def _corpus(docs: list[list[int]]):
    from generate.sources import Corpus
    from generate.tokenizers.melody import MelodyTokenizer

    return Corpus(MelodyTokenizer(60, 72, 4), {"train": docs, "val": docs[:4], "test": docs[:2]})


def test_a_resume_on_other_splits_is_refused_with_the_settings_that_continue_it(small_text: Path, tmp_path: Path) -> None:
    # A run from before dataset.test_position existed held its text test split just before val; resumed
    # today without saying so, it would train on that held-out slice.
    from generate.storage import atomic_save

    train(compose_config("config", overrides(small_text, tmp_path, "old", "train.max_steps=8")))
    last = tmp_path / "checkpoints" / "old" / "last.pt"
    ckpt = load_checkpoint(last)
    del ckpt["config"]["dataset"]["test_position"]
    atomic_save(ckpt, last)
    for extra, said in (((), "dataset.test_position=before_val"), (("dataset.test_position=before_val", "dataset.val_fraction=0.2"),
                                                                     "dataset.val_fraction=0.1")):
        done = run_cli("train", *overrides(small_text, tmp_path, "old", "train.resume=true", *extra))
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert f"was trained on other splits; add {said} to resume it" in done.stderr.strip().splitlines()[-1]
    resumed = train(compose_config("config", overrides(small_text, tmp_path, "old", "train.resume=true",
                                                       "dataset.test_position=before_val")))
    assert resumed.step == 24
