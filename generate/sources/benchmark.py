"""The piano-roll benchmarks (JSB Chorales, Nottingham, MuseData, Piano-midi.de) with their own splits."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from generate.errors import UserError
from generate.sources.corpus import Corpus
from generate.sources.music import make_extraction, make_tokenizer, settings_key, shuffle_training_pieces
from generate.tokenizers import PolyphonicTokenizer

BENCHMARK_SPLITS = {"train": "train", "valid": "val", "test": "test"}


def _benchmark_path(cfg: Any) -> Path:
    if not cfg.path:
        raise UserError(f"dataset={cfg.name} needs dataset.path=FILE (a .json.gz piano roll from datasets/music/)")
    path = Path(cfg.path)
    if not path.is_file():
        raise UserError(f"benchmark file not found: {path}; check dataset.path (see datasets/README.md)")
    return path


def fingerprint(cfg: Any) -> str:
    digest = hashlib.sha256(_benchmark_path(cfg).read_bytes())
    digest.update(settings_key(cfg).encode())
    return digest.hexdigest()


def read_benchmark(path: Path) -> dict[str, list[list[list[int]]]]:
    """A converted Boulanger-Lewandowski file → {train, valid, test}: sequences of pitch lists per step."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            data = json.load(handle)
        return {split: data[split] for split in BENCHMARK_SPLITS}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{path} is not a piano-roll file made by datasets/music/convert_boulanger.py ({type(err).__name__}); "
            "re-create it or restore it from the repository"
        ) from None


def build(cfg: Any, workdir: Path | None = None) -> Corpus:
    tokenizer = make_tokenizer(cfg)
    if not isinstance(tokenizer, PolyphonicTokenizer):
        raise UserError(f"dataset={cfg.name} is a piano roll: use dataset.tokenizer=polyphonic")
    path = _benchmark_path(cfg)
    data = read_benchmark(path)
    dropped = 0
    splits: dict[str, list[list[int]]] = {}
    steps: dict[str, int] = {}
    # The sets are already in C major / C minor (Boulanger-Lewandowski 2012), so only augment moves them.
    shifts = make_extraction(cfg, tokenizer).shifts()
    for name, split in BENCHMARK_SPLITS.items():
        sequences = data[name][: cfg.max_files] if cfg.max_files > 0 else data[name]
        docs = []
        for seq in sequences:
            roll = [[p for p in step if tokenizer.in_range(p)] for step in seq]
            dropped += sum(len(step) for step in seq) - sum(len(step) for step in roll)
            for k in shifts if split == "train" else [0]:
                moved = [[p + k for p in step] for step in roll]
                if all(tokenizer.in_range(p) for step in moved for p in step):
                    docs.append(tokenizer.encode_roll(moved))
        if split == "train":
            shuffle_training_pieces(docs)
        splits[split] = docs
        steps[split] = sum(len(seq) for seq in sequences)
    stats = {
        "source": str(path),
        "sequences": {s: len(d) for s, d in splits.items()},
        "time_steps": steps,
        "tokens": {s: sum(map(len, d)) for s, d in splits.items()},
        "notes_outside_range": dropped,
        "vocab_size": tokenizer.vocab_size,
    }
    print(f"dataset {cfg.name}: {path.name}: sequences train/val/test {stats['sequences']['train']}/"
          f"{stats['sequences']['val']}/{stats['sequences']['test']}, time steps {steps['train']:,}/"
          f"{steps['val']:,}/{steps['test']:,}" + (f", {dropped} notes outside the pitch range dropped" if dropped else ""))
    return Corpus(tokenizer, splits, stats)
