"""The optional C sampling kernel (generate/native.c): same logits as the model, reproducible draws, a quiet fallback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import generate.decoding as decoding
from generate import native
from generate.decoding import _gumbel, generate_tokens, stream_tokens
from generate.model import GRULanguageModel, ModelSpec


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch) -> object:
    """The compiled kernel; where a C compiler exists it must build (skipped only on a machine without one)."""
    monkeypatch.delenv(native.SWITCH, raising=False)
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler here: the PyTorch path is what runs")
    loaded = native.kernel()
    assert loaded is not None, "a C compiler is present, so generate/native.c must compile and load"
    return loaded


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the native kernel's calls (steps per call) made by generate_tokens / stream_tokens."""
    seen: list[int] = []
    run = native.NativeSampler.run

    def counting(self: native.NativeSampler, prev: torch.Tensor, steps: int, *args: object, **kw: object) -> None:
        seen.append(steps)
        run(self, prev, steps, *args, **kw)

    monkeypatch.setattr(native.NativeSampler, "run", counting)
    return seen


def _model(reset_after: bool, vocab: int = 37, embedding: int = 24, hidden: int = 40, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    spec = ModelSpec(vocab_size=vocab, embedding_size=embedding, hidden_size=hidden, num_layers=layers,
                     reset_after=reset_after)
    return GRULanguageModel(spec).eval()


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("batch, hidden, layers", [(1, 40, 2), (3, 24, 3), (8, 40, 1), (5, 70, 2)])
def test_kernel_logits_state_and_draws_equal_the_model(lib: object, reset_after: bool, batch: int, hidden: int,
                                                       layers: int) -> None:
    """120 steps: logits within 1e-5 relative / 1e-4 absolute of model(tokens), the same final state, exact draws."""
    model = _model(reset_after, hidden=hidden, layers=layers)
    steps, vocab = 120, model.spec.vocab_size
    prime = torch.randint(vocab, (batch, 4), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        _, hidden_state = model(prime[:, :-1])
        sampler = native.NativeSampler(lib, model.stepper(hidden_state))
        out, logits = torch.empty(steps, batch, dtype=torch.long), torch.empty(steps, batch, vocab)
        noise = _gumbel(torch.empty(steps, batch, vocab), torch.Generator().manual_seed(2))
        sampler.run(prime[:, -1].contiguous(), steps, out, noise, 0.7, logits)
        reference, final = model(torch.cat([prime, out.t()], 1))  # (N, 4 + steps, V)
    expected = reference[:, 3 : 3 + steps].transpose(0, 1)  # the logits after prime[-1], then after each draw
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(out, (logits / 0.7 + noise).argmax(-1)), "each token is argmax(logits / T + noise)"
    assert len(set(out.flatten().tolist())) > 3, "the draws vary"
    with torch.inference_mode():  # the state after the last draw: the model's, one token further
        _, after = model(out[-1:].t(), sampler.stepper.hidden)
    torch.testing.assert_close(after, final, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reset_after", [True, False])
def test_generation_uses_the_kernel_and_repeats_for_a_seed(lib: object, calls: list[int], reset_after: bool) -> None:
    model = _model(reset_after)
    first = generate_tokens(model, [1, 2], 300, num_samples=2, seed=7)
    assert calls and sum(calls) == 299, "every step after the first ran in the kernel"
    assert torch.equal(generate_tokens(model, [1, 2], 300, num_samples=2, seed=7), first)
    assert not torch.equal(generate_tokens(model, [1, 2], 300, num_samples=2, seed=8), first)
    # Blocks and noise chunks never change the samples: the kernel reads the same noise rows.
    blocks = list(stream_tokens(model, [1, 2], 300, num_samples=2, seed=7, block=7))
    assert torch.equal(torch.cat(blocks, 1), first)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_kernel_and_pytorch_path_draw_the_same_tokens(lib: object, monkeypatch: pytest.MonkeyPatch,
                                                      temperature: float) -> None:
    """Same noise rows, logits equal to ~1e-6: the same tokens for a seed with the kernel on or off."""
    model = _model(True)
    fast = generate_tokens(model, [3], 200, num_samples=3, seed=5, temperature=temperature)
    monkeypatch.setenv(native.SWITCH, "0")
    assert torch.equal(generate_tokens(model, [3], 200, num_samples=3, seed=5, temperature=temperature), fast)


def test_turned_off_or_filtered_sampling_takes_the_pytorch_path(lib: object, calls: list[int],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(False)
    generate_tokens(model, [1], 50, top_k=5)
    generate_tokens(model, [1], 50, top_p=0.9)
    assert calls == [], "top-k / top-p filters run in PyTorch"
    monkeypatch.setenv(native.SWITCH, "0")
    greedy = generate_tokens(model, [3], 40, temperature=0)[0].tolist()
    assert calls == [] and native.kernel() is None
    with torch.no_grad():  # the fallback is still right: greedy follows the full forward pass
        logits, _ = model(torch.tensor([[3] + greedy]))
    assert logits[0, :-1].argmax(-1).tolist() == greedy


def test_a_failing_compiler_falls_back_with_one_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(native.SWITCH, raising=False)
    monkeypatch.setenv("GENERATE_HOME", str(tmp_path))
    model = _model(True)
    for compiler in ("false", "no-such-compiler-here"):
        monkeypatch.setenv("CC", compiler)
        first = generate_tokens(model, [3], 30, temperature=0)[0].tolist()
        again = generate_tokens(model, [3], 30, temperature=0)[0].tolist()
        err = capsys.readouterr().err
        assert err.count("note: the native sampling kernel is not available") == 1, err
        assert first == again
        with torch.no_grad():
            logits, _ = model(torch.tensor([[3] + first]))
        assert logits[0, :-1].argmax(-1).tolist() == first
    assert not list((tmp_path / "cache" / "native").glob("*.so")), "a failed build leaves no library behind"


def test_the_library_is_cached_under_generate_home(lib: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENERATE_HOME", str(tmp_path))
    assert native.cache_dir() == tmp_path / "cache" / "native"
    assert native.kernel() is not None
    built = list(native.cache_dir().iterdir())
    assert len(built) == 1 and built[0].suffix == ".so", built  # no temporary files left


def test_step_weights_follow_parameter_changes(lib: object) -> None:
    """The packed weights are reused between calls, and rebuilt when a parameter changes (an optimizer, load_state_dict)."""
    model, other = _model(True, seed=0), _model(True, seed=1)
    before = generate_tokens(model, [2], 60, temperature=0)
    assert model.step_weights() is model.step_weights()
    model.load_state_dict(other.state_dict())
    assert torch.equal(generate_tokens(model, [2], 60, temperature=0), generate_tokens(other, [2], 60, temperature=0))
    assert not torch.equal(before, generate_tokens(model, [2], 60, temperature=0))


def test_run_refuses_wrong_buffers(lib: object) -> None:
    model = _model(True)
    with torch.inference_mode():
        sampler = native.NativeSampler(lib, model.stepper(model.init_hidden(2)))
    with pytest.raises(ValueError, match="out: expected a contiguous CPU torch.int64 tensor of shape \\(5, 2\\)"):
        sampler.run(torch.zeros(2, dtype=torch.long), 5, torch.empty(5, 3, dtype=torch.long), None, 1.0)


def test_decoding_routes_only_cpu_unfiltered_sampling() -> None:
    model = _model(True)
    stepper = model.stepper(model.init_hidden(1))
    assert decoding._native_sampler(stepper, torch.device("meta"), 0, 1.0, 37) is None
    assert decoding._native_sampler(stepper, torch.device("cpu"), 3, 1.0, 37) is None
    assert decoding._native_sampler(stepper, torch.device("cpu"), 0, 0.95, 37) is None
