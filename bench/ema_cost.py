"""The cost of train.ema_decay: seconds per step of the real trainer with the weight average off and on."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import add_shapes, command_line, interleave, median, parse_args, shapes_of, spread, write_results
from train_speed import BATCH, SEQ, trainer_run


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
        add_shapes(parser)

    args = parse_args(__doc__, extra)
    device = torch.device(args.device)
    steps = 2 if args.quick else args.steps
    workdir = Path(tempfile.mkdtemp(prefix="bench-ema-"))
    rows = []
    try:
        for layers, hidden in shapes_of(args):
            variants = {
                # each its own folder: run names count per variant
                "ema off": trainer_run(layers, hidden, steps, device, workdir / "off"),
                "ema_decay=0.999": trainer_run(layers, hidden, steps, device, workdir / "on", ("train.ema_decay=0.999",)),
            }
            print(f"{layers} x {hidden}: {args.repeats} interleaved rounds of {steps} steps ...", flush=True)
            results = interleave(variants, args.repeats)
            off, on = results["ema off"], results["ema_decay=0.999"]
            ratios = [b / a for a, b in zip(off, on, strict=True)]  # the two ran back to back in every round
            rows.append({
                "model": f"{layers} x {hidden}",
                "off s/step": spread(off),
                "on s/step": spread(on),
                "on / off (median of per-round ratios)": median(ratios),
                "tokens/s off": BATCH * SEQ / median(off),
                "tokens/s on": BATCH * SEQ / median(on),
            })
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    title = f"Trainer seconds per step, weight average off vs on (batch {BATCH}, seq_len {SEQ}, {args.device})"
    write_results("ema_cost", command_line(), {title: (rows, list(rows[0]))}, device=args.device)


if __name__ == "__main__":
    main()
