"""The seed form (reset before the product) vs the nn.GRU form: training tokens/s, and which fusion of its loop is fastest."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from common import (
    bare_loop,
    command_line,
    fraction_of_rate,
    interleave,
    matmul_rate,
    measure_peak,
    median,
    parse_args,
    training_flops_per_token,
    write_results,
)
from torch import Tensor

import generate.gru
from generate.model import GRULanguageModel, ModelSpec

BATCH, SEQ, EMBED, VOCAB = 64, 128, 128, 65


def seed_cell(x_t: Tensor, h: Tensor, w_rz_t: Tensor, w_n_t: Tensor) -> Tensor:
    """One step of the seed equations (x_t: (B, 3H) projected input incl. all biases; h: (B, H))."""
    hidden = h.shape[-1]
    rz = torch.sigmoid(torch.addmm(x_t[:, : 2 * hidden], h, w_rz_t))
    r, z = rz[:, :hidden], rz[:, hidden:]
    h_tilde = torch.tanh(torch.addmm(x_t[:, 2 * hidden :], r * h, w_n_t))
    return h + z * (h_tilde - h)


def layer_from_cell(cell: Callable[..., Tensor]) -> Callable[..., tuple[Tensor, Tensor]]:
    """gru_layer's signature (seed form only) with its step replaced by `cell`."""

    def layer(x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, reset_after: bool) -> tuple[Tensor, Tensor]:
        assert not reset_after
        hidden = h.shape[-1]
        x_proj = x_proj + b_hh  # seed form: every bias adds before its nonlinearity
        w_rz_t, w_n_t = w_hh[: 2 * hidden].t(), w_hh[2 * hidden :].t()
        outputs = []
        for t in range(x_proj.shape[1]):
            h = cell(x_proj[:, t], h, w_rz_t, w_n_t)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h

    return layer


@contextmanager
def layer_function(layer: Callable[..., Any]) -> Any:
    """Run the seed GRU's reference path with generate.gru.gru_layer replaced by `layer`."""
    original = generate.gru.gru_layer
    generate.gru.gru_layer = layer
    try:
        yield
    finally:
        generate.gru.gru_layer = original


def seed_model(hidden: int, layers: int, fused: bool) -> GRULanguageModel:
    torch.manual_seed(0)
    model = GRULanguageModel(ModelSpec(VOCAB, EMBED, hidden, layers, dropout=0.1, reset_after=False))
    model.fused = fused
    model.rnn.fused = fused  # False: the reference loop (generate.gru.gru_layer), possibly replaced below
    return model


