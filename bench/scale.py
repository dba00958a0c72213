"""Data at scale: tokenize time, cache size and reload time, training peak RSS and eval time, by corpus size.

Each size is its own entry (`--only text-1g`), run in fresh child processes so every peak RSS is that
step's own: the child reports its own VmHWM (/proc/self/status; ru_maxrss would carry the bench's own
peak across fork and exec), the peaks of its anonymous and file-backed resident memory (RssAnon,
RssFile: memory-mapped pages of the cache, which the kernel can drop) sampled every 10 ms, and the
largest VmHWM of its worker processes. Results are merged into bench/results/scale.json by entry,
with the load average before and after each, and rendered to scale.md and scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, machine, markdown_table

SIZES = {  # entry → (kind, size): bytes of text or number of MIDI files
    "text-1m": ("text", 1 << 20), "text-10m": ("text", 10 << 20), "text-100m": ("text", 100 << 20),
    "text-1g": ("text", 1 << 30), "midi-2k": ("midi", 2_000), "midi-20k": ("midi", 20_000),
    "midi-100k": ("midi", 100_000),
}
WORDS = ("the", "and", "of", "to", "a", "in", "that", "is", "was", "he", "for", "it", "with", "as", "his", "on", "be",
         "at", "by", "I", "had", "not", "are", "but", "from", "or", "have", "an", "they", "which", "one", "you", "were",
         "her", "all", "she", "there", "would", "their", "we", "him", "been", "has", "when", "who", "will", "more",
         "ROMEO:", "JULIET:", "naïve", "café", "—", "“quoted”", "über", "Ångström", "✓", "déjà", "vu")
TRAIN = dict(max_steps=20, eval_every=20)  # the short training run: the default model and batch, one evaluation


# ---------------------------------------------------------------- synthetic inputs


def make_text(path: Path, size: int) -> None:
    """`size` bytes (about) of word salad in lines, with some non-ASCII characters; the same for the same size."""
    rng = random.Random(size)
    block_words = [rng.choice(WORDS) for _ in range(200_000)]
    with path.open("w", encoding="utf-8") as handle:
        written = 0
        while written < size:
            rng.shuffle(block_words)
            lines = [" ".join(block_words[i : i + 12]) for i in range(0, len(block_words), 12)]
            block = ("\n".join(lines) + "\n")[: size - written]
            handle.write(block)
            written += len(block.encode("utf-8"))


def midi_bytes(rng: random.Random) -> bytes:
    """A small format-0 MIDI file: a tempo, then a 40-90 note melody with rests (written directly, fast)."""
    events = bytearray(b"\x00\xff\x51\x03" + rng.choice([500_000, 600_000, 428_571]).to_bytes(3, "big"))
    pitch, gap = rng.randint(60, 72), 0
    for _ in range(rng.randint(40, 90)):
        pitch = min(84, max(48, pitch + rng.choice((-4, -2, -1, 1, 2, 3, 5))))
        length = rng.choice((120, 240, 240, 480, 480, 960))
        events += vlq(gap) + bytes([0x90, pitch, 90]) + vlq(length) + bytes([0x80, pitch, 0])
        gap = 0 if rng.random() > 0.1 else 240
    events += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(events)) + bytes(events)


def vlq(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def make_midi(folder: Path, count: int, start: int = 0) -> None:
    rng = random.Random(start)
    for index in range(start, start + count):
        sub = folder / f"{index // 1000:03d}"  # 1,000 files a folder, as real collections are nested
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"tune_{index:06d}.mid").write_bytes(midi_bytes(rng))


# ---------------------------------------------------------------- child steps (fresh processes)


def status_kib(pid: str = "self") -> dict[str, int]:
    """The memory lines of /proc/PID/status (VmHWM, VmRSS, RssAnon, RssFile, ...) in KiB; {} once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in handle) if v.strip().endswith("kB")}
    except (OSError, ValueError):
        return {}


class MemorySampler(threading.Thread):
    """Peaks of this process's RssAnon and RssFile, and of its children's VmHWM, sampled every `every` s."""

    def __init__(self, every: float = 0.01):
        super().__init__(daemon=True)
        self.every, self.peaks, self.done = every, {"RssAnon": 0, "RssFile": 0, "workers": 0}, threading.Event()

    def sample(self) -> None:
        own = status_kib()
        for key in ("RssAnon", "RssFile"):
            self.peaks[key] = max(self.peaks[key], own.get(key, 0))
        for children in Path("/proc/self/task").glob("*/children"):
            try:
                pids = children.read_text().split()
            except OSError:
                continue
            for pid in pids:
                self.peaks["workers"] = max(self.peaks["workers"], status_kib(pid).get("VmHWM", 0))

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.sample()

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join()
        self.sample()
        own = status_kib()
        return {"peak_rss_mib": own.get("VmHWM", 0) / 1024, "peak_anon_mib": self.peaks["RssAnon"] / 1024,
                "peak_file_mib": self.peaks["RssFile"] / 1024, "peak_rss_workers_mib": self.peaks["workers"] / 1024}


