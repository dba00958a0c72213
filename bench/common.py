"""Shared benchmark helpers: interleaved timing, the matmul rate, peak memory, and result files."""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# The load when the benchmark started (this module is imported first thing), beside the one at the end.
START_LOAD = os.getloadavg() if hasattr(os, "getloadavg") else None
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # `python bench/x.py` from anywhere imports this checkout's package
    sys.path.insert(0, str(ROOT))


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """--threads / --repeats / --quick, plus whatever `extra` adds; sets torch's thread count."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=7, help="rounds of the interleaved measurements (>= 7: min-max)")
    parser.add_argument("--quick", action="store_true", help="smallest sizes only, one round (smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    if extra:
        extra(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = 1
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    return args


def add_shapes(parser: argparse.ArgumentParser, note: str = "") -> None:
    """--shapes: the models to time, as layers x hidden (read back with shapes_of)."""
    parser.add_argument("--shapes", default="2x256,2x512", help=f"layers x hidden, comma-separated{note}")


def shapes_of(args: argparse.Namespace) -> list[tuple[int, int]]:
    """--shapes as (layers, hidden) pairs; --quick keeps the first."""
    shapes = [(int(layers), int(hidden)) for layers, hidden in (shape.split("x") for shape in args.shapes.split(","))]
    return shapes[:1] if args.quick else shapes


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer brackets the work itself (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def clock(device: torch.device | str = "cpu") -> Callable[[], float]:
    """The timer for a figure: CPU time (time.process_time) for 1-thread CPU work, else wall time.

    On a shared machine a 1-thread process waits for a core while others run; its CPU time leaves
    that wait out, its wall time does not. With several threads CPU time would sum them, and GPU
    work is not CPU time, so those are timed by the wall clock.
    """
    one_thread_cpu = torch.device(device).type == "cpu" and torch.get_num_threads() == 1
    return time.process_time if one_thread_cpu else time.perf_counter


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> float:
    """Seconds one call of fn takes (GPU work included), by clock(device)."""
    now = clock(device)
    sync(device)
    start = now()
    fn()
    sync(device)
    return now() - start


def interleave(variants: dict[str, Callable[[], float]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Run each variant once per round, round after round (A B C A B C ...), and collect what each returns.

    On a shared machine the load changes from second to second; measuring the variants in turn,
    in the same rounds, exposes them to the same conditions, so their ratio is what is trustworthy.
    Each variant returns its own figure (e.g. seconds per step). The rotation changes the order
    each round so that no variant always runs right after a particular other one.
    """
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    results: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(repeats):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            results[name].append(variants[name]())
    return results


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """A figure as its median and the range over rounds: "1.23 [1.20-1.31]"."""
    def fmt(v: float) -> str:
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"

    return f"{fmt(median(values))} [{fmt(min(values))}-{fmt(max(values))}]"


def matmul_rate(device: torch.device | str = "cpu", size: int = 2048, calls: int = 3) -> Callable[[], float]:
    """A variant for interleave(): GFLOP/s of a (size x size) @ (size x size) product (median of calls).

    float32 on the CPU; on CUDA bf16 (what training under autocast multiplies in) and size 8192.
    """
    cuda = torch.device(device).type == "cuda"
    size = 8192 if cuda else size
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2 * size**3

    def run() -> float:
        times = [timed(lambda: torch.mm(a, b), device) for _ in range(calls)]
        return flops / median(times) / 1e9

    return run


def gru_forward_flops(embedding: int, hidden: int, layers: int, vocab: int) -> int:
    """Multiply-add FLOPs per token of one forward pass: 2·3H·(in + H) per GRU layer, plus the head."""
    total = 0
    for layer in range(layers):
        in_size = embedding if layer == 0 else hidden
        total += 2 * 3 * hidden * (in_size + hidden)
    return total + 2 * hidden * vocab


def training_flops_per_token(embedding: int, hidden: int, layers: int, vocab: int) -> int:
    """Forward + backward ≈ 3 × forward (the backward computes input and weight gradients: 2 products each)."""
    return 3 * gru_forward_flops(embedding, hidden, layers, vocab)


