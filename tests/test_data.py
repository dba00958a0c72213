"""Token cache, the fixed text split, truncated-BPTT batches and evaluation batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generate import sources
from generate.config import to_plain
from generate.data import (
    IGNORE,
    DocumentStream,
    TokenStream,
    eval_batches,
    load_corpus,
    split_for_eval,
    training_stream,
)
from generate.errors import UserError
from generate.sources.text import split_stream
from tests.conftest import compose_config


def text_dataset_cfg(path: Path, cache: Path, *extra: str):
    cfg = compose_config("config", ["dataset=text", f"dataset.path={path}", f"dataset.cache_dir={cache}", *extra])
    return cfg.dataset


def test_split_is_test_train_val_with_training_ending_where_val_begins() -> None:
    ids = list(range(1000))
    splits = split_stream(ids, val_fraction=0.1, test_fraction=0.05)
    assert splits["val"] == [ids[900:]]  # nanoGPT's validation split: the last 10%
    assert splits["test"] == [ids[:50]]
    assert splits["train"] == [ids[50:900]]  # up to val, as nanoGPT's training split


def test_test_split_before_val_is_the_layout_older_checkpoints_were_trained_on() -> None:
    ids = list(range(1000))
    splits = split_stream(ids, val_fraction=0.1, test_fraction=0.05, test_position="before_val")
    assert splits == {"train": [ids[:850]], "test": [ids[850:900]], "val": [ids[900:]]}


def test_a_checkpoint_without_the_key_keeps_its_test_split_before_val() -> None:
    from generate.config import TestPosition, dataset_from_checkpoint

    old = to_plain(compose_config("config", []))["dataset"]
    assert old.pop("test_position") == "start"  # what a run records today
    assert dataset_from_checkpoint(old).test_position is TestPosition.before_val
    assert dataset_from_checkpoint({**old, "test_position": "start"}).test_position is TestPosition.start


def test_no_test_split_is_nanogpts_split_exactly() -> None:
    ids = list(range(1_115_394))
    splits = split_stream(ids, val_fraction=0.1, test_fraction=0.0)
    n = len(ids)
    assert splits["train"] == [ids[:int(n * 0.9)]] and splits["val"] == [ids[int(n * 0.9):]] and splits["test"] == [[]]


@pytest.mark.parametrize("n", [1001, 1009, 1_115_394])  # 1,115,394: Tiny Shakespeare's length in characters
def test_val_split_is_exactly_nanogpts_when_a_tenth_is_not_whole(n: int) -> None:
    ids = list(range(n))
    assert split_stream(ids, val_fraction=0.1, test_fraction=0.05)["val"] == [ids[int(n * 0.9):]]


def test_cache_is_reused_and_rebuilt_when_source_or_settings_change(small_text: Path, tmp_path: Path, monkeypatch) -> None:
    builds = []
    original = sources.SOURCES["text"]
    monkeypatch.setitem(sources.SOURCES, "text", (original[0], lambda cfg, workdir: builds.append(1) or original[1](cfg, workdir)))
    cache = tmp_path / "cache"

    first = load_corpus(text_dataset_cfg(small_text, cache))
    again = load_corpus(text_dataset_cfg(small_text, cache))
    assert len(builds) == 1, "the second load must come from the cache"
    assert again.splits == first.splits and again.tokenizer.to_dict() == first.tokenizer.to_dict()

    load_corpus(text_dataset_cfg(small_text, cache, "dataset.val_fraction=0.2"))
    assert len(builds) == 2, "changing a tokenization setting must rebuild"

    small_text.write_text(small_text.read_text() + "more text\n")
    changed = load_corpus(text_dataset_cfg(small_text, cache))
    assert len(builds) == 3, "changing the source must rebuild"
    assert sum(split.num_tokens for split in changed.splits.values()) > sum(
        split.num_tokens for split in first.splits.values()
    )


def test_damaged_cache_is_rebuilt(small_text: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_corpus(text_dataset_cfg(small_text, cache))
    expected = {name: list(split[0]) for name, split in first.splits.items()}
    del first  # its arrays map the files damaged below
    (store,) = cache.iterdir()
    (store / "val.tokens.npy").write_bytes(b"garbage")
    corpus = load_corpus(text_dataset_cfg(small_text, cache))
    assert {name: list(split[0]) for name, split in corpus.splits.items()} == expected


def test_rows_continue_from_batch_to_batch() -> None:
    tokens = torch.arange(10_000)
    stream = TokenStream(tokens, batch_size=4, seq_len=16, seed=0)
    x1, y1, fresh1 = stream.next_batch()
    x2, y2, fresh2 = stream.next_batch()
    assert fresh1.all() and not fresh2.any()
    assert x1.shape == (4, 16)
    torch.testing.assert_close(y1, x1 + 1)  # targets are the next tokens
    torch.testing.assert_close(x2[:, 0], x1[:, -1] + 1)  # row b of batch k+1 continues row b of batch k


def test_stream_resumes_exactly_and_wraps_to_a_new_offset() -> None:
    tokens = torch.arange(2_000)
    stream = TokenStream(tokens, batch_size=2, seq_len=10, seed=7)
    for _ in range(150):  # past one pass: rows are ~990 tokens, ~99 batches
        stream.next_batch()
    state = stream.state_dict()
    expected = [stream.next_batch() for _ in range(120)]
    resumed = TokenStream(tokens, batch_size=2, seq_len=10, seed=7)
    resumed.load_state_dict(state)
    for (x, y, fresh), (rx, ry, rfresh) in zip(expected, [resumed.next_batch() for _ in range(120)]):
        assert torch.equal(x, rx) and torch.equal(y, ry) and torch.equal(fresh, rfresh)
    assert any(fresh.all() for _, _, fresh in expected), "a new pass restarts the hidden state"


def test_too_little_data_for_one_window_is_a_user_error() -> None:
    with pytest.raises(UserError, match="fewer than one training window"):
        TokenStream(torch.arange(100), batch_size=8, seq_len=32, seed=0)


def test_eval_batches_cover_every_token_once() -> None:
    docs = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    seen = []
    for windows in eval_batches(docs, batch_size=2, seq_len=3, separator=0):
        for inputs, targets, mask, _ in windows:
            assert inputs.shape == targets.shape == mask.shape
            seen.extend(targets[mask].tolist())
    assert sorted(seen) == sorted(t for doc in docs for t in doc)  # the separator is context only


def test_split_for_eval_cuts_one_stream_into_chunks() -> None:
    chunks = split_for_eval([list(range(100))], pieces=8)
    assert sum(chunks, []) == list(range(100)) and len(chunks) <= 8
    docs = [[1, 2], [3]]
    assert split_for_eval(docs, pieces=8) == docs


def test_documents_start_from_a_fresh_state_with_the_separator_first() -> None:
    docs = [list(range(10, 10 + n)) for n in (5, 2, 9, 4, 7)]
    stream = DocumentStream(docs, separator=0, batch_size=2, seq_len=3, seed=1)
    seen: list[list[int]] = [[], []]
    pieces: list[list[int]] = []
    for _ in range(12):
        inputs, targets, reset = stream.next_batch()
        for b in range(2):
            if reset[b]:
                assert inputs[b, 0] == 0, "a fresh state always begins at the separator"
                if seen[b]:
                    pieces.append(seen[b])
                seen[b] = [0]
            kept = targets[b][targets[b] != IGNORE].tolist()
            seen[b].extend(kept)
            assert inputs[b, 1 : 1 + len(kept) - 1].tolist() == kept[:-1]  # inputs are the targets shifted
    # Every finished piece is exactly one document, read whole and in order.
    assert all(piece[1:] in docs for piece in pieces)
    assert {tuple(p[1:]) for p in pieces} == {tuple(d) for d in docs}  # 24 row-steps > one pass


def test_document_stream_resumes_exactly() -> None:
    docs = [list(range(1, n)) for n in range(3, 40, 3)]
    stream = DocumentStream(docs, separator=0, batch_size=3, seq_len=4, seed=2)
    for _ in range(25):
        stream.next_batch()
    state = stream.state_dict()
    expected = [stream.next_batch() for _ in range(30)]
    resumed = DocumentStream(docs, separator=0, batch_size=3, seq_len=4, seed=2)
    resumed.load_state_dict(state)
    for a, b in zip(expected, [resumed.next_batch() for _ in range(30)]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_training_stream_picks_the_layout() -> None:
    assert isinstance(training_stream([list(range(5000))], None, 2, 8, 0), TokenStream)
    assert isinstance(training_stream([[1, 2], [3, 4]], 0, 2, 8, 0), DocumentStream)