def with_layer(run: Callable[[], float], layer: Callable[..., Any]) -> Callable[[], float]:
    def wrapped() -> float:
        with layer_function(layer):
            return run()

    return wrapped


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--hidden", type=int, default=256)
        parser.add_argument("--layers", type=int, default=2)
        parser.add_argument("--steps", type=int, default=3, help="timed training steps per run")
        parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
        parser.add_argument(
            "--compile-whole-layer", type=int, default=0, metavar="T",
            help="also time torch.compile of the whole reference layer unrolled over T steps (slow to compile)",
        )

    args = parse_args(__doc__, extra)
    device = torch.device(args.device)
    hidden, layers, steps = args.hidden, args.layers, (1 if args.quick else args.steps)
    flops_step = training_flops_per_token(EMBED, hidden, layers, VOCAB) * BATCH * SEQ
    notes, compile_rows = [], []

    torch.manual_seed(0)
    nn_gru = GRULanguageModel(ModelSpec(VOCAB, EMBED, hidden, layers, dropout=0.1, reset_after=True))
    nn_gru.fused = False  # torch's own nn.GRU (its CPU kernel; cuDNN on CUDA)
    torch.manual_seed(0)
    after_fused = GRULanguageModel(ModelSpec(VOCAB, EMBED, hidden, layers, dropout=0.1, reset_after=True))
    variants: dict[str, Callable[[], float]] = {
        "matmul": matmul_rate(device),
        "nn.GRU form: torch nn.GRU": bare_loop(nn_gru, steps, device, BATCH, SEQ, VOCAB),
        "nn.GRU form: our fused recurrence": bare_loop(after_fused, steps, device, BATCH, SEQ, VOCAB),
        "seed form: reference loop, eager autograd": bare_loop(seed_model(hidden, layers, False), steps, device, BATCH, SEQ, VOCAB),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in recent torch; measured all the same
        try:
            scripted = torch.jit.script(generate.gru.gru_layer)
            variants["seed form: reference loop, TorchScript"] = with_layer(
                bare_loop(seed_model(hidden, layers, False), steps, device, BATCH, SEQ, VOCAB), scripted
            )
        except Exception as err:  # noqa: BLE001 - report any scripting failure and carry on
            notes.append(f"TorchScript variant skipped: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
    if not args.no_compile:
        compiled_cell = torch.compile(seed_cell, dynamic=False)
        run = with_layer(bare_loop(seed_model(hidden, layers, False), steps, device, BATCH, SEQ, VOCAB), layer_from_cell(compiled_cell))
        start = time.perf_counter()
        run()  # compiles (one graph for every step: the step's shapes never change)
        compile_rows.append({"variant": "torch.compile of one step (cell)", "steps unrolled": 1, "first call s (compile + run)": time.perf_counter() - start})
        variants["seed form: loop over a torch.compile'd step"] = run
    variants["seed form: our fused recurrence"] = bare_loop(seed_model(hidden, layers, True), steps, device, BATCH, SEQ, VOCAB)

    print(f"{layers} x {hidden}: {args.repeats} interleaved rounds of {steps} training steps ...", flush=True)
    results = interleave(variants, args.repeats)
    rate = median(results["matmul"])
    base = median(results["nn.GRU form: torch nn.GRU"])
    rows = []
    for name in list(variants)[1:]:
        per_step = median(results[name])
        memory = measure_peak(variants[name], device)
        rows.append(
            {
                "variant": name,
                "tokens/s": BATCH * SEQ / per_step,
                "vs torch nn.GRU": base / per_step,
                "fraction of matmul rate": fraction_of_rate(results[name], results["matmul"], flops_step),
                "peak MiB": memory["peak_cuda_mib"] if device.type == "cuda" else memory["peak_cpu_mib"],
                "rounds s/step": [round(x, 4) for x in results[name]],
            }
        )

    if args.compile_whole_layer:
        # torch.compile unrolls the Python loop: one graph per sequence length, compiled anew for each.
        steps_t = args.compile_whole_layer
        x = torch.randn(BATCH, steps_t, 3 * hidden, device=device, requires_grad=True)
        h = torch.zeros(BATCH, hidden, device=device)
        w = (torch.randn(3 * hidden, hidden, device=device) / hidden**0.5).requires_grad_()
        b = torch.zeros(3 * hidden, device=device, requires_grad=True)
        whole = torch.compile(generate.gru.gru_layer, dynamic=False)
        start = time.perf_counter()
        whole(x, h, w, b, False)[0].sum().backward()
        compile_rows.append({"variant": "torch.compile of the whole layer", "steps unrolled": steps_t, "first call s (compile + run)": time.perf_counter() - start})

    tables = {
        f"Training, {layers} x {hidden} (batch {BATCH}, seq_len {SEQ}, {args.device}): seed form vs nn.GRU form": (
            rows, ["variant", "tokens/s", "vs torch nn.GRU", "fraction of matmul rate", "peak MiB"]
        )
    }
    if compile_rows:
        tables["torch.compile: time of the first call (compilation)"] = (compile_rows, list(compile_rows[0]))
    notes += [
        f"matmul rate (same rounds): {rate:.1f} GFLOP/s (float32 2048^3).",
        "All variants run the same bare training loop (forward, cross-entropy, backward, clip, AdamW).",
        f"GPU figures: {'measured here' if device.type == 'cuda' else 'not measured (no GPU on this machine)'}.",
    ]
    write_results(f"seed_form_{layers}x{hidden}", command_line(), tables, {"notes": notes, "matmul_gflops": rate}, device=args.device)


if __name__ == "__main__":
    main()
