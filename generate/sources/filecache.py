"""Per-file tokenization results kept between runs: a folder that changes re-tokenizes only the files that changed."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from generate.sources.files import FileKey
from generate.sources.store import META, publish

TABLE_FORMAT = 1  # bump when the files of a table change meaning
def table_folder(cfg: Any, root: Path, settings: str) -> Path:
    """One table per folder and tokenization settings (results made under other settings are never mixed in)."""
    key = hashlib.sha256(f"{root.resolve()}|{settings}|table-v{TABLE_FORMAT}".encode()).hexdigest()[:20]
    return Path(cfg.cache_dir) / f"{cfg.name}-files-{key}"


def cached_results(
    folder: Path, keys: list[FileKey], items: list[tuple[str, str]], work: Callable[[list[tuple[str, str]]], list[Any]],
    make: Callable[..., Any],
) -> tuple[list[Any], int]:
    """Every file's result, from the table where its (path, size, mtime) is unchanged, else from `work`.

    `make(name, reason, docs, counts)` builds a result from stored parts. Files no longer listed are
    dropped from the table. Returns the results in `items` order and how many files were tokenized.
    """
    known = load_table(folder, make)
    todo = [i for i, key in enumerate(keys) if key not in known]
    fresh = iter(work([items[i] for i in todo]))
    redo = set(todo)
    results = [next(fresh) if i in redo else known[key] for i, key in enumerate(keys)]
    if todo or len(known) != len(keys):
        save_table(folder, keys, results)
    return results, len(todo)


def save_table(folder: Path, keys: list[FileKey], results: list[Any]) -> None:
    """Write the table whole into a temporary folder, then rename it into place (never half-written)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        entries, arrays = [], []
        for key, result in zip(keys, results):
            shifts = [list(piece) for piece in result.docs]
            arrays += [np.asarray(doc, dtype=np.int32) for piece in result.docs for doc in piece.values()]
            entries.append([*key, result.reason, dict(result.counts), shifts])
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        np.save(temporary / "tokens.npy", np.concatenate(arrays) if arrays else np.zeros(0, np.int32))
        np.save(temporary / "offsets.npy", np.concatenate(([0], np.cumsum(lengths))).astype(np.int64))
        (temporary / META).write_text(json.dumps({"format": TABLE_FORMAT, "files": entries}))
        publish(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def load_table(folder: Path, make: Callable[..., Any]) -> dict[FileKey, Any]:
    """(path, size, mtime) → stored result; an absent or damaged table is empty (everything is re-tokenized)."""
    try:
        meta = json.loads((folder / META).read_text())
        # Mapped, then seen as a plain array: slicing a np.memmap is ~20x slower (a Python-level subclass hook per view).
        tokens = np.asarray(np.load(folder / "tokens.npy", mmap_mode="r"))
        offsets = np.load(folder / "offsets.npy")
        if meta.get("format") != TABLE_FORMAT or offsets[-1] != len(tokens):
            return {}
        known, doc = {}, 0
        for name, size, mtime, reason, counts, shifts in meta["files"]:
            pieces = []
            for piece in shifts:
                pieces.append({k: tokens[offsets[doc + j] : offsets[doc + j + 1]] for j, k in enumerate(piece)})
                doc += len(piece)
            known[(name, size, mtime)] = make(name, reason, pieces, counts)  # a plain dict: summed later
        if doc != len(offsets) - 1:
            return {}
        return known
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}
