"""Sampling: settings checks, filters, carried state, determinism, batched samples, output files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generate.checkpoint import build_model, load_checkpoint
from generate.cli import run_sample as sample
from generate.decoding import check_sampling, filter_logits
from generate.errors import UserError
from tests.conftest import compose_config


def sample_cfg(checkpoint: Path, out_dir: Path, *extra: str):
    return compose_config("sample", [f"checkpoint={checkpoint}", f"out_dir={out_dir}", "quiet=true", *extra])


def test_same_seed_same_samples_other_seed_other_samples(text_checkpoint: Path, tmp_path: Path) -> None:
    first = sample(sample_cfg(text_checkpoint, tmp_path / "a", "length=80", "num_samples=3", "seed=5"))
    again = sample(sample_cfg(text_checkpoint, tmp_path / "b", "length=80", "num_samples=3", "seed=5"))
    other = sample(sample_cfg(text_checkpoint, tmp_path / "c", "length=80", "num_samples=3", "seed=6"))
    assert first == again
    assert first != other
    assert len(set(first)) > 1, "samples of one batch must differ from each other"
    for i, text in enumerate(first):
        assert (tmp_path / "a" / f"sample_{i}.txt").read_text(encoding="utf-8") == text
        assert len(text) == 80  # no prompt: the start token is not part of the output


def test_prompt_is_kept_and_continued(text_checkpoint: Path, tmp_path: Path) -> None:
    (text,) = sample(sample_cfg(text_checkpoint, tmp_path, "prompt=All:", "length=30"))
    assert text.startswith("All:") and len(text) == len("All:") + 30


def test_carried_state_equals_rerunning_the_whole_sequence(text_checkpoint: Path) -> None:
    """Step-by-step generation with the carried hidden state is the same model as one full pass."""
    ckpt = load_checkpoint(text_checkpoint)
    model = build_model(ckpt).eval()
    prime = [1, 2, 3]
    generated = model.generate(prime, 40, temperature=0)[0].tolist()  # nanoGPT's spelling
    with torch.no_grad():
        logits, _ = model(torch.tensor([prime + generated]))
    greedy = logits[0, len(prime) - 1 : -1].argmax(-1).tolist()
    assert greedy == generated


def test_temperature_zero_and_top_k_one_are_greedy(text_checkpoint: Path, tmp_path: Path) -> None:
    greedy = sample(sample_cfg(text_checkpoint, tmp_path / "g", "temperature=0", "length=50", "prompt=All:"))
    top1 = sample(sample_cfg(text_checkpoint, tmp_path / "k", "top_k=1", "length=50", "prompt=All:", "seed=9"))
    tiny_p = sample(sample_cfg(text_checkpoint, tmp_path / "p", "top_p=0.0001", "length=50", "prompt=All:", "seed=3"))
    assert greedy == top1 == tiny_p


def test_filter_logits_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept_k = torch.isfinite(filter_logits(logits, 1.0, top_k=2, top_p=1.0))
    assert kept_k.tolist() == [[True, True, False, False]]
    # Nucleus 0.7: 0.5 alone is not enough, 0.5 + 0.3 covers it, so two tokens stay.
    kept_p = torch.isfinite(filter_logits(logits, 1.0, top_k=0, top_p=0.7))
    assert kept_p.tolist() == [[True, True, False, False]]
    kept_p = torch.isfinite(filter_logits(logits, 1.0, top_k=0, top_p=0.9))
    assert kept_p.tolist() == [[True, True, True, False]]
    # Temperature sharpens without changing the order.
    sharp = filter_logits(logits, 0.5, 0, 1.0).softmax(-1)
    assert sharp[0, 0] > 0.5 and sharp.argsort(descending=True).tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("temperature=-0.1", "temperature"),
        ("top_p=0", "top_p"),
        ("top_p=1.5", "top_p"),
        ("top_k=-1", "top_k"),
        ("length=0", "length"),
        ("num_samples=0", "num_samples"),
    ],
)
def test_out_of_range_settings_are_refused(setting: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        cfg = compose_config("sample", [setting])
        check_sampling(cfg.temperature, cfg.top_k, cfg.top_p, cfg.length, cfg.num_samples, cfg.beam_size)


def test_unseen_prompt_characters_are_named(text_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="'Z'"):
        sample(sample_cfg(text_checkpoint, tmp_path, "prompt=Zebra"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_trained_checkpoint_samples_on_cpu(tmp_path: Path) -> None:
    from generate.cli import run_train as train
    from tests.conftest import train_overrides

    text = tmp_path / "t.txt"
    text.write_text("abcabcabd\n" * 500)
    train(compose_config("config", train_overrides(tmp_path, "dataset=text", f"dataset.path={text}", "train.device=cuda")))
    ckpt = tmp_path / "checkpoints" / "text" / "best.pt"
    (out,) = sample(sample_cfg(ckpt, tmp_path / "s", "device=cpu", "length=20"))
    assert len(out) == 20
