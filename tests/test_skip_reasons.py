"""True skip reasons: one file of each kind, made here, in a folder; each file's reason and the loading summary."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pretty_midi
import pytest

from generate.config import TrainRunConfig, to_object
from generate.data import load_corpus
from generate.sources.music import make_extraction, make_tokenizer, process_midi_file
from tests.conftest import compose_config
from tests.music_helpers import melody_midi, write_songs


def var_length(value: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.insert(0, (value & 0x7F) | 0x80)
    return bytes(out)


def smpte_melody(fps: int, ticks_per_frame: int, pitches: list[int], seconds: float) -> bytes:
    """A format-0 file timed in SMPTE frames: `pitches` one after another, each `seconds` long."""
    ticks = round(seconds * fps * ticks_per_frame)
    body = b"".join(bytes([0x00, 0x90, p, 80]) + var_length(ticks) + bytes([0x80, p, 0]) for p in pitches)
    track = body + bytes([0x00, 0xFF, 0x2F, 0x00])
    division = ((256 - fps) << 8) | ticks_per_frame
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, division) + b"MTrk" + struct.pack(">I", len(track)) + track


def drums_only(path: Path) -> None:
    pm = pretty_midi.PrettyMIDI()
    kit = pretty_midi.Instrument(0, is_drum=True)
    kit.notes = [pretty_midi.Note(100, 36, i * 0.5, i * 0.5 + 0.1) for i in range(32)]
    pm.instruments.append(kit)
    pm.write(str(path))


NOT_MIDI = "not a MIDI file (no MThd header)"
EXPECTED = {  # file name → the reason it is skipped with (the default melody tokenizer, range 48..84)
    "text.mid": NOT_MIDI,
    "noise.mid": NOT_MIDI,
    "truncated.mid": "truncated MIDI file (ends inside its header or a chunk)",
    "corrupt.mid": "corrupt MIDI file (has a header, but its data does not parse)",
    "smpte_18fps.mid": "unsupported timing (SMPTE at a frame rate other than 24, 25, 29.97 or 30 frames per second)",
    "no_tracks.mid": "MIDI file with no tracks",
    "empty.mid": "empty file (0 bytes)",
    "drums.mid": "drum tracks only",
    "no_notes.mid": "no notes",
    "short.mid": "nothing at least 16 steps long",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("skips")
    write_songs(root, 4)
    good = (root / "song_000.mid").read_bytes()
    (root / "text.mid").write_text("This is a text file someone named .mid\n" * 20)
    (root / "noise.mid").write_bytes(random.Random(0).randbytes(2000))
    (root / "truncated.mid").write_bytes(good[: len(good) // 2])
    header = b"MThd" + struct.pack(">IHHH", 6, 1, 1, 480)
    bad_event = bytes([0x00, 0xF4, 0x01, 0x02]) + b"\x00" * 30  # 0xF4: an undefined status byte
    (root / "corrupt.mid").write_bytes(header + b"MTrk" + struct.pack(">I", len(bad_event)) + bad_event)
    (root / "smpte_18fps.mid").write_bytes(smpte_melody(18, 40, [60, 62, 64], 0.5))
    (root / "smpte_25fps.mid").write_bytes(smpte_melody(25, 40, [60, 62, 64, 65, 67, 65, 64, 62] * 4, 0.5))  # read
    (root / "no_tracks.mid").write_bytes(b"MThd" + struct.pack(">IHHH", 6, 1, 0, 480))
    (root / "empty.mid").write_bytes(b"")
    drums_only(root / "drums.mid")
    pretty_midi.PrettyMIDI().write(str(root / "no_notes.mid"))
    melody_midi(root / "short.mid", [60, 62, 64])  # three quarter notes: 12 steps, fewer than 16
    return root


def config(tmp_path: Path, folder: Path, *overrides: str):
    cfg = compose_config("config", ["dataset=midi", f"dataset.path={folder}", f"dataset.cache_dir={tmp_path / 'cache'}",
                                    "dataset.num_workers=1", *overrides])
    return to_object(cfg, TrainRunConfig).dataset


def test_each_file_says_its_true_reason(tmp_path: Path, folder: Path) -> None:
    cfg = config(tmp_path, folder, "dataset.min_melody_steps=20")
    tok = make_tokenizer(cfg)
    ex = make_extraction(cfg, tok)
    got = {name: process_midi_file((name, str(folder / name)), tok, ex).reason for name in EXPECTED}
    assert got == {name: reason.replace("16 steps", "20 steps") for name, reason in EXPECTED.items()}
    smpte = process_midi_file(("smpte_25fps.mid", str(folder / "smpte_25fps.mid")), tok, ex)
    assert smpte.reason is None and smpte.docs  # SMPTE at a real frame rate is read


def test_the_loading_summary_counts_every_reason(tmp_path: Path, folder: Path, capsys) -> None:
    corpus = load_corpus(config(tmp_path, folder))
    skipped = corpus.stats["skipped"]
    assert skipped == {**{r: 1 for r in EXPECTED.values() if r != NOT_MIDI}, NOT_MIDI: 2}
    assert corpus.stats["files_used"] == 5  # the 4 songs and the 25 fps SMPTE file
    out = capsys.readouterr().out
    assert f"{len(EXPECTED) + 5} file(s) read" in out and f"5 used, {len(EXPECTED)} skipped (2 {NOT_MIDI}" in out
    for reason in EXPECTED.values():
        assert reason in out


def test_every_fragment_outside_the_range_is_said_so(tmp_path: Path, folder: Path) -> None:
    (tmp_path / "low").mkdir()
    low = melody_midi(tmp_path / "low" / "bass.mid", [28, 31, 33, 35] * 8)  # E1..B1: below any range given here
    wide = melody_midi(tmp_path / "low" / "wide.mid", [60, 71, 62, 69] * 8)  # C4..B4: 11 semitones
    cases = [
        # melody, range 60..66: no octave move fits an 11-semitone line into 7 semitones
        (wide, ["dataset.min_pitch=60", "dataset.max_pitch=66"], "too wide for the range 60..66"),
        # piano roll and performance: every note is outside, so none is left to keep
        (low, ["dataset.tokenizer=polyphonic", "dataset.min_pitch=48"], "no notes in the pitch range 48..108"),
        (low, ["dataset.tokenizer=events", "dataset.min_pitch=48"], "no notes in the pitch range 48..108"),
    ]
    for path, overrides, reason in cases:
        cfg = config(tmp_path, folder, *overrides)
        tok = make_tokenizer(cfg)
        result = process_midi_file((path.name, str(path)), tok, make_extraction(cfg, tok))
        assert result.reason is not None and reason in result.reason, (overrides, result.reason)
        # never "too short" for a file whose fragments are all long enough
        assert "steps long" not in result.reason and "shorter" not in result.reason
    # By default (the full piano for events) the same bass file is kept whole.
    cfg = config(tmp_path, folder, "dataset.tokenizer=events")
    tok = make_tokenizer(cfg)
    result = process_midi_file((low.name, str(low)), tok, make_extraction(cfg, tok))
    assert result.reason is None and not any(k.startswith("notes outside") for k in result.counts)
