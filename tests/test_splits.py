"""Music train/val/test splits: each unit (file, or tune of a collection) by its own hash, stable as folders grow."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from generate.data import load_corpus
from generate.sources.filecache import TUNE, build_table
from generate.sources.music import make_extraction, make_tokenizer, process_score_file
from generate.sources.splits import assign_splits, hash_fractions, split_codes, split_units
from generate.sources.store import token_dtype
from tests.conftest import compose_config
from tests.music_helpers import write_songs


def threshold_codes(units: list[str], val: float, test: float) -> np.ndarray:
    """The split each unit's hash alone gives (no tiny-folder rule)."""
    f = hash_fractions(units)
    return np.where(f < val, 1, np.where(f < val + test, 2, 0))


def test_each_unit_by_its_own_hash() -> None:
    names = [f"folder/tune_{i:04d}.mid" for i in range(400)]
    codes = split_codes(names, 0.1, 0.05)
    assert np.array_equal(codes, threshold_codes(names, 0.1, 0.05))  # no split empty: the thresholds alone
    assert 20 <= (codes == 1).sum() <= 65 and 5 <= (codes == 2).sum() <= 40  # about 10% and 5% of 400
    more = names + [f"new/extra_{i}.mid" for i in range(300)]
    assert np.array_equal(split_codes(more, 0.1, 0.05)[: len(names)], codes)  # adding files moves none
    fewer = names[::3]
    assert np.array_equal(split_codes(fewer, 0.1, 0.05), codes[::3])  # nor does removing them
    shuffled = random.Random(0).sample(names, len(names))
    assert split_units(shuffled, 0.1, 0.05) == split_units(names, 0.1, 0.05)  # the order of the listing is no matter


def test_tiny_folders_borrow_only_while_a_split_is_empty() -> None:
    rng = random.Random(1)
    for trial in range(200):
        old = [f"t{trial}/{rng.random():.12f}.mid" for _ in range(rng.randint(3, 12))]
        new = old + [f"t{trial}/added-{rng.random():.12f}.mid" for _ in range(rng.randint(1, 30))]
        before, after = split_codes(old, 0.1, 0.05), split_codes(new, 0.1, 0.05)
        for codes in (before, after):
            assert set(codes.tolist()) == {0, 1, 2}  # never an empty split
        borrowed = (before != threshold_codes(old, 0.1, 0.05)) | (after[: len(old)] != threshold_codes(new, 0.1, 0.05)[: len(old)])
        moved = before != after[: len(old)]
        assert not np.any(moved & ~borrowed), (old, new)  # only a unit the tiny-folder rule placed can move
    # the rule itself: an empty val takes the unit of the biggest split nearest val's band (the smallest fraction)
    units = [f"u{i}" for i in range(2000)]
    f = hash_fractions(units)
    six = [units[i] for i in np.flatnonzero(f >= 0.15)[:6]]  # every one train by its hash
    codes = split_codes(six, 0.1, 0.05)
    fractions = hash_fractions(six)
    assert codes[np.argmin(fractions)] == 1 and (codes == 1).sum() == 1 and (codes == 2).sum() == 1


def test_adding_files_keeps_every_file_in_its_split(tmp_path: Path) -> None:
    folder = tmp_path / "songs"
    write_songs(folder, 20)
    settings = ["dataset=midi", f"dataset.path={folder}", f"dataset.cache_dir={tmp_path / 'cache'}",
                "dataset.num_workers=1", "dataset.val_fraction=0.3", "dataset.test_fraction=0.2"]
    cfg = compose_config("config", settings).dataset
    names = sorted(p.name for p in folder.iterdir())
    assert set(threshold_codes(names, 0.3, 0.2).tolist()) == {0, 1, 2}  # the hashes alone fill every split here

    def split_of_each_document() -> dict[bytes, str]:
        corpus = load_corpus(cfg, verbose=False)
        return {np.asarray(doc).tobytes(): s for s, split in corpus.splits.items() for doc in split}

    before = split_of_each_document()
    write_songs(folder, 10, start_seed=20)
    after = split_of_each_document()
    assert len(after) > len(before)
    assert all(after[doc] == s for doc, s in before.items())


