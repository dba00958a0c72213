"""Music sources: MIDI folders, score folders and music21's Bach chorales → token documents per split."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from generate.errors import UserError
from generate.music.extract import Extraction, key_shift, stretched
from generate.music.midifile import MidiSkip
from generate.music.notes import Track
from generate.music.read import midi_tracks, read_midi, read_scores, score_tracks
from generate.sources.corpus import Corpus
from generate.sources.filecache import (
    LENGTH,
    PIECES,
    REASON,
    SHIFT,
    FileTable,
    build_table,
    table_folder,
    update_table,
)
from generate.sources.files import folder_fingerprint, iter_files, listed_files
from generate.sources.splits import assign_splits
from generate.sources.store import TokenSplit, npy_writer, token_dtype
from generate.tokenizers import MUSIC_TOKENIZERS, MusicTokenizer

# Part of every music fingerprint: bump when extraction changes what tokens a file gives.
EXTRACT_VERSION = 5  # 4: MIDI read with symusic (true skip reasons); 5: melodies folded into range, triplet rule
SPLIT_RULE = 2  # part of every fingerprint too: 2: each file or tune by its own hash fraction (1: hash rank)
MIDI_SUFFIXES = (".mid", ".midi")
SCORE_SUFFIXES = (".xml", ".musicxml", ".mxl", ".abc", ".krn")
SHUFFLE_SEED = 0  # training pieces are shuffled the same way on every machine, so caches agree


def make_tokenizer(cfg: Any) -> MusicTokenizer:
    """The music tokenizer that dataset.tokenizer names, built from the dataset settings."""
    if cfg.steps_per_quarter < 1:
        raise UserError(f"dataset.steps_per_quarter={cfg.steps_per_quarter} must be >= 1")
    kind = cfg.tokenizer.value
    if kind not in MUSIC_TOKENIZERS:
        raise UserError(f"dataset.tokenizer={kind} does not read music; choose one of {', '.join(MUSIC_TOKENIZERS)}")
    return MUSIC_TOKENIZERS[kind].from_settings(cfg)


def make_extraction(cfg: Any, tokenizer: MusicTokenizer, part: str = "") -> Extraction:
    return tokenizer.extraction(
        steps_per_quarter=cfg.steps_per_quarter,
        monophony=cfg.monophony.value,
        split_silence_quarters=cfg.split_silence_quarters,
        min_melody_steps=cfg.min_melody_steps,
        transpose=cfg.transpose.value,
        transpose_range=cfg.transpose_range,
        part=part,
        time_stretch=tuple(getattr(cfg, "time_stretch", None) or ()),
    )


def settings_key(cfg: Any) -> str:
    """Every dataset setting that changes the tokens, as text for a fingerprint."""
    keys = (
        "tokenizer", "steps_per_quarter", "min_pitch", "max_pitch", "monophony", "split_silence_quarters",
        "min_melody_steps", "transpose", "transpose_range", "max_files", "val_fraction", "test_fraction",
    )
    keys += tuple(k for k in ("metre", "controls", "time_stretch", "pitch_order")
                  if getattr(getattr(cfg, k, None), "value", getattr(cfg, k, None)) not in (None, "none", False, [], "ascending"))
    values = [getattr(cfg, k) for k in keys]
    return f"extract-v{EXTRACT_VERSION}|split-v{SPLIT_RULE}|" + "|".join(f"{k}={getattr(v, 'value', v)}" for k, v in zip(keys, values))


@dataclass
class FileResult:
    """One file's outcome: why it was skipped, or its pieces as token lists per transposition."""

    name: str
    reason: str | None = None
    docs: list[dict[int, np.ndarray]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    tunes: list[int] = field(default_factory=list)  # per piece, its tune's number in a multi-tune file (else empty)


def _nothing_kept(counts: Counter, ex: Extraction) -> str:
    """The true reason a file with notes gave no piece, from what extraction counted."""
    if any(k.startswith("fragments in triplets") for k in counts):
        return f"in triplets (off the grid of {ex.steps_per_quarter} steps a quarter): set dataset.steps_per_quarter=12"
    if any(k.startswith("fragments shorter") for k in counts) and not any(k.startswith("fragments wider") for k in counts):
        return f"nothing at least {ex.min_melody_steps} steps long"
    if any(k.startswith("fragments wider") for k in counts):
        short = any(k.startswith("fragments shorter") for k in counts)  # both happened: say both
        too_short = f", or shorter than {ex.min_melody_steps} steps" if short else ""
        return f"every fragment too wide for the range {ex.min_pitch}..{ex.max_pitch}{too_short}"
    return f"no notes in the pitch range {ex.min_pitch}..{ex.max_pitch}"


def tokenize_tracks(name: str, tracks: list[Track], tok: MusicTokenizer, ex: Extraction) -> FileResult:
    """Tracks of one file → token documents (every transposition asked for), or the reason there are none."""
    result = FileResult(name)
    pitched = [t for t in tracks if not t.is_drum and t.notes]
    drums = [t for t in tracks if t.is_drum and t.notes]
    result.counts["drum tracks skipped"] += len(drums)
    if not pitched:
        result.reason = "drum tracks only" if drums else "no notes"
        return result
    if ex.part and tok.monophonic:
        chosen = [t for t in pitched if t.name.lower().startswith(ex.part)]
        pitched = chosen or pitched[:1]
    shift = key_shift([n for t in pitched for n in t.notes]) if ex.transpose == "c" else 0
    if shift:
        pitched = [t.transposed(shift) for t in pitched]  # key and bars travel with the notes
    pieces = tok.extract(pitched, ex, result.counts)
    for piece in pieces:
        docs = {}  # by the copy's key (see Extraction.copies): 0 is the piece as it is (val and test keep only that)
        for key, k, factor in ex.copies():
            moved = stretched(piece.transposed(k) if k else piece, factor)
            span = moved.pitch_range()
            if span is None or (tok.in_range(span[0]) and tok.in_range(span[1])):
                # int32 arrays, not lists: 4 bytes a token in the pool's pickles and the parent's memory, not ~36.
                docs[key] = np.asarray(tok.encode(moved), dtype=np.int32)
            else:
                result.counts["transposed copies out of range skipped"] += 1
        result.docs.append(docs)
    result.counts["pieces kept"] += len(pieces)
    if not pieces:
        result.reason = _nothing_kept(result.counts, ex)
    return result


def process_midi_file(item: tuple[str, str], tok: MusicTokenizer, ex: Extraction) -> FileResult:
    """(name, path) → FileResult; never raises, so one bad file in thousands is only counted (worker entry)."""
    name, path = item
    try:
        try:
            content = read_midi(Path(path))
        except MidiSkip as skip:  # the true reason: empty, not MIDI, truncated, corrupt, SMPTE timing, no tracks
            return FileResult(name, skip.reason.value)
        return tokenize_tracks(name, midi_tracks(content, tok.unit), tok, ex)
    except Exception as err:  # anything else odd about one file must not stop a whole folder
        return FileResult(name, f"failed ({type(err).__name__})")


def process_score_file(item: tuple[str, str], tok: MusicTokenizer, ex: Extraction) -> FileResult:
    """(name, path) of a MusicXML/ABC/Humdrum file → FileResult (worker entry; never raises)."""
    name, path = item
    try:
        if Path(path).stat().st_size == 0:
            return FileResult(name, "empty file (0 bytes)")
        try:
            scores = read_scores(Path(path))
        except Exception:
            return FileResult(name, "not readable as a score (music21 could not parse it)")
        merged = FileResult(name)
        for index, score in enumerate(scores):
            one = tokenize_tracks(name, score_tracks(score, tok.unit), tok, ex)
            if len(scores) > 1:  # a collection: each tune is its own unit of the split
                merged.tunes += [tune_number(score, index)] * len(one.docs)
            merged.docs += one.docs
            merged.counts += one.counts
            merged.reason = merged.reason or one.reason
        if merged.docs:
            merged.reason = None
        return merged
    except Exception as err:
        return FileResult(name, f"failed ({type(err).__name__})")


# ---------------------------------------------------------------- splits and reporting


def tune_number(score: Any, index: int) -> int:
    """A tune's identity within its collection: its reference number (ABC's X:), else its place (1, 2, ...)."""
    number = str(getattr(score.metadata, "number", None) or "").strip()
    return int(number) if number.isdigit() else index + 1


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


def assemble(cfg: Any, tokenizer: MusicTokenizer, table: FileTable, source: str, workdir: Path | None) -> Corpus:
    """A file table → a corpus split by file or tune (see assign_splits), with counts.

    Only a few numbers per file and per document are in memory; each split's tokens are gathered from the
    table's segments chunk by chunk, into workdir's store files when there is a workdir (else into memory).
    """
    files, docs = table.files, table.docs
    usable = np.flatnonzero(files[:, PIECES] > 0)
    reasons = Counter({table.reasons[r]: int(n) for r, n in enumerate(np.bincount(
        files[files[:, PIECES] == 0, REASON], minlength=len(table.reasons)).tolist()) if n})
    skipped = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
    if not len(usable):
        raise UserError(
            f"none of the {len(table)} file(s) from {source} gave music to train on ({skipped}); "
            "check the files play in a MIDI player, or lower dataset.min_melody_steps"
        )
    doc_split = assign_splits(table, cfg.val_fraction, cfg.test_fraction)
    # Transposed and time-stretched copies are training data only; val and test stay as written.
    chosen = {"train": np.flatnonzero(doc_split == 0), "val": np.flatnonzero((doc_split == 1) & (docs[:, SHIFT] == 0)),
              "test": np.flatnonzero((doc_split == 2) & (docs[:, SHIFT] == 0))}
    order = list(range(len(chosen["train"])))
    shuffle_training_pieces(order)
    chosen["train"] = chosen["train"][np.array(order, dtype=np.int64)]
    splits = {s: gather_split(table, rows, token_dtype(tokenizer.vocab_size), workdir, s) for s, rows in chosen.items()}

    total = table.counts.sum(axis=0)
    counts = {name: int(v) for name, v in zip(table.count_names, total.tolist()) if v > 0}
    stats = {
        "source": source,
        "files": len(table),
        "files_used": len(usable),
        "skipped": dict(reasons),
        "counts": counts,
        "documents": {s: len(d) for s, d in splits.items()},
        "tokens": {s: d.num_tokens for s, d in splits.items()},
        "vocab_size": tokenizer.vocab_size,
    }
    report(cfg, stats, skipped)
    return Corpus(tokenizer, splits, stats)


def gather_split(table: FileTable, rows: np.ndarray, dtype: np.dtype, workdir: Path | None, name: str) -> TokenSplit:
    """The documents at `rows` of the table as one split: a store file in workdir (mapped), or an array."""
    lengths = table.docs[rows, LENGTH]
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    if workdir is None or not offsets[-1]:
        chunks = [np.asarray(c, dtype=dtype) for c in table.gather(rows)]
        return TokenSplit(np.concatenate(chunks) if chunks else np.zeros(0, dtype), offsets)
    path = workdir / f"{name}.tokens.npy"  # the store's own file: save_store finds it written and keeps it
    with npy_writer(path, dtype, int(offsets[-1])) as handle:
        for chunk in table.gather(rows):
            handle.write(memoryview(np.ascontiguousarray(chunk, dtype=dtype)))  # (no copy: gather's own buffer)
    return TokenSplit(np.load(path, mmap_mode="r"), offsets)


def report(cfg: Any, stats: dict[str, Any], skipped: str) -> None:
    """What the dataset summary says: files read, used and skipped, per-stage counts, documents and tokens."""
    files, used = stats["files"], stats["files_used"]
    print(f"dataset {cfg.name}: {files} file(s) read from {stats['source']}, {used} used, "
          f"{files - used} skipped" + (f" ({skipped})" if skipped else ""))
    stage = ", ".join(f"{v:,} {k}" for k, v in sorted(stats["counts"].items(), key=lambda kv: _stage_order(kv[0])))
    if stage:
        print(f"dataset {cfg.name}: {stage}")
    docs, tokens = stats["documents"], stats["tokens"]
    print(f"dataset {cfg.name}: documents train/val/test {docs['train']:,}/{docs['val']:,}/{docs['test']:,}, tokens "
          f"{tokens['train']:,}/{tokens['val']:,}/{tokens['test']:,}"
          + (" (train includes transposed copies)" if cfg.transpose.value == "augment" else "")
          + (" (train includes time-stretched copies)" if getattr(cfg, "time_stretch", None) else ""))


# ---------------------------------------------------------------- sources


def run_folder(cfg: Any, suffixes: tuple[str, ...], what: str, tok: MusicTokenizer,
               work: Callable[[tuple[str, str]], FileResult], desc: str) -> FileTable:
    """Every file's result: unchanged files (same path, size, mtime) from the per-file table, the rest tokenized."""
    root, keys = listed_files(cfg, suffixes, what)
    base = str(root)

    def tokenize(todo: np.ndarray) -> Iterator[FileResult]:
        items = ((keys[i][0], os.path.join(base, keys[i][0])) for i in todo)
        return iter_files(work, items, len(todo), cfg.num_workers, desc)

    table, fresh = update_table(table_folder(cfg, root, settings_key(cfg)), keys,
                                token_dtype(tok.vocab_size), tokenize)
    if fresh < len(keys):
        print(f"dataset {cfg.name}: {len(keys) - fresh:,} file(s) unchanged since the last run, {fresh:,} tokenized")
    return table


def midi_fingerprint(cfg: Any) -> str:
    return folder_fingerprint(cfg, MIDI_SUFFIXES, "MIDI", settings_key(cfg))


def build_midi(cfg: Any, workdir: Path | None = None) -> Corpus:
    import symusic  # noqa: F401  (imported once here, so forked workers do not each import it)

    tok = make_tokenizer(cfg)
    ex = make_extraction(cfg, tok)
    table = run_folder(cfg, MIDI_SUFFIXES, "MIDI", tok, partial(process_midi_file, tok=tok, ex=ex), f"{cfg.name}: MIDI files")
    return assemble(cfg, tok, table, str(cfg.path), workdir)


def scores_fingerprint(cfg: Any) -> str:
    return folder_fingerprint(cfg, SCORE_SUFFIXES, "MusicXML/ABC/Humdrum", settings_key(cfg))


def build_scores(cfg: Any, workdir: Path | None = None) -> Corpus:
    tok = make_tokenizer(cfg)
    ex = make_extraction(cfg, tok)
    table = run_folder(cfg, SCORE_SUFFIXES, "MusicXML/ABC/Humdrum", tok, partial(process_score_file, tok=tok, ex=ex),
                       f"{cfg.name}: scores")
    return assemble(cfg, tok, table, str(cfg.path), workdir)


def bach_chorales(max_files: int) -> list[tuple[str, str]]:
    """(name, path) of each distinct Bach chorale file in music21's bundled corpus, once (Riemenschneider order).

    music21's iterator yields some files more than once (bwv36.4-2 three times, 19 others twice: 371 names
    for 350 files); splits go by name, so a repeat never leaked across splits, but it counted that chorale twice.
    """
    from music21 import corpus

    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name in corpus.chorales.Iterator(returnType="filename"):
        found = corpus.getWork(name)
        # A short name can match several files (bwv245.3 also finds bwv245.37); keep the exact one.
        candidates = found if isinstance(found, list) else [found]
        stem = name.split("/")[-1]
        exact = [p for p in candidates if p.stem == stem] or candidates
        chosen = sorted(exact, key=lambda p: p.suffix != ".mxl")[0]
        if str(chosen) in seen:
            continue
        seen.add(str(chosen))
        items.append((chosen.name, str(chosen)))
        if 0 < max_files <= len(items):
            break
    return items


def bach_fingerprint(cfg: Any) -> str:
    import music21

    names = [name for name, _ in bach_chorales(cfg.max_files)]
    # "distinct": the listing without music21's repeats (older caches listed 371 and rebuild).
    return hashlib.sha256(f"music21 {music21.__version__}|distinct|{settings_key(cfg)}|{names}".encode()).hexdigest()


def build_bach(cfg: Any, workdir: Path | None = None) -> Corpus:
    # Chorale melodies are the soprano line; polyphonic and event tokenizers take all four voices.
    tok = make_tokenizer(cfg)
    ex = make_extraction(cfg, tok, part="soprano")
    items = bach_chorales(cfg.max_files)
    results = iter_files(partial(process_score_file, tok=tok, ex=ex), items, len(items), cfg.num_workers,
                         f"{cfg.name}: chorales")
    with tempfile.TemporaryDirectory() as folder:  # a table of this run only: the chorales never change
        table = build_table(Path(folder), token_dtype(tok.vocab_size), zip(((n, 0, 0) for n, _ in items), results))
        return assemble(cfg, tok, table, "music21's Bach chorales", workdir)
