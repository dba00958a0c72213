"""The command-line contract for music: train, sample (.mid/.musicxml/.wav/.png) and evaluate on bach, midi and jsb."""

from __future__ import annotations

import wave
from pathlib import Path

import matplotlib.image
import pretty_midi
import pytest
from music21 import converter

from generate.cli import run_sample as sample
from generate.errors import UserError
from tests.conftest import compose_config, run_cli, train_overrides
from tests.music_helpers import melody_midi, write_bad_files, write_songs


@pytest.fixture(autouse=True)
def one_thread_per_process(monkeypatch) -> None:
    # The CI box has 2 cores shared by several processes; torch's default thread pool then spins
    # and a 20-step smoke run goes from seconds to minutes.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def ok(result) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def check_outputs(out_dir: Path, count: int) -> list[pretty_midi.PrettyMIDI]:
    """Every sample has all four files, and each opens in its own reader."""
    midis = []
    for i in range(count):
        stem = out_dir / f"sample_{i}"
        midi = pretty_midi.PrettyMIDI(str(stem.with_suffix(".mid")))
        assert midi.instruments and midi.instruments[0].notes
        score = converter.parse(str(stem.with_suffix(".musicxml")))
        assert score.flatten().notes
        with wave.open(str(stem.with_suffix(".wav")), "rb") as wav:
            # mono with sine waves, stereo (the font's panning) with a SoundFont: generate/music/audio.py
            assert wav.getnchannels() in (1, 2) and wav.getsampwidth() == 2 and wav.getnframes() > 0
        assert matplotlib.image.imread(str(stem.with_suffix(".png"))).shape[0] > 100
        midis.append(midi)
    return midis


def test_bach_train_sample_evaluate(tmp_path: Path) -> None:
    out = ok(run_cli("train", *train_overrides(tmp_path, "dataset=bach", "dataset.max_files=6", "dataset.num_workers=1")))
    assert "6 file(s) read from music21's Bach chorales" in out and "pieces kept" in out
    assert "nats/token" in out
    ckpt = tmp_path / "checkpoints" / "bach" / "best.pt"  # run_name defaults to the dataset's name
    ok(run_cli("sample", f"checkpoint={ckpt}", "num_samples=2", "length=48", f"out_dir={tmp_path / 'samples'}"))
    check_outputs(tmp_path / "samples", 2)
    assert "bach test:" in ok(run_cli("evaluate", f"checkpoint={ckpt}", "split=test"))


@pytest.fixture(scope="module")
def midi_run(tmp_path_factory) -> tuple[Path, str]:
    """A melody model trained by the CLI on a folder with good songs and every kind of bad file."""
    root = tmp_path_factory.mktemp("midi_run")
    write_songs(root / "music", 6)
    write_bad_files(root / "music")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        result = run_cli("train", *train_overrides(root, "dataset=midi", f"dataset.path={root / 'music'}"))
    return root, ok(result)


def test_midi_folder_trains_despite_bad_files(midi_run: tuple[Path, str]) -> None:
    root, out = midi_run
    assert "6 used, 5 skipped (" in out and "not a MIDI file (no MThd header)" in out and "truncated MIDI file" in out
    assert "drum tracks only" in out and "empty file (0 bytes)" in out
    assert (root / "checkpoints" / "midi" / "best.pt").is_file()


def test_midi_sample_with_primer_and_beam_then_evaluate(midi_run: tuple[Path, str]) -> None:
    root, _ = midi_run
    ckpt = root / "checkpoints" / "midi" / "best.pt"
    primer = melody_midi(root / "primer.mid", [60, 62, 64, 65, 67])
    out_dir = root / "primed"
    ok(run_cli("sample", f"checkpoint={ckpt}", f"primer={primer}", "beam_size=3", "length=32", "qpm=100",
               "num_samples=2", f"out_dir={out_dir}"))
    for midi in check_outputs(out_dir, 2):
        # The primer comes first, at the requested tempo: quarter notes of 0.6 s.
        notes = sorted(midi.instruments[0].notes, key=lambda n: n.start)[:5]
        assert [n.pitch for n in notes] == [60, 62, 64, 65, 67]
        assert notes[1].start == pytest.approx(0.6, abs=1e-3)
    assert "midi test:" in ok(run_cli("evaluate", f"checkpoint={ckpt}"))


def test_primer_errors(midi_run: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = midi_run
    ckpt = root / "checkpoints" / "midi" / "best.pt"
    (tmp_path / "text.mid").write_text("not midi")
    pretty_midi.PrettyMIDI().write(str(tmp_path / "empty.mid"))
    melody_midi(tmp_path / "high.mid", [100, 103])
    cases = {
        "text.mid": "is not a readable MIDI file",
        "empty.mid": "has no pitched notes",
        "missing.mid": "primer file not found",
    }
    for name, message in cases.items():
        cfg = compose_config("sample", [f"checkpoint={ckpt}", f"primer={tmp_path / name}", f"out_dir={tmp_path}"])
        with pytest.raises(UserError, match=message):
            sample(cfg)
    # Pitches above the range are no reason to refuse: the primer is moved by octaves into it, as training pieces are.
    high = sample(compose_config("sample", [f"checkpoint={ckpt}", f"primer={tmp_path / 'high.mid'}", "length=8",
                                            f"out_dir={tmp_path}"]))[0]
    assert {n.pitch % 12 for n in high.piece.notes[:2]} == {100 % 12, 103 % 12}
    cfg = compose_config("sample", [f"checkpoint={ckpt}", "prompt=ROMEO", f"out_dir={tmp_path}"])
    with pytest.raises(UserError, match="for a music model give primer=FILE.mid"):
        sample(cfg)
    # As the user sees it: primer and prompt together, one line, exit 2, no traceback.
    result = run_cli("sample", f"checkpoint={ckpt}", f"primer={tmp_path / 'high.mid'}", "prompt=hi")
    assert result.returncode == 2 and "cannot be used together" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # ~13 s end to end; the bach run above covers the same CLI path quickly
def test_jsb_train_sample_evaluate_nll_per_time_step(tmp_path: Path) -> None:
    out = ok(run_cli("train", *train_overrides(tmp_path, "dataset=jsb")))
    assert "sequences train/val/test 229/76/77" in out
    ckpt = tmp_path / "checkpoints" / "jsb" / "best.pt"
    ok(run_cli("sample", f"checkpoint={ckpt}", "length=80", f"out_dir={tmp_path / 'samples'}"))
    check_outputs(tmp_path / "samples", 1)
    out = ok(run_cli("evaluate", f"checkpoint={ckpt}", "split=test"))
    assert "nats per time step over 4,725 steps" in out

