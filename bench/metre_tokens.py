"""BAR tokens vs position-in-bar tokens vs no bar marks: validation NLL per time step after equal training steps.

Trains three small melody models on the folk preset's settings over music21's Ryan's Mammoth (metre/key/tempo
controls on; the smaller of the two bundled collections, so the three runs stay short),
identical but for dataset.metre, for the same number of optimizer steps, then scores the validation split:
NLL per grid time step over all tokens (bar and control tokens' own cost included) and over the grid-step
tokens only. A run whose best.pt is already in --checkpoints is reused, not trained again.

    python bench/metre_tokens.py --checkpoints /tmp/metre_ck --cache /tmp/metre_cache
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import ROOT, command_line, parse_args, write_results

import generate

METRES = ("none", "bar", "position")


def train_command(metre: str, checkpoints: Path, cache: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "generate.train", "+experiment=folk", "dataset.path=${music21_corpus:ryansMammoth}",
            f"dataset.metre={metre}", "dataset.num_workers=1",
            f"dataset.cache_dir={cache}", "model.hidden_size=128", "model.embedding_size=64", f"train.max_steps={steps}",
            "train.eval_every=100", "train.threads=1", f"run_name=cmp_{metre}", f"checkpoints_dir={checkpoints}"]


def step_nll(path: Path, cache: Path) -> dict[str, Any]:
    """Validation NLL per time step: all tokens, and the grid-step tokens alone."""
    model = generate.load(path)
    corpus = model.dataset(cache_dir=str(cache))
    tok, net = model.tokenizer, model.net.eval()
    layer = tok.layer
    total = grid_only = 0.0
    steps = 0
    with torch.inference_mode():
        for doc in corpus.splits["val"]:
            ids = [int(t) for t in doc]
            logits, _ = net(torch.tensor([[tok.SEP] + ids[:-1]]))
            nll = torch.nn.functional.cross_entropy(logits[0].float(), torch.tensor(ids), reduction="none")
            extra = torch.tensor([layer.base <= t < layer.end for t in ids])
            total += float(nll.sum())
            grid_only += float(nll[~extra].sum())
            steps += tok.count_time_steps(ids)
    return {"nll_per_step": round(total / steps, 4), "nll_per_step_grid_tokens": round(grid_only / steps, 4),
            "val_tokens": sum(len(d) for d in corpus.splits["val"]), "time_steps": steps, "vocab": tok.vocab_size}


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints" / "metre_bench")
        parser.add_argument("--cache", type=Path, default=ROOT / "cache")
        parser.add_argument("--steps", type=int, default=400)

    args = parse_args("BAR vs position tokens: validation NLL per time step", extra)
    rows = []
    for metre in METRES:
        best = args.checkpoints / f"cmp_{metre}" / "best.pt"
        command = train_command(metre, args.checkpoints, args.cache, args.steps)
        seconds = None
        if not best.is_file():
            began = time.time()
            subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
            seconds = round(time.time() - began)
        rows.append({"metre": metre, **step_nll(best, args.cache), "train_seconds": seconds,
                     "train_command": " ".join(command[1:])})
    notes = ["Equal optimizer steps (batch 32 x 128 tokens): a scheme with more tokens per time step sees fewer "
             "time steps of music in training."]
    write_results("metre_tokens", command_line(), {"validation NLL per time step": (
        rows, ["metre", "nll_per_step", "nll_per_step_grid_tokens", "val_tokens", "time_steps", "vocab"])},
        {"notes": notes})


if __name__ == "__main__":
    main()
