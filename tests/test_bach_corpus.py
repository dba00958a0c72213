"""dataset=bach lists each distinct chorale file of music21's corpus once (its iterator repeats some)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from generate.sources.music import bach_chorales


def test_each_chorale_file_is_listed_once() -> None:
    from music21 import corpus

    names = list(corpus.chorales.Iterator(returnType="filename"))
    items = bach_chorales(0)
    paths = [path for _, path in items]
    repeated = [path for path, n in Counter(paths).items() if n > 1]
    assert not repeated, repeated
    assert len(items) == len(set(names))  # one file per distinct name the iterator gives
    assert all(Path(path).is_file() and Path(path).name == name for name, path in items)


def test_a_repeated_name_is_listed_once(monkeypatch) -> None:
    # Whatever music21 version is installed: a name the iterator yields twice (10.5 does, 371 names for 350 files).
    from music21 import corpus

    class Repeating:
        def __init__(self, returnType: str) -> None:  # noqa: N803 (music21's keyword)
            self.names = ["bach/bwv267", "bach/bwv347", "bach/bwv267", "bach/bwv36.4-2", "bach/bwv36.4-2"]

        def __iter__(self):
            return iter(self.names)

    monkeypatch.setattr(corpus.chorales, "Iterator", Repeating)
    assert [name for name, _ in bach_chorales(0)] == ["bwv267.mxl", "bwv347.mxl", "bwv36.4-2.mxl"]


def test_max_files_counts_distinct_chorales() -> None:
    items = bach_chorales(40)
    assert len(items) == len({path for _, path in items}) == 40
