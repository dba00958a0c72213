"""Before/after a refactor: the same sampling and training work timed in two checkouts, interleaved rounds.

    git worktree add /tmp/before <commit>
    python bench/compare_trees.py --before /tmp/before --after . --rounds 7

Each measurement is a fresh process (1 thread, process CPU time) that imports the toolkit from its
checkout: per-token time of batch-1 sampling (2 x 256 model, 3000 tokens, after `--warmups` calls)
and per-step time of a fused training step (batch 64 x 64). Both checkouts build the same model from
the same seed; the sampling entry point is whichever of generate.decoding.generate_tokens (now) or
generate.sample.generate (before the library redesign) the checkout has.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SAMPLE = """
import time, torch; torch.set_num_threads(1); torch.manual_seed(0)
from generate.model import GRULanguageModel, ModelSpec
m = GRULanguageModel(ModelSpec(65, 128, 256, 2, reset_after=RESET_AFTER)).eval()
import os
if os.path.exists("generate/decoding.py"):
    from generate.decoding import generate_tokens
    run = lambda: generate_tokens(m, [0], 3000, seed=1)
else:  # a checkout from before the redesign (test the file: an editable install could lend the module)
    from types import SimpleNamespace
    from generate.sample import generate
    cfg = SimpleNamespace(temperature=1.0, top_k=0, top_p=1.0, length=3000, num_samples=1, seed=1)
    run = lambda: generate(m, [0], cfg, torch.device("cpu"))
for _ in range(WARMUPS): run()
t = time.process_time(); run(); print((time.process_time() - t) / 3000 * 1e6)
"""
TRAIN = """
import time, torch; torch.set_num_threads(1); torch.manual_seed(0)
from generate.model import GRULanguageModel, ModelSpec
m = GRULanguageModel(ModelSpec(65, 128, 256, 2, reset_after=RESET_AFTER)).train()
opt = torch.optim.AdamW(m.parameters(), 1e-3)
x, y = torch.randint(0, 65, (64, 64)), torch.randint(0, 65, (64, 64))
def step():
    logits, _ = m(x)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3): step()
t = time.process_time()
for _ in range(20): step()
print((time.process_time() - t) / 20 * 1e3)
"""


def measure(code: str, checkout: Path) -> float:
    env = {"OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmups", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compare_trees.json")
    args = parser.parse_args()
    results = {"load_before": os.getloadavg(), "rows": {}}
    for name, template, unit in (("sampling", SAMPLE, "µs/token"), ("training step", TRAIN, "ms/step")):
        for reset_after in (True, False):
            code = template.replace("RESET_AFTER", str(reset_after)).replace("WARMUPS", str(args.warmups))
            runs: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(args.rounds):  # interleaved, so drift in the machine's speed hits both alike
                for side in ("before", "after"):
                    runs[side].append(measure(code, getattr(args, side)))
            ratios = sorted(b / a for b, a in zip(runs["before"], runs["after"], strict=True))
            key = f"{name}, reset_after={reset_after}"
            results["rows"][key] = {"unit": unit, **runs, "before/after": ratios}
            print(f"{key}: before {statistics.median(runs['before']):.1f}, after {statistics.median(runs['after']):.1f} "
                  f"{unit}; before/after median {statistics.median(ratios):.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f})",
                  flush=True)
    results["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
