"""Training tokens/s: our trainer vs a bare nn.GRU loop of the same shapes, and the fraction of the matmul rate."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import (
    add_shapes,
    bare_loop,
    clock,
    command_line,
    compose,
    fraction_of_rate,
    interleave,
    matmul_rate,
    measure_peak,
    median,
    parse_args,
    quiet_stdout,
    shapes_of,
    sync,
    training_flops_per_token,
    write_results,
)
from torch import Tensor, nn

import generate.data
from generate.cli import run_train as train
from generate.model import GRULanguageModel, ModelSpec

BATCH, SEQ, EMBED, VOCAB = 64, 128, 128, 65  # the trainer's defaults; 65 = tiny Shakespeare's characters


class BareGRULM(nn.Module):
    """Embedding → nn.GRU → Linear with the same dropout as ours: what a user would write by hand."""

    def __init__(self, layers: int, hidden: int):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, EMBED)
        self.rnn = nn.GRU(EMBED, hidden, layers, batch_first=True, dropout=0.1)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, tokens: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor]:
        out, hidden = self.rnn(self.dropout(self.embedding(tokens)), hidden)  # (B, T, H)
        return self.head(self.dropout(out)), hidden


def trainer_run(layers: int, hidden: int, steps: int, device: torch.device, workdir: Path,
                extra: tuple[str, ...] = ()) -> Callable[[], float]:
    """A variant: seconds per step of generate.train.train itself, timed between its batch fetches.

    The trainer's loop starts every step with stream.next_batch(); the time between two calls is
    one whole step of the real trainer (forward, backward, clip, AdamW, scheduler, progress bar,
    metrics rows every `log_every` steps). Setup, the final evaluation and the checkpoint save fall
    outside those intervals and are not counted.
    """
    counter = itertools.count()
    original = generate.data.TokenStream.next_batch

    def run() -> float:
        stamps: list[float] = []
        now = clock(device)  # the same timer as the bare loops it is compared with

        def stamped(self: Any) -> Any:
            sync(device)  # the trainer syncs every step anyway (finite-gradient check); this aligns stamps on CUDA
            stamps.append(now())
            return original(self)

        cfg = compose(
            "config",
            [
                f"model.num_layers={layers}",
                f"model.hidden_size={hidden}",
                f"model.embedding_size={EMBED}",
                f"train.batch_size={BATCH}",
                f"train.seq_len={SEQ}",
                f"train.max_steps={steps + 2}",
                f"train.eval_every={steps + 2}",  # evaluation only after the last step
                "train.log_every=4",  # a metrics row (and a loss read-back) every 4 steps: more than the default 25
                f"train.device={device.type}",
                f"checkpoints_dir={workdir / 'checkpoints'}",
                f"dataset.cache_dir={workdir / 'cache'}",
                "dataset.val_fraction=0.01",  # a short final evaluation: it is not timed, only waited for
                "dataset.test_fraction=0.01",
                f"run_name=run{layers}x{hidden}-{next(counter)}",
                *extra,  # a variant's own settings (bench/ema_cost.py: train.ema_decay)
            ],
        )
        generate.data.TokenStream.next_batch = stamped  # type: ignore[method-assign]
        try:
            with quiet_stdout():
                train(cfg)
        finally:
            generate.data.TokenStream.next_batch = original  # type: ignore[method-assign]
        intervals = [b - a for a, b in itertools.pairwise(stamps)][1:]  # the first step is not counted (first-touch allocations)
        return sum(intervals) / len(intervals)

    return run


def matmul_breakdown(model: nn.Module, device: torch.device, flops_per_step: float, square_rate: float) -> dict[str, Any]:
    """Profile two training steps: the share of time in matrix products and the rate they run at."""
    steps = 2
    run = bare_loop(model, steps, device, BATCH, SEQ, VOCAB, warm_steps=0)
    run()  # warm
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        wall = run() * steps  # every profiled step is timed (warm_steps=0)
    matmul_ops = {"aten::addmm", "aten::mm", "aten::bmm", "aten::_mkl_linear"}  # where the FLOPs run (self time)
    by_op = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    matmul_s = sum(t for k, t in by_op.items() if k in matmul_ops)
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    return {
        "wall_s_per_step": wall / steps,
        "matmul_s_per_step": matmul_s / steps,
        "matmul_share": matmul_s / wall,
        "matmul_op_gflops": flops_per_step / (matmul_s / steps) / 1e9,
        "matmul_op_fraction_of_square_rate": flops_per_step / (matmul_s / steps) / 1e9 / square_rate,
        "top_ops_s_per_step": {k: t / steps for k, t in top},
    }


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--steps", type=int, default=0, help="timed steps per run (0: auto)")
        add_shapes(parser, " (GPU: 3x1024)")

    args = parse_args(__doc__, extra)
    device = torch.device(args.device)
    rows, overhead_rows, breakdowns = [], [], {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    for layers, hidden in shapes_of(args):
        steps = args.steps or (6 if hidden <= 256 else 4)
        if args.quick:
            steps = 2
        flops_step = training_flops_per_token(EMBED, hidden, layers, VOCAB) * BATCH * SEQ
        torch.manual_seed(0)
        ours = GRULanguageModel(ModelSpec(VOCAB, EMBED, hidden, layers, dropout=0.1, reset_after=True))
        variants = {
            "matmul": matmul_rate(device),
            "bare nn.GRU loop": bare_loop(BareGRULM(layers, hidden), steps, device, BATCH, SEQ, VOCAB),
            "bare loop, our model": bare_loop(ours, steps, device, BATCH, SEQ, VOCAB),
            "our trainer (generate.train)": trainer_run(layers, hidden, steps, device, workdir),
        }
        print(f"{layers} x {hidden}: {args.repeats} interleaved rounds of {steps} steps ...", flush=True)
        results = interleave(variants, args.repeats)
        rate = median(results["matmul"])
        base = median(results["bare nn.GRU loop"])
        for name in list(variants)[1:]:
            per_step = median(results[name])
            gflops = flops_step / per_step / 1e9
            memory = measure_peak(lambda fn=variants[name]: fn(), device)
            rows.append(
                {
                    "model": f"{layers} x {hidden}",
                    "variant": name,
                    "s/step": per_step,
                    "tokens/s": BATCH * SEQ / per_step,
                    "GFLOP/s": gflops,
                    "matmul GFLOP/s (same rounds)": rate,
                    "fraction of matmul rate": fraction_of_rate(results[name], results["matmul"], flops_step),
                    "speed vs bare nn.GRU": base / per_step,
                    "peak MiB": memory["peak_cuda_mib"] if device.type == "cuda" else memory["peak_cpu_mib"],
                    "rounds s/step": [round(x, 4) for x in results[name]],
                }
            )
        trainer, bare_ours = median(results["our trainer (generate.train)"]), median(results["bare loop, our model"])
        # Per-round ratios too: the trainer and the bare loop ran back to back in every round.
        ratios = [t / b for t, b in zip(results["our trainer (generate.train)"], results["bare loop, our model"], strict=True)]
        overhead_rows.append(
            {
                "model": f"{layers} x {hidden}",
                "trainer s/step": trainer,
                "bare loop (our model) s/step": bare_ours,
                "overhead (medians)": trainer / bare_ours - 1,
                "overhead (median of per-round ratios)": median(ratios) - 1,
                "trainer vs bare nn.GRU": base / trainer,
            }
        )
        if device.type == "cpu" and not args.quick and hidden == 512:
            print("profiling two steps of the bare loop, our model ...", flush=True)
            breakdowns[f"{layers} x {hidden}"] = matmul_breakdown(ours, device, flops_step, rate)
    breakdown_rows = [
        {
            "model": shape,
            "s/step": b["wall_s_per_step"],
            "in matmul ops s/step": b["matmul_s_per_step"],
            "matmul share of time": b["matmul_share"],
            "matmul ops GFLOP/s": b["matmul_op_gflops"],
            "matmul ops / square rate": b["matmul_op_fraction_of_square_rate"],
        }
        for shape, b in breakdowns.items()
    ]
    columns = ["model", "variant", "tokens/s", "GFLOP/s", "matmul GFLOP/s (same rounds)", "fraction of matmul rate", "speed vs bare nn.GRU", "peak MiB"]
    tables = {
        f"Training throughput (batch {BATCH}, seq_len {SEQ}, embedding {EMBED}, vocab {VOCAB}, {args.device})": (rows, columns),
        "Trainer overhead over the bare loop of the same model": (overhead_rows, list(overhead_rows[0])),
    }
    if breakdown_rows:
        tables["Where a training step's time goes (torch.profiler, bare loop, our model)"] = (breakdown_rows, list(breakdown_rows[0]))
    notes = [
        "FLOPs per token = 3 x forward; forward = sum over layers of 2*3H*(in+H) plus 2*H*V for the head.",
        "matmul rate = float32 2048x2048 @ 2048x2048 (CUDA: bf16 8192^2), measured in the same interleaved rounds.",
        "peak MiB = extra resident memory (CPU) / max allocated (CUDA) during one further run of the variant.",
        f"GPU figures: {'measured here' if device.type == 'cuda' else 'not measured (no GPU on this machine)'}.",
    ]
    write_results("train_speed", command_line(), tables, {"notes": notes, "breakdown": breakdowns}, device=args.device)
    shutil.rmtree(workdir, ignore_errors=True)  # the trainer runs' checkpoints and token cache


if __name__ == "__main__":
    main()
