"""Peak memory of `python -m generate.sample length=N` on a 2 x 256 text model: it must not grow with N."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from generate.checkpoint import load_checkpoint, with_digest  # noqa: E402
from generate.model import GRULanguageModel, ModelSpec  # noqa: E402
from generate.storage import atomic_save  # noqa: E402


def make_checkpoint(path: Path) -> Path:
    """A 2 x 256 char model with the shipped Shakespeare vocabulary (random weights: memory does not depend on them)."""
    shipped = load_checkpoint(ROOT / "checkpoints" / "pretrained" / "shakespeare.pt")
    tokenizer = shipped["tokenizer"]
    spec = ModelSpec(vocab_size=shipped["model_spec"]["vocab_size"], embedding_size=128, hidden_size=256, num_layers=2)
    torch.manual_seed(0)
    model = GRULanguageModel(spec)
    atomic_save(with_digest({"model": model.state_dict(), "model_spec": spec.to_dict(), "tokenizer": tokenizer}), path)
    return path


def run(length: int, num_samples: int, folder: Path, checkpoint: Path) -> dict:
    """One `generate.sample` process; its peak RSS from the kernel (RUSAGE_CHILDREN of a fresh child)."""
    out_dir = folder / f"out-{length}"
    command = [sys.executable, "-m", "generate.sample", f"checkpoint={checkpoint}", f"length={length}",
               f"num_samples={num_samples}", "quiet=true", f"out_dir={out_dir}"]
    start = time.perf_counter()
    # A child per measurement: RUSAGE_CHILDREN's ru_maxrss is the largest child so far, so sizes run smallest first.
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(result.stderr[-2000:])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    written = sum(p.stat().st_size for p in out_dir.glob("sample_*.txt"))
    return {"length": length, "num_samples": num_samples, "seconds": round(seconds, 1),
            "tokens_per_s": round(length * num_samples / seconds), "peak_rss_mb": round(peak_mb, 1),
            "bytes_written": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", default="1000,100000,1000000,10000000", help="comma-separated, ascending")
    parser.add_argument("--num-samples", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = make_checkpoint(folder / "model.pt")
        for length in sorted(int(x) for x in args.lengths.split(",")):
            rows.append(run(length, args.num_samples, folder, checkpoint))
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine(), "rows": rows}
    (RESULTS / "long_sample.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| length | samples | seconds | tokens/s | peak RSS (MB) | bytes written |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['length']:,} | {r['num_samples']} | {r['seconds']} | {r['tokens_per_s']:,} | {r['peak_rss_mb']} | "
              f"{r['bytes_written']:,} |" for r in rows]
    (RESULTS / "long_sample.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
