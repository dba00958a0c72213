"""A Hydra multirun sweep's jobs as one table: each job's swept settings, best validation loss and speed.

    python -m generate.train -m +experiment=jsb model.dropout=0.3,0.5 run_name=jsb_sweep
    python bench/sweep_table.py checkpoints/jsb_sweep [more run folders...] [--name jsb_sweep]

Each argument is a run folder (one job) or a multirun folder (its job folders are read). Every job's
metrics.jsonl gives the row; the table is printed and, with --name, written to bench/results/<name>.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, command_line, markdown_table


def job_row(folder: Path) -> dict[str, Any] | None:
    """A job folder's metrics → one row (None when it has no metrics yet)."""
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    vals = [(r["val_loss"], r["step"]) for r in rows if "val_loss" in r]
    train = [r for r in rows if "train_loss" in r]
    best, at = min(vals) if vals else (float("nan"), -1)
    return {
        "job": f"{folder.parent.name}/{folder.name}" if (folder.parent / "multirun.yaml").is_file() else folder.name,
        "best val (nats/token)": f"{best:.4f}",  # four decimals: the differences a sweep looks for
        "at step": at,
        "last step": rows[-1]["step"] if rows else 0,
        "last train loss": f"{train[-1]['train_loss']:.3f}" if train else "",
        "median tokens/s": statistics.median(r["tokens_per_s"] for r in train if "tokens_per_s" in r) if train else 0.0,
    }


def jobs(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if (path / "metrics.jsonl").is_file():
            found.append(path)
        else:
            found.extend(sorted(p for p in path.iterdir() if (p / "metrics.jsonl").is_file()))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--name", default="", help="also write bench/results/<name>.md")
    args = parser.parse_args()
    missing = [str(p) for p in args.folders if not p.is_dir()]
    if missing:
        sys.exit(f"error: not a run folder: {', '.join(missing)}; give checkpoints/<run_name>")
    rows = []
    for given in args.folders:  # each folder's jobs together, best first
        found = [row for folder in jobs([given]) if (row := job_row(folder))]
        rows += sorted(found, key=lambda r: float(r["best val (nats/token)"]))
    table = markdown_table(rows, list(rows[0]) if rows else ["job"])
    print(table)
    if args.name:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.name}.md").write_text(f"# {args.name}\n\n`{command_line()}`\n\n{table}\n")


if __name__ == "__main__":
    main()
