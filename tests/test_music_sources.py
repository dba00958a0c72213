"""Music sources: MIDI folders with bad files, extraction stages, transposition, caching keys, benchmarks."""

from __future__ import annotations

import os
import struct
from collections import Counter
from pathlib import Path

import pretty_midi
import pytest
from hydra.errors import ConfigCompositionException

from generate.data import load_corpus
from generate.errors import UserError
from generate.music.extract import fit_octaves, key_shift, melody_pieces
from generate.music.notes import Note, Piece, Track
from generate.sources.music import build_midi, midi_fingerprint, process_midi_file
from generate.sources.splits import split_units
from generate.tokenizers.melody import MelodyTokenizer
from tests.conftest import compose_config
from tests.music_helpers import melody_midi, write_bad_files, write_songs


def dataset_cfg(tmp_path: Path, *overrides: str):
    cfg = compose_config("config", ["dataset=midi", f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.num_workers=1", *overrides])
    return cfg.dataset


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixed")
    write_songs(folder, 6)
    write_bad_files(folder)
    return folder


def test_bad_files_are_skipped_and_counted(tmp_path: Path, mixed_folder: Path, capsys) -> None:
    corpus = build_midi(dataset_cfg(tmp_path, f"dataset.path={mixed_folder}"))
    assert corpus.stats["files"] == 11 and corpus.stats["files_used"] == 6
    assert corpus.stats["skipped"] == {
        # corrupt.mid (text) and sub/truncated.MID (found recursively, any case), each with its true reason
        "not a MIDI file (no MThd header)": 1,
        "truncated MIDI file (ends inside its header or a chunk)": 1,
        "no notes": 1,
        "drum tracks only": 1,
        "empty file (0 bytes)": 1,
    }
    assert corpus.stats["counts"]["drum tracks skipped"] == 7  # 6 songs + the drum-only file
    assert all(corpus.splits[s] for s in ("train", "val", "test"))
    out = capsys.readouterr().out
    assert "6 used, 5 skipped (1 not a MIDI file" in out and "pieces kept" in out


@pytest.mark.parametrize("tokenizer", ["polyphonic", "events"])
def test_midi_folder_with_the_other_tokenizers(tmp_path: Path, mixed_folder: Path, tokenizer: str) -> None:
    corpus = build_midi(
        dataset_cfg(tmp_path, f"dataset.path={mixed_folder}", f"dataset.tokenizer={tokenizer}", "dataset.transpose=none",
                    "dataset.min_pitch=21", "dataset.max_pitch=108")
    )
    assert corpus.tokenizer.kind == tokenizer and corpus.stats["files_used"] == 6
    piece = corpus.tokenizer.decode(corpus.splits["train"][0])
    # All pitched tracks together: the bass (36..43) sounds with the lead (60 and up); no drums.
    pitches = {n.pitch for n in piece.notes}
    assert min(pitches) < 44 and max(pitches) >= 60
    overlapping = sum(1 for a, b in zip(piece.notes, piece.notes[1:]) if b.start < a.end)
    assert overlapping > 0


def test_settings_that_do_not_fit_the_source(tmp_path: Path, mixed_folder: Path) -> None:
    with pytest.raises(UserError, match="does not read music; choose one of melody, polyphonic, events"):
        build_midi(dataset_cfg(tmp_path, f"dataset.path={mixed_folder}", "dataset.tokenizer=char"))
    with pytest.raises(ConfigCompositionException, match="dataset.transpose=up"):
        dataset_cfg(tmp_path, f"dataset.path={mixed_folder}", "dataset.transpose=up")  # the schema's Enum refuses it
    cfg = compose_config("config", ["dataset=jsb", "dataset.tokenizer=melody", f"dataset.cache_dir={tmp_path}"]).dataset
    with pytest.raises(UserError, match="piano roll: use dataset.tokenizer=polyphonic"):
        load_corpus(cfg)


def test_worker_processes_give_the_same_corpus(tmp_path: Path, mixed_folder: Path) -> None:
    serial = build_midi(dataset_cfg(tmp_path / "serial", f"dataset.path={mixed_folder}"))
    pooled = build_midi(dataset_cfg(tmp_path / "pooled", f"dataset.path={mixed_folder}", "dataset.num_workers=2"))
    assert pooled.splits == serial.splits and pooled.stats == serial.stats


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no midi here")
    with pytest.raises(UserError, match="no MIDI files .* under"):
        build_midi(dataset_cfg(tmp_path, f"dataset.path={tmp_path / 'empty'}"))
    with pytest.raises(UserError, match="does not exist"):
        build_midi(dataset_cfg(tmp_path, f"dataset.path={tmp_path / 'nowhere'}"))
    with pytest.raises(UserError, match="needs a folder: add dataset.path=DIR"):
        build_midi(dataset_cfg(tmp_path))


def test_all_files_unusable_is_one_clear_error(tmp_path: Path) -> None:
    write_bad_files(tmp_path / "bad")
    with pytest.raises(UserError) as err:
        build_midi(dataset_cfg(tmp_path, f"dataset.path={tmp_path / 'bad'}"))
    message = str(err.value)
    assert "none of the 5 file(s)" in message and "1 drum tracks only" in message and "\n" not in message


def test_melody_extraction_stages(tmp_path: Path) -> None:
    tok = MelodyTokenizer(48, 84, 4)
    ex = tok.extraction(min_melody_steps=8, split_silence_quarters=2)
    # Two phrases 3 quarters apart (a long rest: split), then a two-note scrap (too short), and a
    # phrase an octave too low (moved up into range).
    lead = [Note(60 + i, i, i + 1) for i in range(4)] + [Note(67 + i, 7 + i, 8 + i) for i in range(3)]
    lead += [Note(72, 14, 14.5), Note(74, 14.5, 15)]
    low = [Note(36 + i, i, i + 1) for i in range(4)]
    counts: Counter = Counter()
    pieces = melody_pieces([Track(lead), Track(low)], ex, counts)
    assert counts["fragments"] == 4 and counts["fragments shorter than 8 steps"] == 1
    assert [[n.pitch for n in p.notes] for p in pieces] == [[60, 61, 62, 63], [67, 68, 69], [48, 49, 50, 51]]
    assert all(p.notes[0].start == 0 for p in pieces)


def test_transposition_to_c_and_augmentation(tmp_path: Path) -> None:
    g_major = [67, 69, 71, 72, 74, 76, 78, 79, 74, 71, 67, 62, 66, 67]  # G major scale and arpeggio, F sharp included
    assert key_shift([Note(p, i, i + 1) for i, p in enumerate(g_major)]) == 5  # G up a fourth to C (not down a fifth)
    path = melody_midi(tmp_path / "g.mid", g_major)
    tok = MelodyTokenizer(48, 96, 4)
    to_c = process_midi_file(("g.mid", str(path)), tok, tok.extraction(transpose="c", min_melody_steps=4))
    assert min(n.pitch for n in tok.decode(to_c.docs[0][0]).notes) == 62 + 5
    augmented = process_midi_file(("g.mid", str(path)), tok, tok.extraction(transpose="augment", transpose_range=2))
    assert sorted(augmented.docs[0]) == [-2, -1, 0, 1, 2]
    assert min(n.pitch for n in tok.decode(augmented.docs[0][-2]).notes) == 60


def test_augmented_copies_are_training_data_only(tmp_path: Path) -> None:
    write_songs(tmp_path / "songs", 5)
    plain = build_midi(
        dataset_cfg(tmp_path, f"dataset.path={tmp_path / 'songs'}", "dataset.transpose=none", "dataset.min_pitch=21", "dataset.max_pitch=108")
    )
    augmented = build_midi(
        dataset_cfg(
            tmp_path, f"dataset.path={tmp_path / 'songs'}", "dataset.transpose=augment", "dataset.transpose_range=1",
            "dataset.min_pitch=21", "dataset.max_pitch=108",
        )
    )
    assert augmented.splits["val"] == plain.splits["val"] and augmented.splits["test"] == plain.splits["test"]
    assert len(augmented.splits["train"]) == 3 * len(plain.splits["train"])


def test_fit_octaves() -> None:
    piece = Piece([Note(30, 0, 1), Note(40, 1, 2)])
    assert [n.pitch for n in fit_octaves(piece, 48, 84).notes] == [54, 64]
    assert fit_octaves(Piece([Note(40, 0, 1), Note(90, 1, 2)]), 48, 84) is None


def test_split_units_never_empty_and_too_few_is_an_error() -> None:
    # Tiny folders: every split with a share gets a unit (see tests/test_splits.py for stability).
    assert sorted(split_units(["a", "b", "c"], 0.1, 0.05).values()) == ["test", "train", "val"]
    assert sorted(split_units(["a", "b"], 0.1, 0.0).values()) == ["train", "val"]
    assert set(split_units(["a", "b"], 0.0, 0.0).values()) == {"train"}
    with pytest.raises(UserError, match="only 2 piece"):
        split_units(["a", "b"], 0.1, 0.05)


def test_fingerprint_follows_files_and_settings(tmp_path: Path) -> None:
    folder = tmp_path / "songs"
    paths = write_songs(folder, 3)
    cfg = dataset_cfg(tmp_path, f"dataset.path={folder}")
    first = midi_fingerprint(cfg)
    assert midi_fingerprint(cfg) == first
    cfg.steps_per_quarter = 2
    assert midi_fingerprint(cfg) != first
    cfg.steps_per_quarter = 4
    cfg.num_workers = 3  # how the work is done does not change the tokens
    assert midi_fingerprint(cfg) == first
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert midi_fingerprint(cfg) != first


def test_cached_corpus_reloads(tmp_path: Path, capsys) -> None:
    write_songs(tmp_path / "songs", 4)
    cfg = dataset_cfg(tmp_path, f"dataset.path={tmp_path / 'songs'}")
    built = load_corpus(cfg)
    again = load_corpus(cfg)
    assert "loaded token cache" in capsys.readouterr().out
    assert again.splits == built.splits and again.tokenizer.to_dict() == built.tokenizer.to_dict()


def test_long_midi_at_music21_resolution_is_read(tmp_path: Path) -> None:
    # The trap: music21 writes 10080 ticks per quarter, so 1,100 quarters pass pretty_midi's MAX_TICK
    # (1e7) and it calls the file "likely corrupt". Such files are re-timed and read.
    pm = pretty_midi.PrettyMIDI(resolution=10080, initial_tempo=120)
    lead = pretty_midi.Instrument(0)
    lead.notes = [pretty_midi.Note(80, 60 + i % 5, q * 0.5, (q + 1) * 0.5) for i, q in enumerate(range(1080, 1100))]
    pm.instruments.append(lead)
    pm.write(str(tmp_path / "long.mid"))
    with pytest.raises(ValueError, match="likely corrupt"):
        pretty_midi.PrettyMIDI(str(tmp_path / "long.mid"))
    tok = MelodyTokenizer(36, 96, 4)
    result = process_midi_file(("long.mid", str(tmp_path / "long.mid")), tok, tok.extraction(min_melody_steps=8))
    assert result.reason is None
    assert [n.pitch for n in tok.decode(result.docs[0][0]).notes] == [60 + i % 5 for i in range(20)]
    # A note past pretty_midi's limit even at 480 ticks per quarter is read now; alone it is too short to keep.
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120)
    lead.notes = [pretty_midi.Note(80, 60, 11_000_000 / 480 * 0.5, 11_000_001 / 480 * 0.5)]
    pm.instruments = [lead]
    pm.write(str(tmp_path / "huge.mid"))
    result = process_midi_file(("huge.mid", str(tmp_path / "huge.mid")), tok, tok.extraction())
    assert result.reason == "nothing at least 16 steps long"
    # Times past 32-bit ticks (nine maximal deltas) wrap in the parser: counted as corrupt, not misread.
    wait = bytes([0xFF, 0xFF, 0xFF, 0x7F, 0xFF, 0x01, 0x00])  # delta 0x0FFFFFFF, an empty text event
    body = wait * 9 + bytes([0x00, 0x90, 60, 90, 0x60, 0x80, 60, 0, 0x00, 0xFF, 0x2F, 0x00])
    data = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(body)) + body
    (tmp_path / "wrapped.mid").write_bytes(data)
    result = process_midi_file(("wrapped.mid", str(tmp_path / "wrapped.mid")), tok, tok.extraction())
    assert result.reason == "corrupt MIDI file (has a header, but its data does not parse)"


