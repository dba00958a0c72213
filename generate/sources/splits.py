"""Music train/val/test splits: each file, or tune of a collection, by a hash of its own name."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from generate.errors import UserError
from generate.sources.corpus import SPLITS
from generate.sources.filecache import PIECE, TUNE, FileTable


def split_units(units: list[str], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Unit name → split, each unit by a hash of its own name (see split_codes)."""
    codes = split_codes(units, val_fraction, test_fraction)
    return {unit: SPLITS[code] for unit, code in zip(units, codes.tolist())}


def hash_fractions(units: Iterable[str]) -> np.ndarray:
    """Per unit a number in [0, 1) from the SHA-1 of its name: the same on every machine and run."""
    digests = b"".join(hashlib.sha1(u.encode("utf-8", "surrogateescape")).digest()[:8] for u in units)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64


def split_codes(units: Iterable[str], val_fraction: float, test_fraction: float) -> np.ndarray:
    """Per unit its split as an index of SPLITS (train, val, test), decided by that unit's name alone.

    A unit is val when its hash fraction is below val_fraction, test when below val_fraction + test_fraction,
    else train; so adding or removing other units never moves it. Tiny folders: a split with a share above 0
    that no unit falls in takes, from the split holding the most units, the unit whose fraction is nearest
    its band (train first, then val, then test). Only then can an added unit move an existing one: the
    borrowed unit goes back when a unit of its own falls in the empty split.
    """
    fractions = hash_fractions(units)
    n = len(fractions)
    bands = np.array([[val_fraction + test_fraction, 1.0], [0.0, val_fraction],
                      [val_fraction, val_fraction + test_fraction]])
    wanted = [True, val_fraction > 0, test_fraction > 0]
    if n < sum(wanted):
        raise UserError(
            f"only {n} piece(s) of music to split into train/val/test; add files, or lower "
            "dataset.min_melody_steps so fewer fragments are dropped"
        )
    codes = np.where(fractions < val_fraction, 1, np.where(fractions < val_fraction + test_fraction, 2, 0))
    for split in range(3):
        if wanted[split] and not np.any(codes == split):
            donor = int(np.argmax(np.bincount(codes, minlength=3)))  # >= 2 units there, as n >= the splits wanted
            low, high = bands[split]
            distance = np.maximum(low - fractions, fractions - high)
            distance[codes != donor] = np.inf
            codes[int(np.argmin(distance))] = split
    return codes.astype(np.int64)


def assign_splits(table: FileTable, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Per document its split (an index of SPLITS): whole tunes, each by a hash of its own name.

    A unit is a file ("a/b.mid"), or one tune of a multi-tune file ("tunes.abc#12", its X: number), so a
    song never sits in two splits while a collection's tunes spread over all three. With fewer units than
    splits (one or two files) the units are their pieces ("a/b.mid#0", "a/b.mid#1": fragments).
    """
    # A file's documents are together, so a unit starts wherever (file, tune) changes. (A tune number seen twice
    # in one file, apart, makes two units of the same name: the same hash, the same split.)
    columns = [table.doc_file(), table.docs[:, TUNE]]
    starts = unit_starts(columns)
    if starts.sum() < 1 + (val_fraction > 0) + (test_fraction > 0):
        columns.append(table.docs[:, PIECE])
        starts = unit_starts(columns)
    firsts = np.flatnonzero(starts)
    names = (unit_name(table.names[int(columns[0][d])], *(int(c[d]) for c in columns[1:])) for d in firsts.tolist())
    return split_codes(names, val_fraction, test_fraction)[np.cumsum(starts) - 1]


def unit_starts(columns: list[np.ndarray]) -> np.ndarray:
    """Per document, whether it starts a unit: some column changes from the document before (or it is the first)."""
    change = np.zeros(len(columns[0]), dtype=bool)
    change[:1] = True
    for column in columns:
        change[1:] |= column[1:] != column[:-1]
    return change


def unit_name(file: str, tune: int, piece: int | None = None) -> str:
    name = file if tune < 0 else f"{file}#{tune}"
    return name if piece is None else f"{name}#{piece}" if tune < 0 else f"{name}.{piece}"
