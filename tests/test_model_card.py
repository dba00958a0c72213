"""The model card inside a checkpoint: written by training, kept and extended by export, read by Model.card()."""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch

import generate
from generate.api import Model
from generate.checkpoint import DERIVED_CARD_KEYS, SHIPPED_DIR, export_checkpoint, load_checkpoint
from generate.cli import run_train as train
from generate.errors import UserError
from tests.conftest import compose_config, run_cli, train_overrides

CARD_KEYS = {"dataset_source", "dataset_path", "recipe", "trained_at", "model_summary", "tokenizer_summary",
             "best_val_loss", "best_step", "wall_time_s", "device", "processes", "torch", "weights"}


def plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(map(plain, value))
    return value is None or type(value) in (str, int, float, bool)  # exact types: no str or float subclasses


def test_the_train_command_writes_a_card_with_its_recipe(small_text: Path, tmp_path: Path) -> None:
    args = train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", "run_name=carded",
                           "train.max_steps=12", "train.eval_every=4")
    started = datetime.now(timezone.utc)
    result = run_cli("train", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "checkpoints" / "carded"
    raw = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)  # plain data: weights-only loads it
    card = raw["card"]
    assert card.keys() == CARD_KEYS and plain(card)
    assert card["recipe"] == "python -m generate.train " + " ".join(map(shlex.quote, args))
    assert card["dataset_source"] == "text" and card["dataset_path"] == str(small_text)
    assert card["tokenizer_summary"] == f"char, {raw['model_spec']['vocab_size']} tokens"
    assert card["model_summary"].startswith(f"{Model(raw, run_dir / 'best.pt').net.num_parameters():,} parameters, 2 x 32 GRU")
    assert card["device"] == "cpu" and card["processes"] == 1 and card["torch"] == str(torch.__version__)
    assert card["weights"] == "raw" and 0 < card["wall_time_s"] < 600
    assert started - timedelta(seconds=2) <= datetime.fromisoformat(card["trained_at"]) <= datetime.now(timezone.utc)
    vals = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = min((r for r in vals if "val_loss" in r), key=lambda r: r["val_loss"])
    assert (card["best_step"], card["best_val_loss"]) == (best["step"], best["val_loss"]) == (raw["step"], raw["best_val"])

    listed = run_cli("list", f"checkpoints_dir={tmp_path / 'checkpoints'}")
    assert listed.returncode == 0 and f"recipe: {card['recipe']}" in listed.stdout


