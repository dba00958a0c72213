"""The flat token store, streaming text tokenization, the incremental MIDI cache and bounded evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from generate import sources
from generate.data import DocumentStream, TokenStream, load_corpus, split_for_eval
from generate.errors import UserError
from generate.sources import filecache, text
from generate.sources.store import DamagedStore, TokenSplit, load_store, save_store, token_dtype
from generate.tokenizers import CharTokenizer
from tests.conftest import compose_config
from tests.music_helpers import write_bad_files, write_songs


def dataset(kind: str, path: Path, cache: Path, *extra: str):
    return compose_config("config", [f"dataset={kind}", f"dataset.path={path}", f"dataset.cache_dir={cache}",
                                     "dataset.num_workers=1", *extra]).dataset


# ---------------------------------------------------------------- the store


def test_store_round_trip_is_memory_mapped_and_compact(tmp_path: Path) -> None:
    docs = {"train": [[1, 2, 3], [], [4]], "val": [[5, 6]], "test": []}
    splits = {name: TokenSplit.from_docs(d) for name, d in docs.items()}
    save_store(tmp_path, {"kind": "x"}, 7, splits, {"note": 1})
    meta, loaded = load_store(tmp_path, ("train", "val", "test"))
    assert meta["stats"] == {"note": 1} and meta["dtype"] == "<u2"  # 7 ids fit in 16 bits
    for name, split in loaded.items():
        assert [list(doc) for doc in split] == docs[name]
    assert isinstance(loaded["train"].tokens, np.memmap) and not loaded["train"].tokens.flags.writeable
    assert token_dtype(1 << 16) == np.uint16 and token_dtype((1 << 16) + 1) == np.int32


@pytest.mark.parametrize("damage", ["meta", "missing split", "short tokens", "ids out of range", "offsets"])
def test_every_kind_of_damage_is_caught(tmp_path: Path, damage: str) -> None:
    splits = {name: TokenSplit.from_docs([[1, 2, 3], [4, 5]]) for name in ("train", "val", "test")}
    save_store(tmp_path, {"kind": "x"}, 6, splits, {})
    tokens = tmp_path / "val.tokens.npy"
    if damage == "meta":
        (tmp_path / "meta.json").write_text("{half a fi")
    elif damage == "missing split":
        (tmp_path / "test.offsets.npy").unlink()
    elif damage == "short tokens":
        tokens.write_bytes(tokens.read_bytes()[:-4])
    elif damage == "ids out of range":
        raw = bytearray(tokens.read_bytes())
        raw[-2:] = (9).to_bytes(2, "little")  # id 9 in a vocabulary of 6
        tokens.write_bytes(bytes(raw))
    else:
        np.save(tmp_path / "train.offsets.npy", np.array([0, 6, 5]))  # a document of -1 tokens
    with pytest.raises(DamagedStore):
        load_store(tmp_path, ("train", "val", "test"))


def test_a_build_that_dies_half_way_leaves_no_store(small_text: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"

    def dies(cfg, workdir):
        (workdir / "train.tokens.npy").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setitem(sources.SOURCES, "text", (text.fingerprint, dies))
    with pytest.raises(KeyboardInterrupt):
        load_corpus(dataset("text", small_text, cache))
    assert list(cache.iterdir()) == []  # the temporary folder is gone, nothing is published
    monkeypatch.undo()
    corpus = load_corpus(dataset("text", small_text, cache))
    assert corpus.splits["train"].num_tokens > 0


# ---------------------------------------------------------------- streaming text


def test_streaming_text_gives_the_same_ids_across_chunk_boundaries(tmp_path: Path, monkeypatch) -> None:
    body = "héllo wörld — ✓ 𝄞 naïve\n" * 300  # 1-, 2-, 3- and 4-byte characters
    path = tmp_path / "t.txt"
    path.write_text(body, encoding="utf-8")
    monkeypatch.setattr(text, "CHUNK_BYTES", 7)  # cuts land inside multi-byte characters
    corpus = load_corpus(dataset("text", path, tmp_path / "cache"))
    tok = CharTokenizer.fit(body)
    assert corpus.tokenizer.to_dict() == tok.to_dict()
    ids = tok.encode(body)
    expected = text.split_stream(ids, 0.1, 0.05)
    for name in ("train", "val", "test"):
        assert [list(map(int, doc)) for doc in corpus.splits[name]] == expected[name]
    assert corpus.splits["val"].tokens.dtype == np.uint16


def test_bad_text_is_a_one_line_error_naming_the_byte(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("abc déf".encode("latin-1"))
    monkeypatch.setattr(text, "CHUNK_BYTES", 2)
    with pytest.raises(UserError, match="invalid byte at offset 5"):
        load_corpus(dataset("text", path, tmp_path / "cache"))
    (tmp_path / "blank.txt").write_text(" \n\t\n")
    with pytest.raises(UserError, match="empty"):
        load_corpus(dataset("text", tmp_path / "blank.txt", tmp_path / "cache"))
    (tmp_path / "cut.txt").write_bytes("ok ✓".encode()[:-1])  # ends inside a character
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(dataset("text", tmp_path / "cut.txt", tmp_path / "cache"))


def test_vectorised_encoding_matches_and_names_unseen_characters() -> None:
    tok = CharTokenizer.fit("abc ✓")
    assert tok.encode_array("a ✓cb").tolist() == tok.encode("a ✓cb")
    with pytest.raises(UserError, match="never saw"):
        tok.encode_array("abz")


# ---------------------------------------------------------------- batches from the memmap


def test_streams_read_the_memory_mapped_store_like_lists(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 50, size=n).tolist() for n in (5, 0, 40, 3, 17, 9, 60)]
    save_store(tmp_path, {}, 50, {"train": TokenSplit.from_docs(docs)}, {})
    (mapped,) = load_store(tmp_path, ("train",))[1].values()
    from_lists = DocumentStream(docs, 0, batch_size=3, seq_len=4, seed=5)
    from_store = DocumentStream(mapped, 0, batch_size=3, seq_len=4, seed=5)
    for _ in range(30):
        for a, b in zip(from_lists.next_batch(), from_store.next_batch()):
            assert torch.equal(a, b)
    stream = TokenStream(mapped.tokens, batch_size=2, seq_len=5, seed=1)
    x, y, _ = stream.next_batch()
    assert x.dtype == torch.long and torch.equal(x[:, 1:], y[:, :-1])


def test_ranks_read_their_own_rows_of_the_same_mapped_files(tmp_path: Path) -> None:
    tokens = np.arange(5_000, dtype=np.uint16)
    save_store(tmp_path, {}, 5_000, {"train": TokenSplit(tokens, np.array([0, 5_000]))}, {})
    (mapped,) = load_store(tmp_path, ("train",))[1].values()
    whole = TokenStream(mapped.tokens, batch_size=4, seq_len=8, seed=3)
    ranks = [TokenStream(mapped.tokens, batch_size=2, seq_len=8, seed=3, rank=r, world_size=2) for r in (0, 1)]
    x, _, _ = whole.next_batch()
    assert torch.equal(torch.cat([r.next_batch()[0] for r in ranks]), x)


# ---------------------------------------------------------------- bounded evaluation


def test_bounded_evaluation_is_a_fixed_sample_of_the_budget() -> None:
    stream = np.arange(100_000)
    chunks = split_for_eval([stream], pieces=8, max_tokens=8_000)
    assert len(chunks) == 8 and sum(map(len, chunks)) == 8_000
    assert chunks[0][0] == 0 and chunks[-1][-1] == 99_999  # spread over the whole split
    assert [c[0] for c in chunks] == [c[0] for c in split_for_eval([stream], pieces=8, max_tokens=8_000)]
    assert sum(map(len, split_for_eval([stream], pieces=8, max_tokens=0))) == 100_000  # 0: the whole split
    docs = [list(range(n)) for n in range(1, 200)]
    picked = split_for_eval(docs, pieces=8, max_tokens=1_000)
    assert 1_000 <= sum(map(len, picked)) < 1_000 + 200 and picked == split_for_eval(docs, 8, 1_000)
    assert split_for_eval(docs, 8, 10**9) == docs


def test_training_scores_a_bounded_sample_and_evaluate_the_whole_split(small_text: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    import generate
    import generate.trainer

    scored: list[int] = []
    real = generate.trainer.evaluate_loss
    monkeypatch.setattr(generate.trainer, "evaluate_loss",
                        lambda model, docs, *args, **kw: scored.append(sum(map(len, docs))) or real(model, docs, *args, **kw))
    summary = generate.train("text", path=str(small_text), cache_dir=str(tmp_path / "cache"), max_steps=4,
                             batch_size=2, seq_len=16, eval_every=2, eval_tokens=64, eval_batch_size=4, hidden_size=16,
                             num_layers=1, checkpoints_dir=str(tmp_path / "ck"), run_name="r")
    assert scored == [64, 64]  # both evaluations: the same 64-token sample, not the 1,228-token split
    corpus = load_corpus(dataset("text", small_text, tmp_path / "cache"))
    whole = generate.load(summary.best_path).evaluate("val", batch_size=64, dataset_path=str(small_text))
    chunks = split_for_eval(corpus.splits["val"], 64)
    assert whole.tokens == corpus.splits["val"].num_tokens - len(chunks)  # every chunk's first token is context


# ---------------------------------------------------------------- the incremental MIDI cache


def test_adding_and_deleting_files_retokenizes_only_those(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = tmp_path / "music"
    write_songs(folder, 8)
    write_bad_files(folder)
    cache = tmp_path / "cache"
    first = load_corpus(dataset("midi", folder, cache))
    seen: list[str] = []
    real = sources.music.process_midi_file

    def counted(item, **kwargs):
        seen.append(item[0])
        return real(item, **kwargs)

    monkeypatch.setattr(sources.music, "process_midi_file", counted)
    write_songs(folder, 2, start_seed=50)
    os.utime(folder / "song_003.mid", ns=(1, 1))  # a changed file (its mtime moved) is read again
    (folder / "song_005.mid").unlink()
    capsys.readouterr()
    grown = load_corpus(dataset("midi", folder, cache))
    assert sorted(seen) == ["song_003.mid", "song_050.mid", "song_051.mid"]
    assert "11 file(s) unchanged since the last run, 3 tokenized" in capsys.readouterr().out
    assert grown.stats["files"] == first.stats["files"] + 1
    # The same corpus as tokenizing the folder from scratch.
    fresh = load_corpus(dataset("midi", folder, tmp_path / "fresh"))
    for name in ("train", "val", "test"):
        assert grown.splits[name] == fresh.splits[name]
    assert grown.stats == fresh.stats


@pytest.mark.parametrize("damage", ["segment cut short", "meta.json missing", "docs.npy junk"])
def test_a_damaged_file_table_means_tokenizing_again(tmp_path: Path, damage: str, capsys) -> None:
    folder = tmp_path / "music"
    write_songs(folder, 4)
    cache = tmp_path / "cache"
    first = load_corpus(dataset("midi", folder, cache))
    (table,) = cache.glob("midi-files-*")
    if damage == "segment cut short":
        (segment,) = table.glob("segment-*.bin")
        segment.write_bytes(segment.read_bytes()[:-2])
    elif damage == "meta.json missing":
        (table / "meta.json").unlink()
    else:
        (table / "docs.npy").write_bytes(b"junk")
    for store in cache.glob("midi-v*"):  # force a rebuild of the split store
        (store / "meta.json").unlink()
    capsys.readouterr()
    again = load_corpus(dataset("midi", folder, cache))
    assert "unchanged since the last run" not in capsys.readouterr().out  # every file tokenized again
    for name in ("train", "val", "test"):
        assert again.splits[name] == first.splits[name]


def test_many_updates_share_segments_then_compact(tmp_path: Path, monkeypatch) -> None:
    """Each update adds one segment and links the old ones; past MAX_SEGMENTS (or mostly dead tokens) one is left."""
    folder, cache = tmp_path / "music", tmp_path / "cache"
    write_songs(folder, 3)
    monkeypatch.setattr(filecache, "MAX_SEGMENTS", 3)
    for round_ in range(1, 6):
        load_corpus(dataset("midi", folder, cache))
        (table,) = cache.glob("midi-files-*")
        segments = sorted(table.glob("segment-*.bin"))
        assert len(segments) == (round_ if round_ <= 3 else round_ - 3)  # 4th update: 4 > 3 segments, rewritten as 1
        assert all(s.stat().st_nlink == 1 for s in segments)  # the old table's folder is gone, its links with it
        write_songs(folder, 1, start_seed=10 * round_)
    for gone in sorted(folder.glob("*.mid"))[:-3]:  # 5 of 8 files deleted: most tokens in the segments are dead
        gone.unlink()
    monkeypatch.setattr(filecache, "GATHER_TOKENS", 1)  # (the slack allowed before a rewrite)
    grown = load_corpus(dataset("midi", folder, cache))
    assert len(list(table.glob("segment-*.bin"))) == 1
    fresh = load_corpus(dataset("midi", folder, tmp_path / "fresh"))
    for name in ("train", "val", "test"):
        assert grown.splits[name] == fresh.splits[name]
    assert grown.stats == fresh.stats


def test_gathering_documents_across_segments_in_small_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 500, size=n).astype(np.uint16) for n in (5, 0, 17, 3, 40, 1, 9)]
    table = None
    for part, at in enumerate((0, 3, 5)):  # three segments, built as three updates would
        folder = tmp_path / str(part)
        folder.mkdir()
        chunk = docs[at : {0: 3, 3: 5, 5: 7}[at]]
        result = SimpleNamespace(reason=None, docs=[{0: d} for d in chunk], counts={"pieces kept": len(chunk)})
        built = filecache.build_table(folder, np.dtype(np.uint16), [((f"f{part}", 1, 1), result)])
        table = built if table is None else table.concat(built)
    order = np.array([6, 0, 4, 1, 2, 5, 3])
    for budget in (1, 7, 1 << 20):
        got = np.concatenate([np.asarray(c) for c in table.gather(order, budget)])
        assert np.array_equal(got, np.concatenate([docs[i] for i in order]))
    picked = table.take(np.array([2, 0]))
    assert picked.names == ["f2", "f0"] and picked.counts.sum() == 5
    assert np.array_equal(np.concatenate(list(picked.gather(np.arange(len(picked.docs))))),
                          np.concatenate(docs[5:] + docs[:3]))


def test_names_and_listing_are_compact_and_exact() -> None:
    from generate.sources.files import Listing, Names, encode_name

    names = ["a.mid", "sub/ü tune.mid", "bad\udcff.mid", ""]  # a non-UTF-8 byte in a name survives
    packed = Names(b"".join(encode_name(n) for n in names))
    assert len(packed) == 4 and list(packed) == names and packed[1] == names[1] and packed[-1] == ""
    assert packed.take(np.array([2, 0])) == [names[2], names[0]]
    assert list(packed + packed.take(np.array([1]))) == names + [names[1]]
    listing = Listing()
    for i, name in enumerate(names[:3]):
        listing.append(name, 10 + i, 2**62 + i)
    listing.finish(limit=2)  # max_files: the first two in path order
    assert list(listing) == [("a.mid", 10, 2**62), ("sub/ü tune.mid", 11, 2**62 + 1)] and listing[1][0] == names[1]
    assert list(Listing.of(listing)) == list(listing)