def abc_collection(path: Path, numbers: list[int]) -> Path:
    """An ABC file with one 4-bar tune per reference number (X:), each its own random melody."""
    tunes = []
    for number in numbers:
        rng = random.Random(number)
        bars = "|".join("".join(rng.choice("CDEFGABcde") for _ in range(8)) for _ in range(4))
        tunes.append(f"X:{number}\nT:Tune {number}\nM:4/4\nL:1/8\nK:C\n{bars}|]\n")
    path.write_text("\n".join(tunes))
    return path


def tune_splits(path: Path, tmp_path: Path) -> dict[int, set[str]]:
    """Tune number → the splits its pieces were assigned to (one each, if tunes are units)."""
    cfg = compose_config("config", ["dataset=scores", "dataset.num_workers=1"]).dataset
    tok = make_tokenizer(cfg)
    result = process_score_file((path.name, str(path)), tok, make_extraction(cfg, tok))
    assert result.reason is None
    folder = tmp_path / f"table-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    table = build_table(folder, token_dtype(tok.vocab_size), [((path.name, 0, 0), result)])
    codes = assign_splits(table, cfg.val_fraction, cfg.test_fraction)
    found: dict[int, set[str]] = {}
    for tune, code in zip(table.docs[:, TUNE].tolist(), codes.tolist()):
        found.setdefault(tune, set()).add(("train", "val", "test")[code])
    return found


def test_a_collection_is_split_by_tune(tmp_path: Path) -> None:
    numbers = list(range(1, 31))
    splits = tune_splits(abc_collection(tmp_path / "tunes.abc", numbers), tmp_path)
    assert sorted(splits) == numbers and all(len(s) == 1 for s in splits.values())  # a tune is never cut in two
    assert {s for (s,) in splits.values()} == {"train", "val", "test"}  # the collection's tunes reach every split
    by_name = split_units([f"tunes.abc#{n}" for n in numbers], 0.1, 0.05)
    assert {n: {by_name[f"tunes.abc#{n}"]} for n in numbers} == splits  # a hash of (file, tune number)
    # The tunes in another order, and more of them: each keeps its split (its identity is its X: number).
    moved = tune_splits(abc_collection(tmp_path / "tunes.abc", numbers[::-1] + list(range(31, 45))), tmp_path)
    assert {n: moved[n] for n in numbers} == splits


def test_a_collection_end_to_end(tmp_path: Path) -> None:
    folder = tmp_path / "abc"
    folder.mkdir()
    abc_collection(folder / "tunes.abc", list(range(1, 31)))
    cfg = compose_config("config", ["dataset=scores", f"dataset.path={folder}", f"dataset.cache_dir={tmp_path / 'c'}",
                                    "dataset.num_workers=1"]).dataset
    corpus = load_corpus(cfg, verbose=False)
    assert corpus.stats["files"] == 1 and all(len(corpus.splits[s]) for s in ("train", "val", "test"))


def test_a_real_collection_is_split_by_tune(tmp_path: Path) -> None:
    from music21 import corpus  # oneills1850's first file: 50 tunes, ~2 s to parse

    path = next(Path(p) for p in corpus.getPaths(fileExtensions=("abc",)) if "oneills1850/0001-0050" in str(p))
    splits = tune_splits(path, tmp_path)
    assert len(splits) >= 45 and all(len(s) == 1 for s in splits.values())
    assert {s for (s,) in splits.values()} == {"train", "val", "test"}
    by_name = split_units([f"{path.name}#{n}" for n in splits], 0.1, 0.05)
    assert all(splits[n] == {by_name[f"{path.name}#{n}"]} for n in splits)