def child(step: str, kind: str, path: str, cache: str, ckpt: str) -> dict[str, Any]:
    """One measured step in this (fresh) process; returns its figures and this process's peak RSS."""
    import torch

    import generate
    import generate.trainer
    from generate.api import preset
    from generate.config import DatasetConfig
    from generate.data import load_corpus

    torch.set_num_threads(1)
    cfg = preset("dataset", kind, DatasetConfig)
    cfg.path, cfg.cache_dir = path, cache
    out: dict[str, Any] = {}
    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    if step in ("tokenize", "reload", "incremental"):
        corpus = load_corpus(cfg)
        out["seconds"] = time.perf_counter() - start
        out["tokens"] = {s: corpus.splits[s].num_tokens for s in ("train", "val", "test")}
        out["documents"] = {s: len(corpus.splits[s]) for s in ("train", "val", "test")}
    elif step.startswith("threads-"):  # the 20-step run at a given train.threads (0: torch's default)
        summary = generate.train(kind, path=path, cache_dir=cache, checkpoints_dir=ckpt, run_name=step,
                                 threads=int(step.split("-")[1]), max_steps=20, eval_every=1000)
        out["seconds"] = time.perf_counter() - start
        out["tokens_per_s"] = summary.tokens_per_s
    elif step == "train":
        evals: list[float] = []
        real = generate.trainer.evaluate_loss

        def timed_eval(*args: Any, **kwargs: Any) -> Any:
            begin = time.perf_counter()
            result = real(*args, **kwargs)
            evals.append(time.perf_counter() - begin)
            out["eval_tokens"] = result.tokens
            return result

        generate.trainer.evaluate_loss = timed_eval  # type: ignore[assignment]
        summary = generate.train(kind, path=path, cache_dir=cache, checkpoints_dir=ckpt, run_name="scale", **TRAIN)
        out["seconds"] = time.perf_counter() - start
        out["eval_seconds"] = evals[-1]
        out["tokens_per_s"] = summary.tokens_per_s
    out.update(sampler.stop())
    return out


def run_child(step: str, kind: str, path: Path, cache: Path, ckpt: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, __file__, "--child", step, kind, str(path), str(cache), str(ckpt)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{step} on {path} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {step}: {json.dumps(result)}", flush=True)
    return result


# ---------------------------------------------------------------- entries


def du_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def measure(entry: str, work: Path) -> dict[str, Any]:
    kind, size = SIZES[entry]
    base = work / entry
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    source = base / ("input.txt" if kind == "text" else "midi")
    begin = time.perf_counter()
    make_text(source, size) if kind == "text" else make_midi(source, size)
    row: dict[str, Any] = {"entry": entry, "kind": kind, "size": size, "input_write_s": time.perf_counter() - begin,
                           "load_before": os.getloadavg()}
    row["input_mib"] = (source.stat().st_size if kind == "text" else du_mib(source) * 2**20) / 2**20
    cache, ckpt = base / "cache", base / "checkpoints"
    row["tokenize"] = run_child("tokenize", kind, source, cache, ckpt)
    row["cache_mib"] = du_mib(cache)
    row["reload"] = run_child("reload", kind, source, cache, ckpt)
    if kind == "midi":
        make_midi(source, 10, start=size)  # 10 new files in a folder already tokenized
        row["incremental"] = run_child("incremental", kind, source, cache, ckpt)
        row["files_per_s"] = size / row["tokenize"]["seconds"]
    else:
        row["mb_per_s"] = size / 2**20 / row["tokenize"]["seconds"]
    row["train"] = run_child("train", kind, source, cache, ckpt)
    row["load_after"] = os.getloadavg()
    shutil.rmtree(base, ignore_errors=True)  # a 1 GB entry leaves ~3 GB behind otherwise
    return row


def measure_threads(work: Path, rounds: int = 2) -> dict[str, Any]:
    """Training tokens/s at train.threads=1 and at torch's default (2 here), in turn, round after round."""
    base = work / "threads"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    make_text(base / "input.txt", 1 << 20)
    run_child("reload", "text", base / "input.txt", base / "cache", base / "ck")  # tokenize once, outside the timing
    found: dict[str, Any] = {"load_before": os.getloadavg(), "rounds": {"1": [], "0": []}}
    for _ in range(rounds):
        for threads in ("1", "0"):
            shutil.rmtree(base / "ck", ignore_errors=True)
            found["rounds"][threads].append(run_child(f"threads-{threads}", "text", base / "input.txt", base / "cache",
                                                      base / "ck")["tokens_per_s"])
    found["load_after"] = os.getloadavg()
    shutil.rmtree(base, ignore_errors=True)
    return found


def report(results: dict[str, Any]) -> None:
    """scale.md (tables) and scale.png (time and peak RSS against size) from everything measured so far."""
    rows = []
    for entry in SIZES:
        if entry not in results["entries"]:
            continue
        r = results["entries"][entry]
        rows.append({
            "entry": entry, "input MiB": r["input_mib"], "tokenize s": r["tokenize"]["seconds"],
            "rate": f"{r['files_per_s']:,.0f} files/s" if "files_per_s" in r else f"{r['mb_per_s']:.1f} MiB/s",
            "tokenize peak RSS MiB": max(r["tokenize"]["peak_rss_mib"], r["tokenize"]["peak_rss_workers_mib"]),
            "cache MiB": r["cache_mib"], "reload s": r["reload"]["seconds"],
            "+10 files s": r.get("incremental", {}).get("seconds"),
            "tokenize anon / file MiB": anon_file(r["tokenize"]),
            "train 20 steps peak RSS MiB": r["train"]["peak_rss_mib"], "train anon / file MiB": anon_file(r["train"]),
            "eval s": r["train"]["eval_seconds"],
            "eval tokens": r["train"].get("eval_tokens"),
            "load avg before/after": f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}",
        })
    columns = list(rows[0]) if rows else []
    info = results["machine"]
    text = [f"# scale\n\n`python bench/scale.py --only ENTRY` (one entry at a time), {info['cpu']}, {info['cores']} cores,"
            f" torch {info['torch']} (1 thread). Each step runs in a fresh process; peak RSS is that process's own"
            " VmHWM (for tokenizing, the larger of the main process and its worker processes); anon / file are the"
            " sampled peaks of its RssAnon and RssFile (file: mapped pages, page cache the kernel can drop). Rows"
            " without them were measured before, with ru_maxrss.\n",
            markdown_table(rows, columns)]
    if "threads" in results:
        t = results["threads"]
        text.append(f"\n## Threads (`--threads-check`): 20 training steps, default model, 1 MiB text\n\n"
                    f"train.threads=1: {', '.join(f'{v:,.0f}' for v in t['rounds']['1'])} tokens/s; "
                    f"torch's default (0 → {info['cores']} threads): {', '.join(f'{v:,.0f}' for v in t['rounds']['0'])}"
                    f" tokens/s (round by round, in turn); load average {t['load_before'][0]:.2f} → "
                    f"{t['load_after'][0]:.2f}.")
    (RESULTS / "scale.md").write_text("\n".join(text) + "\n")
    print((RESULTS / "scale.md").read_text())
    plot(results)


