"""Music datasets: MIDI folders, score folders, music21's Bach chorales and the piano-roll benchmarks."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from generate.music import (
    EXTRACT_VERSION,
    Extraction,
    FileResult,
    key_profiles,
    process_midi_file,
    process_score_file,
)
from generate.runtime import UserError
from generate.sources import Corpus
from generate.tokenizers.events import EventTokenizer
from generate.tokenizers.melody import MelodyTokenizer
from generate.tokenizers.notes import MusicTokenizer
from generate.tokenizers.polyphonic import PolyphonicTokenizer

MIDI_SUFFIXES = (".mid", ".midi")
SCORE_SUFFIXES = (".xml", ".musicxml", ".mxl", ".abc", ".krn")
TRANSPOSE_MODES = ("none", "c", "augment")
SHUFFLE_SEED = 0  # training pieces are shuffled the same way on every machine, so caches agree


def make_tokenizer(cfg: Any) -> MusicTokenizer:
    """The music tokenizer that dataset.tokenizer names, built from the dataset settings."""
    if cfg.steps_per_quarter < 1:
        raise UserError(f"dataset.steps_per_quarter={cfg.steps_per_quarter} must be >= 1")
    if cfg.tokenizer == "melody":
        return MelodyTokenizer(cfg.min_pitch, cfg.max_pitch, cfg.steps_per_quarter, cfg.monophony)
    if cfg.tokenizer == "polyphonic":
        return PolyphonicTokenizer(cfg.min_pitch, cfg.max_pitch, cfg.steps_per_quarter)
    if cfg.tokenizer == "events":
        return EventTokenizer(cfg.min_pitch, cfg.max_pitch)
    raise UserError(
        f"dataset.tokenizer={cfg.tokenizer!r} does not read music; choose melody, polyphonic or events"
    )


def make_extraction(cfg: Any, part: str = "") -> Extraction:
    if cfg.transpose not in TRANSPOSE_MODES:
        raise UserError(f"dataset.transpose={cfg.transpose!r} must be one of {', '.join(TRANSPOSE_MODES)}")
    if cfg.monophony not in ("highest", "lowest"):
        raise UserError(f"dataset.monophony={cfg.monophony!r} must be highest or lowest")
    return Extraction(
        make_tokenizer(cfg),
        cfg.steps_per_quarter,
        cfg.monophony,
        cfg.split_silence_quarters,
        cfg.min_melody_steps,
        cfg.transpose,
        cfg.transpose_range,
        part,
    )


def settings_key(cfg: Any) -> str:
    """Every dataset setting that changes the tokens, as text for a fingerprint."""
    keys = (
        "tokenizer", "steps_per_quarter", "min_pitch", "max_pitch", "monophony", "split_silence_quarters",
        "min_melody_steps", "transpose", "transpose_range", "max_files", "val_fraction", "test_fraction",
    )
    return f"extract-v{EXTRACT_VERSION}|" + "|".join(f"{k}={cfg[k]}" for k in keys)


# ---------------------------------------------------------------- files


def list_files(cfg: Any, suffixes: tuple[str, ...], what: str) -> tuple[Path, list[Path]]:
    """Every file under dataset.path with one of `suffixes` (any case), recursively, sorted; max_files applies."""
    if not cfg.path:
        raise UserError(f"dataset={cfg.name} needs a folder: add dataset.path=DIR (a folder of {what} files)")
    root = Path(cfg.path)
    if not root.exists():
        raise UserError(f"dataset.path={root} does not exist; give a folder of {what} files")
    if root.is_file():
        files = [root] if root.suffix.lower() in suffixes else []
        root = root.parent
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise UserError(
            f"no {what} files ({', '.join(suffixes)}) under {cfg.path}; point dataset.path at a folder that has some"
        )
    if cfg.max_files > 0:
        files = files[: cfg.max_files]
    return root, files


def folder_fingerprint(cfg: Any, suffixes: tuple[str, ...], what: str) -> str:
    """Hash of (relative path, size, mtime) of every file plus the settings: a changed file re-tokenizes."""
    root, files = list_files(cfg, suffixes, what)
    digest = hashlib.sha256(settings_key(cfg).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def worker_count(setting: int, jobs: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(setting if setting > 0 else cores, jobs))


def run_files(
    work: Callable[[tuple[str, str]], FileResult], items: list[tuple[str, str]], num_workers: int, desc: str
) -> list[FileResult]:
    """Apply `work` to every (name, path), in worker processes when there are several, with a bar."""
    workers = worker_count(num_workers, len(items))
    bar = tqdm(total=len(items), desc=desc, unit="file", dynamic_ncols=True)
    try:
        if workers == 1:
            results = []
            for item in items:
                results.append(work(item))
                bar.update(1)
            return results
        results = []
        # Files are small and many: chunks keep the inter-process traffic down.
        chunksize = max(1, min(16, len(items) // (workers * 4)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(work, items, chunksize=chunksize):
                results.append(result)
                bar.update(1)
        return results
    except BrokenProcessPool:
        raise UserError(
            f"a worker process died while reading files for {desc}; run again with dataset.num_workers=1 "
            "to find the file that crashes it"
        ) from None
    finally:
        bar.close()


# ---------------------------------------------------------------- splits and reporting


def split_units(units: list[str], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Unit name → split. The order is a hash of the name, so adding files moves few others."""
    order = sorted(units, key=lambda u: hashlib.sha1(u.encode()).hexdigest())
    n = len(order)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise UserError(
            f"only {n} piece(s) of music to split into train/val/test; add files, or lower "
            "dataset.min_melody_steps so fewer fragments are dropped"
        )
    splits = {}
    for i, unit in enumerate(order):
        splits[unit] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return splits