def test_export_keeps_the_card_and_adds_measured_figures(text_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared.pt"
    result = run_cli("export", f"checkpoint={text_checkpoint}", f"out={out}", "+card.test_nll=4.12",
                     "+card.note=measured on the test split", "dtype=float32")
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = load_checkpoint(text_checkpoint)["card"], load_checkpoint(out)["card"]
    assert after == {**before, "test_nll": 4.12, "note": "measured on the test split", "export_dtype": "float32"}
    card = generate.load(out).card()
    assert card["test_nll"] == 4.12 and card["recipe"] == before["recipe"] and card["steps"] == 20
    assert card["path"] == str(out)  # derived keys are the checkpoint's own, as before cards existed
    # An exported file exported again keeps what was added.
    again = load_checkpoint(export_checkpoint(out, tmp_path / "again.pt", card={"bits": [1.5, 1.6]}))["card"]
    assert again["test_nll"] == 4.12 and again["bits"] == [1.5, 1.6] and again["export_dtype"] == "float16"


def test_export_refuses_figures_that_would_hide_or_break_the_card(text_checkpoint: Path, tmp_path: Path) -> None:
    derived = run_cli("export", f"checkpoint={text_checkpoint}", f"out={tmp_path / 'x.pt'}", "+card.val_loss=0.1")
    assert derived.returncode == 2 and "Traceback" not in derived.stderr
    assert derived.stderr.strip().splitlines()[-1].startswith("error: card.val_loss is derived from the checkpoint")
    with pytest.raises(UserError, match="card.when must be plain data"):
        export_checkpoint(text_checkpoint, tmp_path / "y.pt", card={"when": datetime.now()})
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_old_checkpoints_without_a_card_give_the_derived_keys_only(tmp_path: Path) -> None:
    shipped = SHIPPED_DIR / "bach.pt"
    old = {k: v for k, v in load_checkpoint(shipped).items() if k != "card"}  # as exported before cards existed
    torch.save(old, tmp_path / "old.pt")
    assert generate.load(str(tmp_path / "old.pt")).card().keys() == set(DERIVED_CARD_KEYS)
    # A card that is not a mapping (damaged or foreign) is ignored the same way.
    assert Model({**old, "card": [1, 2]}, shipped).card().keys() == set(DERIVED_CARD_KEYS)


def test_the_card_is_carried_over_a_resume(small_text: Path, tmp_path: Path) -> None:
    base = train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", "run_name=resumed", "train.eval_every=4")
    train(compose_config("config", [*base, "train.max_steps=8"]))
    first = load_checkpoint(tmp_path / "checkpoints" / "resumed" / "last.pt")["card"]
    train(compose_config("config", [*base, "train.max_steps=12", "train.resume=true"]))
    second = load_checkpoint(tmp_path / "checkpoints" / "resumed" / "last.pt")["card"]
    assert second["wall_time_s"] >= first["wall_time_s"]  # summed over the pieces of the run
    losses = [json.loads(r) for r in (tmp_path / "checkpoints" / "resumed" / "metrics.jsonl").read_text().splitlines()]
    best = min((r for r in losses if "val_loss" in r), key=lambda r: r["val_loss"])
    assert second["best_step"] == best["step"]


def test_the_api_records_its_call_as_the_recipe(small_text: Path, tmp_path: Path) -> None:
    run = generate.train("text", path=str(small_text), recipe="smoke", checkpoints_dir=str(tmp_path / "c"),
                         cache_dir=str(tmp_path / "cache"), hidden_size=16, embedding_size=8, max_steps=4, eval_every=4)
    recipe = generate.load(run.best_path).card()["recipe"]
    assert recipe.startswith("generate.train('text', recipe='smoke', path=") and "max_steps=4" in recipe


def test_each_multirun_job_records_its_own_settings_not_the_sweep(small_text: Path, tmp_path: Path) -> None:
    args = train_overrides(tmp_path, "dataset=text", f"dataset.path={small_text}", "run_name=sweep", "train.max_steps=4",
                           "train.eval_every=4")
    result = run_cli("train", "-m", *args, "train.lr=0.01,0.02")
    assert result.returncode == 0, result.stderr[-2000:]
    for lr in ("0.01", "0.02"):
        card = load_checkpoint(tmp_path / "checkpoints" / "sweep" / f"train.lr={lr}" / "best.pt")["card"]
        assert card["recipe"].endswith(f"train.eval_every=4 train.lr={lr}") and "0.01,0.02" not in card["recipe"]


def test_every_shipped_model_carries_its_card() -> None:
    """Each file in checkpoints/pretrained/ says how it was made; the benchmark models also their test figures."""
    shipped = sorted(SHIPPED_DIR.glob("*.pt"))
    assert {p.stem for p in shipped} >= {"shakespeare", "bach", "folk", "jsb", "nottingham", "musedata", "pianomidi"}
    for path in shipped:
        card = load_checkpoint(path).get("card")
        assert isinstance(card, dict) and card.get("recipe", "").startswith("python -m generate.train"), path.name
        assert card.get("trained_at") and card.get("export_dtype") == "float16", path.name
    for name in ("jsb", "jsb_descending", "jsb_outer", "nottingham", "musedata", "pianomidi"):
        card = generate.load(name).card()
        assert 0 < card["test_nll_per_step_canonical"] <= card["test_nll_per_step"], name


def test_the_summary_names_the_regularizers_a_model_trains_with() -> None:
    from generate.checkpoint import model_summary
    from generate.model import GRULanguageModel, ModelSpec

    assert "(nn.GRU)" in model_summary(GRULanguageModel(ModelSpec(65, hidden_size=16)))
    summary = model_summary(GRULanguageModel(ModelSpec(65, hidden_size=16, zoneout=0.1, layer_norm=True)))
    assert "(nn.GRU's form; zoneout 0.1, layer norm)" in summary
    locked = ModelSpec(65, hidden_size=16, dropout=0.0, zoneout=0.1, variational_dropout=True)
    assert "(nn.GRU's form; zoneout 0.1)" in model_summary(GRULanguageModel(locked))  # no dropout, nothing locked