def anon_file(step: dict[str, Any]) -> str:
    if "peak_anon_mib" not in step:
        return ""
    return f"{step['peak_anon_mib']:.0f} / {step['peak_file_mib']:.0f}"


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for col, kind, unit in ((0, "text", "input size (MiB)"), (1, "midi", "MIDI files")):
        entries = [r for r in results["entries"].values() if r["kind"] == kind]
        entries.sort(key=lambda r: r["size"])
        xs = [r["input_mib"] if kind == "text" else r["size"] for r in entries]
        if not xs:
            continue
        time_ax, rss_ax = axes[0][col], axes[1][col]
        time_ax.plot(xs, [r["tokenize"]["seconds"] for r in entries], "o-", label="tokenize")
        time_ax.plot(xs, [r["reload"]["seconds"] for r in entries], "s-", label="reload cache")
        time_ax.plot(xs, [r["train"]["eval_seconds"] for r in entries], "^-", label="one evaluation")
        if kind == "midi":
            time_ax.plot(xs, [r["incremental"]["seconds"] for r in entries], "d-", label="+10 files")
        rss_ax.plot(xs, [max(r["tokenize"]["peak_rss_mib"], r["tokenize"]["peak_rss_workers_mib"]) for r in entries],
                    "o-", label="tokenize")
        rss_ax.plot(xs, [r["train"]["peak_rss_mib"] for r in entries], "^-", label="train 20 steps")
        anon = [(x, r["tokenize"]["peak_anon_mib"], r["train"]["peak_anon_mib"]) for x, r in zip(xs, entries)
                if "peak_anon_mib" in r["train"]]
        if anon:
            rss_ax.plot([a[0] for a in anon], [a[1] for a in anon], "o--", label="tokenize, anonymous only")
            rss_ax.plot([a[0] for a in anon], [a[2] for a in anon], "^--", label="train, anonymous only")
        for ax, label in ((time_ax, "seconds"), (rss_ax, "peak RSS (MiB)")):
            ax.set_xscale("log")
            ax.set_xlabel(unit)
            ax.set_ylabel(label)
            ax.set_title(f"{kind}: {label}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "scale.png", dpi=110)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:7])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(SIZES), help="entries to run (repeatable; default all)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gru-scale"), help="inputs and caches (deleted after)")
    parser.add_argument("--report", action="store_true", help="only re-render scale.md / scale.png")
    parser.add_argument("--threads-check", action="store_true", help="only compare train.threads=1 with torch's default")
    args = parser.parse_args()
    store = RESULTS / "scale.json"
    results = json.loads(store.read_text()) if store.is_file() else {"entries": {}}
    results["machine"] = machine()
    if args.threads_check:
        results["threads"] = measure_threads(args.workdir)
        store.write_text(json.dumps(results, indent=2) + "\n")
    for entry in [] if args.report or args.threads_check else args.only or list(SIZES):
        print(f"{entry}: load average {os.getloadavg()}", flush=True)
        results["entries"][entry] = measure(entry, args.workdir)
        RESULTS.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(results, indent=2) + "\n")
    report(results)


if __name__ == "__main__":
    main()