def shuffle_training_pieces(docs: list[list[int]]) -> None:
    """Shuffle training documents in place, the same way every time.

    Training joins documents into one stream and carries the GRU state across separators. Left in
    file order, the next piece is often the same piece transposed (or the next fragment of one
    song), so the model learns to lean on the previous piece and is lost when sampling starts
    from a fresh state; shuffled, a separator really starts something new.
    """
    random.Random(SHUFFLE_SEED).shuffle(docs)


STAGES = ("tracks read", "drum tracks", "fragments", "fragments shorter", "fragments wider", "notes outside",
          "pieces kept", "transposed copies")


def _stage_order(name: str) -> int:
    """Counts are printed in pipeline order: tracks, fragments, what was dropped, what was kept."""
    return max((i for i, prefix in enumerate(STAGES) if name.startswith(prefix)), default=len(STAGES))


def assemble(cfg: Any, tokenizer: MusicTokenizer, results: list[FileResult], source: str) -> Corpus:
    """Per-file results → a corpus split by file (by piece when fewer than 3 files are usable), with counts."""
    usable = [r for r in results if r.docs]
    skipped = Counter(r.reason for r in results if not r.docs)
    reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.most_common())
    if not usable:
        raise UserError(
            f"none of the {len(results)} file(s) from {source} gave music to train on ({reasons}); "
            "check the files play in a MIDI player, or lower dataset.min_melody_steps"
        )
    # Split whole files, so a song never sits in both train and test; pieces when there are too few files.
    if len(usable) >= 3:
        units = {r.name: [(r.name, i) for i in range(len(r.docs))] for r in usable}
    else:
        units = {f"{r.name}#{i}": [(r.name, i)] for r in usable for i in range(len(r.docs))}
    assignment = split_units(list(units), cfg.val_fraction, cfg.test_fraction)
    by_name = {r.name: r for r in usable}
    splits: dict[str, list[list[int]]] = {"train": [], "val": [], "test": []}
    for unit, members in units.items():
        split = assignment[unit]
        for name, i in members:
            docs = by_name[name].docs[i]
            # Transposed copies are training data only; val and test stay as written.
            splits[split].extend(docs.values() if split == "train" else [docs[0]])
    shuffle_training_pieces(splits["train"])

    counts: Counter = Counter()
    for r in results:
        counts += r.counts
    stats = {
        "source": source,
        "files": len(results),
        "files_used": len(usable),
        "skipped": dict(skipped),
        "counts": dict(counts),
        "documents": {s: len(d) for s, d in splits.items()},
        "tokens": {s: sum(map(len, d)) for s, d in splits.items()},
        "vocab_size": tokenizer.vocab_size,
    }
    print(f"dataset {cfg.name}: {len(results)} file(s) read from {source}, {len(usable)} used, "
          f"{len(results) - len(usable)} skipped" + (f" ({reasons})" if reasons else ""))
    stage = ", ".join(f"{v:,} {k}" for k, v in sorted(counts.items(), key=lambda kv: _stage_order(kv[0])))
    if stage:
        print(f"dataset {cfg.name}: {stage}")
    print(f"dataset {cfg.name}: documents train/val/test {stats['documents']['train']:,}/"
          f"{stats['documents']['val']:,}/{stats['documents']['test']:,}, tokens "
          f"{stats['tokens']['train']:,}/{stats['tokens']['val']:,}/{stats['tokens']['test']:,}"
          + (" (train includes transposed copies)" if cfg.transpose == "augment" else ""))
    return Corpus(tokenizer, splits, stats)


