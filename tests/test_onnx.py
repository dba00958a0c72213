"""ONNX export: the step graph in onnxruntime gives PyTorch's logits for both GRU forms, and samples without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from generate.checkpoint import with_digest
from generate.cli import run_export as export
from generate.errors import UserError
from generate.model import GRULanguageModel, ModelSpec
from generate.storage import atomic_save
from generate.tokenizers import CharTokenizer, tokenizer_from_dict
from tests.conftest import PROJECT_ROOT, compose_config

ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
pytest.importorskip("onnx", reason="the [onnx] extra is not installed")

CHARS = "\n abcdefghijklmnopqrstuvwxyz.,:!?"


def write_checkpoint(path: Path, reset_after: bool, seed: int = 0) -> GRULanguageModel:
    """A random model of either form, saved as a checkpoint; weights scaled up so gates reach both ends."""
    torch.manual_seed(seed)
    spec = ModelSpec(vocab_size=len(CHARS), embedding_size=24, hidden_size=40, num_layers=3, reset_after=reset_after)
    model = GRULanguageModel(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    ckpt = {"model": model.state_dict(), "model_spec": spec.to_dict(), "tokenizer": CharTokenizer(CHARS).to_dict()}
    atomic_save(with_digest(ckpt), path)
    return model


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "seed_form"])
def test_onnx_logits_match_pytorch_over_100_steps(tmp_path: Path, reset_after: bool) -> None:
    model = write_checkpoint(tmp_path / "m.pt", reset_after)
    out = export(compose_config("export", [f"checkpoint={tmp_path / 'm.pt'}", f"out={tmp_path / 'm.onnx'}", "format=onnx"]))
    onnx_model = session(out)
    batch, steps = 3, 100
    tokens = torch.randint(0, len(CHARS), (batch, steps), generator=torch.Generator().manual_seed(1))
    hidden_pt, hidden_ox = model.init_hidden(batch), np.zeros((3, batch, 40), dtype=np.float32)
    worst = 0.0
    with torch.no_grad():
        for t in range(steps):  # one token per call, the state carried in and out, as a sampler runs it
            logits_pt, hidden_pt = model(tokens[:, t : t + 1], hidden_pt)
            logits_ox, hidden_ox = onnx_model.run(None, {"tokens": tokens[:, t : t + 1].T.numpy(), "hidden": hidden_ox})
            np.testing.assert_allclose(logits_ox[0], logits_pt[:, 0].numpy(), atol=1e-4, rtol=0)
            np.testing.assert_allclose(hidden_ox, hidden_pt.numpy(), atol=1e-4, rtol=0)
            worst = max(worst, float(np.abs(logits_ox[0] - logits_pt[:, 0].numpy()).max()))
        spread = float(logits_pt.std())
    assert spread > 0.5, "the logits must vary, or agreeing on them would show nothing"
    # The whole sequence in one call (how a prompt is read) gives the same logits as 100 steps.
    all_logits, final = onnx_model.run(None, {"tokens": tokens.T.numpy(), "hidden": np.zeros((3, batch, 40), np.float32)})
    with torch.no_grad():
        reference, _ = model(tokens, model.init_hidden(batch))
    np.testing.assert_allclose(all_logits.transpose(1, 0, 2), reference.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(final, hidden_pt.numpy(), atol=1e-4, rtol=0)


def test_the_seed_form_is_not_the_reset_after_graph(tmp_path: Path) -> None:
    """The two forms' graphs differ in their results: a mapping error in either would not hide behind the other."""
    model = write_checkpoint(tmp_path / "m.pt", reset_after=False)
    export(compose_config("export", [f"checkpoint={tmp_path / 'm.pt'}", f"out={tmp_path / 'm.onnx'}", "format=onnx"]))
    from generate.onnx_export import build_graph

    model.spec.reset_after = True  # the same weights read as the other form
    (tmp_path / "wrong.onnx").write_bytes(build_graph(model).SerializeToString())
    feed = {"tokens": np.arange(20, dtype=np.int64).reshape(20, 1) % len(CHARS), "hidden": np.zeros((3, 1, 40), np.float32)}
    right, wrong = session(tmp_path / "m.onnx").run(None, feed)[0], session(tmp_path / "wrong.onnx").run(None, feed)[0]
    assert np.abs(right - wrong).max() > 0.1


def test_tokenizer_json_rebuilds_the_tokenizer(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "m.pt", reset_after=True)
    export(compose_config("export", [f"checkpoint={tmp_path / 'm.pt'}", f"out={tmp_path / 'm.onnx'}", "format=onnx"]))
    meta = json.loads((tmp_path / "m.tokenizer.json").read_text(encoding="utf-8"))
    assert tokenizer_from_dict(meta["tokenizer"]).encode("to be, or not") == CharTokenizer(CHARS).encode("to be, or not")
    assert len(meta["token_names"]) == len(CHARS) and meta["model_spec"]["num_layers"] == 3


def test_onnx_export_follows_the_overwrite_rule(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "m.pt", reset_after=True)
    args = [f"checkpoint={tmp_path / 'm.pt'}", f"out={tmp_path / 'm.onnx'}", "format=onnx"]
    export(compose_config("export", args))
    with pytest.raises(UserError, match="already exists; add overwrite=true"):
        export(compose_config("export", args))
    (tmp_path / "m.onnx").unlink()  # the tokenizer JSON alone also counts: it would be replaced
    with pytest.raises(UserError, match="m.tokenizer.json already exists"):
        export(compose_config("export", args))
    assert export(compose_config("export", [*args, "overwrite=true"])).is_file()


def test_missing_onnx_package_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(tmp_path / "m.pt", reset_after=True)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(UserError, match=r"pip install \"gru-generate\[onnx\]\""):
        export(compose_config("export", [f"checkpoint={tmp_path / 'm.pt'}", f"out={tmp_path / 'm.onnx'}", "format=onnx"]))
    assert not (tmp_path / "m.onnx").exists()


def test_example_samples_without_torch(tmp_path: Path) -> None:
    model = write_checkpoint(tmp_path / "m.pt", reset_after=False)
    export(compose_config("export", [f"checkpoint={tmp_path / 'm.pt'}", f"out={tmp_path / 'm.onnx'}", "format=onnx"]))
    # torch (and the toolkit, which imports it) made unimportable inside the example's process.
    runner = (
        "import sys, runpy; sys.modules['torch'] = None; sys.modules['generate'] = None; "
        f"sys.argv = ['onnx_sample.py', {str(tmp_path / 'm.onnx')!r}, '--prompt', 'to be', '--length', '30', "
        "'--temperature', '0']; runpy.run_path('examples/onnx_sample.py', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    # Greedy: the example's continuation is PyTorch's own argmax chain from the same prompt.
    expected = model.generate(CharTokenizer(CHARS).encode("to be"), 30, temperature=0)[0].tolist()
    assert result.stdout == "to be" + CharTokenizer(CHARS).decode(expected) + "\n"
