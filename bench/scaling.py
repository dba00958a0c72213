"""Scaling curves: training tokens/s vs hidden size and vs batch size, and sampling time vs length (PNG + tables)."""

from __future__ import annotations

import time
from typing import Any

import torch
from common import (
    RESULTS,
    bare_loop,
    command_line,
    fraction_of_rate,
    interleave,
    matmul_rate,
    median,
    parse_args,
    run_tag,
    sync,
    training_flops_per_token,
    write_results,
)
from torch import nn

from generate.decoding import generate_tokens
from generate.model import GRULanguageModel, ModelSpec

EMBED, VOCAB, LAYERS, SEQ = 128, 65, 2, 32  # short windows keep the 1024-wide points to seconds


def models(hidden: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    ours = GRULanguageModel(ModelSpec(VOCAB, EMBED, hidden, LAYERS, dropout=0.1, reset_after=True))
    torch.manual_seed(0)
    plain = GRULanguageModel(ModelSpec(VOCAB, EMBED, hidden, LAYERS, dropout=0.1, reset_after=True))
    plain.fused = False  # torch's nn.GRU
    return {"ours (fused)": ours, "torch nn.GRU": plain}


def training_point(hidden: int, batch: int, steps: int, repeats: int, device: torch.device) -> list[dict[str, Any]]:
    variants = {"matmul": matmul_rate(device)}
    for name, model in models(hidden).items():
        variants[name] = bare_loop(model, steps, device, batch, SEQ, VOCAB)
    results = interleave(variants, repeats)
    rate = median(results["matmul"])
    flops_token = training_flops_per_token(EMBED, hidden, LAYERS, VOCAB)
    rows = []
    for name in ("ours (fused)", "torch nn.GRU"):
        per_step = median(results[name])
        tokens_s = batch * SEQ / per_step
        rows.append(
            {"hidden": hidden, "batch": batch, "variant": name, "tokens/s": tokens_s,
             "fraction of matmul rate": fraction_of_rate(results[name], results["matmul"], flops_token * batch * SEQ),
             "matmul GFLOP/s": rate}
        )
    return rows


def sampling_curve(lengths: list[int], repeats: int, device: torch.device) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = GRULanguageModel(ModelSpec(VOCAB, EMBED, 256, LAYERS, reset_after=True)).to(device).eval()

    def variant(n: int) -> Any:
        def run() -> float:
            sync(device)
            start = time.perf_counter()
            generate_tokens(model, [0], n, seed=1, device=device)
            sync(device)
            return time.perf_counter() - start

        return run

    results = interleave({str(n): variant(n) for n in lengths}, repeats)
    times = [median(results[str(n)]) for n in lengths]
    # Least-squares line t = a + b·n; linear growth means the residuals stay small at every length.
    count = len(lengths)
    mean_n, mean_t = sum(lengths) / count, sum(times) / count
    slope = sum((n - mean_n) * (t - mean_t) for n, t in zip(lengths, times, strict=True)) / sum((n - mean_n) ** 2 for n in lengths)
    intercept = mean_t - slope * mean_n
    ss_res = sum((t - (intercept + slope * n)) ** 2 for n, t in zip(lengths, times, strict=True))
    ss_tot = sum((t - mean_t) ** 2 for t in times)
    return [
        {"length": n, "seconds": t, "µs per token": t / n * 1e6, "fit seconds": intercept + slope * n,
         "fit slope µs/token": slope * 1e6, "fit intercept ms": intercept * 1e3, "R²": 1 - ss_res / ss_tot}
        for n, t in zip(lengths, times, strict=True)
    ]


def plot(hidden_rows: list[dict[str, Any]], batch_rows: list[dict[str, Any]], length_rows: list[dict[str, Any]], device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, rows, key, title in ((axes[0], hidden_rows, "hidden", f"training, batch 64, seq {SEQ}"),
                                 (axes[1], batch_rows, "batch", f"training, hidden 256, seq {SEQ}")):
        for variant, style in (("ours (fused)", "o-"), ("torch nn.GRU", "s--")):
            points = [(r[key], r["tokens/s"]) for r in rows if r["variant"] == variant]
            ax.plot(*zip(*points, strict=True), style, label=variant)
        ax.set_xscale("log", base=2)
        if key == "hidden":  # tokens/s falls ~30x from 128 to 1024
            ax.set_yscale("log")
        ax.set_xlabel(f"{key} size")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{LAYERS}-layer GRU {title}")
        ax.grid(alpha=0.3)
        ax.legend()
        twin = ax.twinx()
        points = [(r[key], r["fraction of matmul rate"]) for r in rows if r["variant"] == "ours (fused)"]
        twin.plot(*zip(*points, strict=True), ":", color="gray")
        twin.set_ylabel("ours: fraction of matmul rate (dotted)")
        twin.set_ylim(0, 1)
    lengths = [r["length"] for r in length_rows]
    axes[2].plot(lengths, [r["seconds"] for r in length_rows], "o", label="measured")
    axes[2].plot(lengths, [r["fit seconds"] for r in length_rows], "-", label=f"linear fit (R² = {length_rows[0]['R²']:.4f})")
    axes[2].set_xlabel("tokens generated (batch 1)")
    axes[2].set_ylabel("seconds")
    axes[2].set_title("sampling time vs length (2 x 256)")
    axes[2].grid(alpha=0.3)
    axes[2].legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"scaling-{run_tag(device)}.png", dpi=100)
    plt.close(fig)


def main() -> None:
    args = parse_args(__doc__)
    device = torch.device(args.device)
    hiddens = [128, 256] if args.quick else [128, 256, 512, 768, 1024]
    batches = [8, 64] if args.quick else [8, 16, 32, 64, 128, 256]
    lengths = [100, 200] if args.quick else [125, 250, 500, 1000, 2000, 4000]
    steps = 2
    hidden_rows, batch_rows = [], []
    for hidden in hiddens:
        print(f"hidden {hidden} ...", flush=True)
        hidden_rows += training_point(hidden, 64, steps, args.repeats, device)
    for batch in batches:
        print(f"batch {batch} ...", flush=True)
        batch_rows += training_point(256, batch, steps, args.repeats, device)
    print("sampling lengths ...", flush=True)
    length_rows = sampling_curve(lengths, args.repeats, device)
    plot(hidden_rows, batch_rows, length_rows, args.device)
    columns = ["hidden", "batch", "variant", "tokens/s", "fraction of matmul rate", "matmul GFLOP/s"]
    tables = {
        f"Training tokens/s vs hidden size ({LAYERS} layers, batch 64, seq_len {SEQ})": (hidden_rows, columns),
        f"Training tokens/s vs batch size ({LAYERS} x 256, seq_len {SEQ})": (batch_rows, columns),
        "Sampling time vs length (batch 1, 2 x 256, generate.sample.generate)": (
            length_rows, ["length", "seconds", "µs per token", "fit seconds", "fit slope µs/token", "fit intercept ms", "R²"]
        ),
    }
    notes = [
        f"Plot: bench/results/scaling-{run_tag(args.device)}.png. Training points are bare loops (forward, loss, backward, clip, AdamW), "
        "median of interleaved rounds; the fraction of the matmul rate (float32 2048^3) pairs each round with the matmul measured in that round.",
        f"GPU figures: {'measured here' if device.type == 'cuda' else 'not measured (no GPU on this machine)'}.",
    ]
    write_results("scaling", command_line(), tables, {"notes": notes}, device=args.device)


if __name__ == "__main__":
    main()
