"""Evaluation: whole-split coverage, nats vs bits, and agreement with a direct cross-entropy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from generate.api import Model
from generate.checkpoint import build_model, load_checkpoint
from generate.cli import run_evaluate as evaluate
from generate.data import load_corpus
from generate.errors import UserError
from generate.scoring import evaluate_loss
from tests.conftest import compose_config, run_cli


def test_evaluate_loss_equals_direct_cross_entropy(text_checkpoint: Path) -> None:
    model = build_model(load_checkpoint(text_checkpoint)).eval()
    docs = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [4, 3, 2], [7, 7]]
    result = evaluate_loss(model, docs, separator=None, batch_size=2, seq_len=4, device=torch.device("cpu"))
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            logits, _ = model(torch.tensor([doc]))
            total += float(torch.nn.functional.cross_entropy(logits[0, :-1], torch.tensor(doc[1:]), reduction="sum"))
            count += len(doc) - 1
    assert result.tokens == count
    assert result.nll == pytest.approx(total, rel=1e-5)
    assert result.bits_per_token == pytest.approx(result.nats_per_token / math.log(2))


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_scores_the_whole_split(text_checkpoint: Path, split: str, capsys) -> None:
    result = evaluate(compose_config("evaluate", [f"checkpoint={text_checkpoint}", f"split={split}", "batch_size=4"]))
    corpus = load_corpus(OmegaConf.create(load_checkpoint(text_checkpoint)["config"]["dataset"]), verbose=False)
    (stream,) = corpus.splits[split]
    chunks = math.ceil(len(stream) / math.ceil(len(stream) / 4))
    assert result.tokens == len(stream) - chunks  # every token but each chunk's first is scored
    out = capsys.readouterr().out
    assert f"{result.nats_per_token:.4f} nats/token" in out and f"{result.bits_per_token:.4f} bits/token" in out


def test_unknown_split_is_refused(text_checkpoint: Path) -> None:
    # The schema's Split enum refuses it before any work: one line, exit 2, naming the choices.
    done = run_cli("evaluate", f"checkpoint={text_checkpoint}", "split=dev")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "dev" in line and "train" in line and "test" in line
    with pytest.raises(UserError, match="split='dev'"):  # the library says the same
        Model.from_pretrained(text_checkpoint).evaluate("dev")