# ---------------------------------------------------------------- sources


def midi_fingerprint(cfg: Any) -> str:
    return folder_fingerprint(cfg, MIDI_SUFFIXES, "MIDI")


def build_midi(cfg: Any) -> Corpus:
    ex = make_extraction(cfg)
    if ex.transpose == "c":
        key_profiles()  # load music21's key profiles once here; forked workers inherit them
    root, files = list_files(cfg, MIDI_SUFFIXES, "MIDI")
    items = [(p.relative_to(root).as_posix(), str(p)) for p in files]
    results = run_files(partial(process_midi_file, ex=ex), items, cfg.num_workers, f"{cfg.name}: MIDI files")
    return assemble(cfg, ex.tokenizer, results, str(cfg.path))


def scores_fingerprint(cfg: Any) -> str:
    return folder_fingerprint(cfg, SCORE_SUFFIXES, "MusicXML/ABC/Humdrum")


def build_scores(cfg: Any) -> Corpus:
    ex = make_extraction(cfg)
    root, files = list_files(cfg, SCORE_SUFFIXES, "MusicXML/ABC/Humdrum")
    items = [(p.relative_to(root).as_posix(), str(p)) for p in files]
    results = run_files(partial(process_score_file, ex=ex), items, cfg.num_workers, f"{cfg.name}: scores")
    return assemble(cfg, ex.tokenizer, results, str(cfg.path))


def bach_chorales(max_files: int) -> list[tuple[str, str]]:
    """(name, path) of the Bach chorales in music21's bundled corpus (Riemenschneider order)."""
    from music21 import corpus

    items = []
    for name in corpus.chorales.Iterator(returnType="filename"):
        found = corpus.getWork(name)
        # A short name can match several files (bwv245.3 also finds bwv245.37); keep the exact one.
        candidates = found if isinstance(found, list) else [found]
        stem = name.split("/")[-1]
        exact = [p for p in candidates if p.stem == stem] or candidates
        chosen = sorted(exact, key=lambda p: p.suffix != ".mxl")[0]
        items.append((chosen.name, str(chosen)))
        if 0 < max_files <= len(items):
            break
    return items


def bach_fingerprint(cfg: Any) -> str:
    import music21

    names = [name for name, _ in bach_chorales(cfg.max_files)]
    return hashlib.sha256(f"music21 {music21.__version__}|{settings_key(cfg)}|{names}".encode()).hexdigest()


def build_bach(cfg: Any) -> Corpus:
    # Chorale melodies are the soprano line; polyphonic and event tokenizers take all four voices.
    ex = make_extraction(cfg, part="soprano")
    items = bach_chorales(cfg.max_files)
    results = run_files(partial(process_score_file, ex=ex), items, cfg.num_workers, f"{cfg.name}: chorales")
    return assemble(cfg, ex.tokenizer, results, "music21's Bach chorales")


# ---------------------------------------------------------------- piano-roll benchmarks

BENCHMARK_SPLITS = {"train": "train", "valid": "val", "test": "test"}


def _benchmark_path(cfg: Any) -> Path:
    if not cfg.path:
        raise UserError(f"dataset={cfg.name} needs dataset.path=FILE (a .json.gz piano roll from datasets/music/)")
    path = Path(cfg.path)
    if not path.is_file():
        raise UserError(f"benchmark file not found: {path}; check dataset.path (see datasets/README.md)")
    return path


def benchmark_fingerprint(cfg: Any) -> str:
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


def build_benchmark(cfg: Any) -> Corpus:
    tokenizer = make_tokenizer(cfg)
    if not isinstance(tokenizer, PolyphonicTokenizer):
        raise UserError(f"dataset={cfg.name} is a piano roll: use dataset.tokenizer=polyphonic")
    if cfg.transpose not in TRANSPOSE_MODES:
        raise UserError(f"dataset.transpose={cfg.transpose!r} must be one of {', '.join(TRANSPOSE_MODES)}")
    path = _benchmark_path(cfg)
    data = read_benchmark(path)
    dropped = 0
    splits: dict[str, list[list[int]]] = {}
    steps: dict[str, int] = {}
    # The sets are already in C major / C minor (Boulanger-Lewandowski 2012), so only augment moves them.
    shifts = Extraction(tokenizer, transpose=cfg.transpose, transpose_range=cfg.transpose_range).shifts()
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