def test_benchmark_jsb_split_and_steps(tmp_path: Path) -> None:
    cfg = compose_config("config", ["dataset=jsb", f"dataset.cache_dir={tmp_path}"]).dataset
    corpus = load_corpus(cfg)
    assert corpus.stats["sequences"] == {"train": 229, "val": 76, "test": 77}
    assert corpus.stats["time_steps"] == {"train": 13807, "val": 4602, "test": 4725}
    tok = corpus.tokenizer
    assert sum(tok.count_time_steps(d) for d in corpus.splits["test"]) == 4725


@pytest.mark.parametrize("name", ["nottingham", "musedata", "pianomidi"])
def test_other_benchmarks_load(tmp_path: Path, name: str) -> None:
    cfg = compose_config("config", [f"dataset={name}", f"dataset.cache_dir={tmp_path}", "dataset.max_files=3"]).dataset
    corpus = load_corpus(cfg)
    assert corpus.stats["sequences"] == {"train": 3, "val": 3, "test": 3}
    assert corpus.tokenizer.steps_per_quarter == 2


def test_scores_folder(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    folder.mkdir()
    abc = "X:1\nT:Scale\nM:4/4\nL:1/8\nK:C\nCDEF GABc|cBAG FEDC|CDEF GABc|c8|]\n"
    for i in range(3):
        (folder / f"tune{i}.abc").write_text(abc.replace("T:Scale", f"T:Scale {i}"))
    (folder / "broken.xml").write_text("<score-partwise><part></score-partwise>")
    cfg = compose_config("config", ["dataset=scores", f"dataset.path={folder}", f"dataset.cache_dir={tmp_path}", "dataset.num_workers=1"]).dataset
    corpus = load_corpus(cfg)
    assert corpus.stats["files_used"] == 3 and sum(corpus.stats["skipped"].values()) == 1
    melody = corpus.tokenizer.decode(corpus.splits["val"][0])
    assert [n.pitch for n in melody.notes[:8]] == [60, 62, 64, 65, 67, 69, 71, 72]


def test_key_profiles_are_music21s() -> None:
    from music21.analysis.discrete import KrumhanslSchmuckler

    from generate.music.extract import key_profiles

    ks = KrumhanslSchmuckler()
    assert key_profiles() == (ks.getWeights("major"), ks.getWeights("minor"))
