"""Piano done right, measured on a real piano folder: notes lost to the pitch range, and stuck notes in samples.

    python bench/piano_folder.py FOLDER               # a piano folder from music21's corpus (no network)
    python bench/piano_events.py FOLDER --steps 400   # this benchmark (a few minutes on 1 thread)

1. The folder tokenized with dataset.tokenizer=events at its default range (21..108) and at the old
   melody range 48..84: notes dropped to the range, out of all the pitched notes in the files.
2. A small events model trained briefly (1 thread), sampled until each sample lasts at least 60 s: the
   longest note of the first 60 s against the training notes' 99.9th-percentile duration (the cap the
   tokenizer learned, and the same figure computed from the MIDI files' notes in seconds), and what the
   same tokens would give without the cap (notes over 5 s, their share of the sounding time).
Writes bench/results/piano_events-<N>threads.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import command_line, compose, write_results

from generate.tokenizers.events import EventTokenizer


def folder_notes(folder: Path) -> np.ndarray:
    """(pitch, seconds) of every pitched note in the folder's MIDI files (symusic, the reader training uses)."""
    from generate.music.read import midi_tracks, read_midi

    rows = [(n.pitch, n.end - n.start) for path in sorted(folder.rglob("*.mid"))
            for t in midi_tracks(read_midi(path), "second") if not t.is_drum for n in t.notes]
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def range_loss(folder: Path, cache: Path, overrides: list[str]) -> dict:
    from generate.config import TrainRunConfig, to_object
    from generate.data import load_corpus

    cfg = to_object(compose("config", ["dataset=midi", f"dataset.path={folder}", f"dataset.cache_dir={cache}",
                                       "dataset.tokenizer=events", *overrides]), TrainRunConfig)
    corpus = load_corpus(cfg.dataset, verbose=False)
    return {"range": f"{corpus.tokenizer.min_pitch}..{corpus.tokenizer.max_pitch}",
            "notes dropped": corpus.stats["counts"].get("notes outside the pitch range dropped", 0),
            "files used": corpus.stats["files_used"], "train tokens": corpus.stats["tokens"]["train"]}


def stuck(notes: list, seconds: float = 5.0) -> tuple[int, float]:
    """Notes longer than `seconds`, and their share of all sounding time."""
    lengths = np.array([n.end - n.start for n in notes]) if notes else np.zeros(0)
    total = lengths.sum()
    return int((lengths > seconds).sum()), float(lengths[lengths > seconds].sum() / total) if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--length", type=int, default=8000, help="tokens per sample (each must reach 60 s)")
    args = parser.parse_args()
    import generate
    from generate.cli import run_train

    work = Path(tempfile.mkdtemp(prefix="piano_events."))
    try:
        notes = folder_notes(args.folder)
        outside = int(((notes[:, 0] < 48) | (notes[:, 0] > 84)).sum())
        ranges = [range_loss(args.folder, work / "cache", []),
                  range_loss(args.folder, work / "cache", ["dataset.min_pitch=48", "dataset.max_pitch=84"])]
        for row in ranges:
            row["share of notes"] = f"{row['notes dropped'] / len(notes):.2%}"
        began = time.monotonic()
        run_train(compose("config", [
            "dataset=midi", f"dataset.path={args.folder}", f"dataset.cache_dir={work / 'cache'}", "dataset.tokenizer=events",
            f"checkpoints_dir={work / 'ckpt'}", "run_name=piano", "model.hidden_size=256", "model.embedding_size=64",
            "model.num_layers=1", f"train.max_steps={args.steps}", "train.batch_size=16", "train.seq_len=128",
            "train.threads=1", f"train.eval_every={max(1, args.steps // 2)}", "train.eval_tokens=16384"]))
        train_minutes = (time.monotonic() - began) / 60
        model = generate.load(work / "ckpt" / "piano" / "best.pt")
        tok = model.tokenizer
        file_p999 = float(np.percentile(notes[:, 1], 99.9))
        uncapped = EventTokenizer(tok.min_pitch, tok.max_pitch, max_duration=1e9)
        rows = []
        for i in range(args.samples):
            raw = generate_ids(model, args.length, i)
            piece, free = tok.decode(raw), uncapped.decode(raw)
            minute = [n for n in piece.notes if n.start < 60.0]
            over, share = stuck([n for n in free.notes if n.start < 60.0])
            rows.append({
                "sample": i, "seconds": round(piece.duration, 1), "notes in 60 s": len(minute),
                "longest note s": round(max((n.end - n.start for n in minute), default=0.0), 2),
                "notes at the cap": sum(abs(n.end - n.start - tok.max_duration) < 1e-9 for n in minute),
                "without the cap: notes > 5 s": over, "their share of sounding time": f"{share:.0%}",
                "without the cap: longest s": round(max((n.end - n.start for n in free.notes if n.start < 60), default=0), 1),
            })
        summary = {
            "pitched notes in the folder": len(notes), "notes outside 48..84": outside,
            "files": len(list(args.folder.rglob("*.mid"))),
            "cap learned (train split 99.9th pct) s": tok.max_duration,
            "all files' notes 99.9th pct s": round(file_p999, 3),
            "train minutes (1 thread)": round(train_minutes, 1), "steps": args.steps,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results("piano_events", command_line(), {
        "the folder": ([summary], list(summary)),
        "notes dropped to the range (dataset.tokenizer=events)": (ranges, list(ranges[0])),
        "60 s samples: longest note vs the training notes' 99.9th percentile": (rows, list(rows[0])),
    }, extra={"notes": ["samples drawn at temperature 1.0, seeds 0..N-1; only notes starting in the first 60 s count"]})


def generate_ids(model, length: int, seed: int) -> list[int]:
    """The raw token ids of one sample (what the decoder sees), drawn as Model.sample draws them."""
    from generate.decoding import generate_tokens

    prime, _ = model.prime("", None)
    rows = generate_tokens(model.net, prime, length, temperature=1.0, top_k=0, top_p=1.0, num_samples=1, seed=seed,
                           device=model.device)
    return prime + rows.tolist()[0]


if __name__ == "__main__":
    main()