# ---------------------------------------------------------------- memory


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_memory() -> None:
    """Give freed heap back to the OS (glibc keeps it otherwise, which hides the next peak)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block: extra resident memory on the CPU, max allocated on CUDA (MiB).

    On Linux the resident high-water mark is reset first (/proc/self/clear_refs, "5"), so each
    block is measured on its own within one process; elsewhere it falls back to
    resource.getrusage's lifetime peak, which only shows growth (noted as `cpu_method`).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.cpu_mib: float | None = None
        self.cuda_mib: float | None = None
        self.cpu_method = "VmHWM"

    def __enter__(self) -> PeakMemory:
        _release_free_memory()
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.base = _rss_kib("VmRSS")
        except OSError:
            import resource

            self.cpu_method = "ru_maxrss"
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cpu_method == "VmHWM":
            peak = _rss_kib("VmHWM")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if peak is not None and self.base is not None:
            self.cpu_mib = max(0, peak - self.base) / 1024
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.cuda_mib = (torch.cuda.max_memory_allocated() - self.cuda_base) / 2**20


def measure_peak(fn: Callable[[], Any], device: torch.device | str = "cpu") -> dict[str, float | None]:
    with PeakMemory(device) as peak:
        fn()
    return {"peak_cpu_mib": peak.cpu_mib, "peak_cuda_mib": peak.cuda_mib}


# ---------------------------------------------------------------- results


def machine() -> dict[str, Any]:
    """What the numbers ran on."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": START_LOAD,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_tag(device: str = "cpu") -> str:
    """Part of every result file's name: the thread count (CPU), so runs at 1 and 2 threads sit side by side."""
    return "cuda" if device == "cuda" else f"{torch.get_num_threads()}threads"


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            if value == 0 or abs(value) >= 100:
                return f"{value:,.0f}"
            if abs(value) >= 1:
                return f"{value:.2f}"
            return f"{value:.3f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(col)) for col in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str,
    command: str,
    tables: dict[str, tuple[list[dict[str, Any]], list[str]]],
    extra: dict[str, Any] | None = None,
    device: str = "cpu",
) -> Path:
    """bench/results/<name>.json (everything) and <name>.md (the tables, the machine, the command)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"{name}-{run_tag(device)}"
    info = machine()
    info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    payload = {"command": command, "machine": info, "tables": {k: rows for k, (rows, _) in tables.items()}, **(extra or {})}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    parts = [
        f"# {name}",
        "",
        f"`{command}` — {info['date']}, {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), load average (1, 5, 15 min) {info['load_average_at_start']} at start "
        f"and {info['load_average_at_end']} at the end; 1-thread CPU figures are CPU time (time.process_time).",
        "The machine is shared and noisy: each figure is the median over interleaved rounds; ratios between "
        "variants measured in the same rounds are what count.",
    ]
    for title, (rows, columns) in tables.items():
        parts += ["", f"## {title}", "", markdown_table(rows, columns)]
    notes = (extra or {}).get("notes", [])
    if notes:
        parts += [""] + [f"- {note}" for note in notes]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(parts) + "\n")
    print(path.read_text())
    return path


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence what a measured call prints (progress bars, status lines)."""
    with open(os.devnull, "w") as null:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = null, null
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old_out, old_err


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def compose(config_name: str, overrides: list[str]) -> Any:
    """The config the CLI would build from these overrides (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from generate.config import CONFIG_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def bare_loop(
    model: torch.nn.Module, steps: int, device: torch.device, batch: int, seq: int, vocab: int, warm_steps: int = 1
) -> Callable[[], float]:
    """A variant: seconds per training step of a plain loop (forward, loss, backward, clip, AdamW).

    Random token batches (speed does not depend on the data); the hidden state is carried and
    detached between steps (truncated BPTT) as the trainer does; on CUDA, bf16 autocast as the
    trainer does. The first `warm_steps` of every run are not counted (first-touch allocations).
    """
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    data = torch.randint(vocab, (4, batch, seq + 1), device=device)  # a few fixed batches
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    now = clock(device)

    def run() -> float:
        hidden = None
        start = now()
        for i in range(steps + warm_steps):
            if i == warm_steps:
                sync(device)
                start = now()
            window = data[i % len(data)]  # (B, T + 1)
            with autocast:
                logits, new_hidden = model(window[:, :-1], hidden)  # (B, T, V)
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            hidden = new_hidden.detach()
        sync(device)
        return (now() - start) / steps

    return run


def fraction_of_rate(step_seconds: list[float], rates: list[float], flops_per_step: float) -> float:
    """Median over rounds of (achieved FLOP/s ÷ the matmul rate measured in the same round).

    Pairing each round's step time with that round's matmul rate cancels most of the load
    changes between rounds, which the ratio of two separate medians does not.
    """
    return median([flops_per_step / t / 1e9 / r for t, r in zip(step_seconds, rates, strict=True)])
