"""Sampling from control tokens (meter=, key=) and from primers, through the CLI and the API, on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

import generate
from generate.errors import UserError
from generate.music.analysis import scale_of
from generate.music.notes import Key
from tests.conftest import run_cli, train_overrides
from tests.music_helpers import write_songs


@pytest.fixture(scope="module")
def folk_like(tmp_path_factory) -> tuple[Path, Path]:
    """A melody model with BAR and control tokens (the midi preset's defaults), trained for a few steps."""
    root = tmp_path_factory.mktemp("controls")
    songs = write_songs(root / "music", 5)
    result = run_cli("train", *train_overrides(root, "dataset=midi", f"dataset.path={root / 'music'}",
                                               "dataset.num_workers=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "keys estimated (none in the file)" in result.stdout  # the songs have no key signature: estimated, counted
    return root / "checkpoints" / "midi" / "best.pt", songs[0]


def test_controls_start_generation_and_output_returns_to_the_asked_key(folk_like: tuple[Path, Path]) -> None:
    ckpt, _ = folk_like
    model = generate.load(ckpt)
    tok = model.tokenizer
    assert model.transposed_to_c  # the midi preset trains in C major / A minor
    ids, keep, shift = model.start(meter="3/4", key="Dm")
    assert [tok.token_name(i) for i in ids] == ["SEP", "METER(3/4)", "KEY(Am)"] and keep and shift == 5
    samples = model.sample(meter="3/4", key="Dm", length=40, num_samples=2, seed=1)
    assert all(s.piece.key == Key(2, "minor") for s in samples)  # generated in A minor, moved up to D minor
    keyed = model.sample(key="G", length=40, num_samples=3, seed=2)  # the model draws each metre first
    assert len(keyed) == 3 and all(s.piece.key == Key(7) for s in keyed)
    again = model.sample(key="G", length=40, num_samples=3, seed=2)
    assert [s.piece.notes for s in again] == [s.piece.notes for s in keyed]
    with pytest.raises(UserError, match="primer= keeps the primer's own metre and key"):
        model.sample(primer=str(folk_like[1]), meter="6/8")


def test_primer_from_the_training_folder(folk_like: tuple[Path, Path]) -> None:
    ckpt, song = folk_like
    model = generate.load(ckpt)
    ids, keep, shift = model.start(primer=str(song))
    piece = model.tokenizer.decode(ids)
    assert keep and piece.key is not None and piece.meters  # the song's 4/4 bars and its key came along
    sample = model.sample(primer=str(song), length=16, seed=0)[0]
    assert sample.piece.key == piece.key.transposed(shift)  # moved back to the primer's own key


def test_cli_meter_and_key(folk_like: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = folk_like
    done = run_cli("sample", f"checkpoint={ckpt}", "meter=6/8", "key=Dm", "length=32", f"out_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "sample_0.mid").is_file()
    bad = run_cli("sample", f"checkpoint={ckpt}", "key=H", f"out_dir={tmp_path}")
    assert bad.returncode == 2 and "key='H' is not a key" in bad.stderr and "Traceback" not in bad.stderr


def test_model_without_controls_refuses_in_one_line(tmp_path: Path) -> None:
    done = run_cli("sample", "checkpoint=bach", "meter=6/8", "key=Dm", f"out_dir={tmp_path}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "meter= and key= needs a model trained with control tokens" in done.stderr
    with pytest.raises(UserError, match="this is a text model"):
        generate.load("shakespeare").sample(meter="6/8")


def test_the_callers_tempo_wins_else_the_models(folk_like: tuple[Path, Path]) -> None:
    """qpm= is obeyed; without it a sample is written at the tempo its TEMPO control chose (else 120)."""
    ckpt, primer = folk_like
    model = generate.load(ckpt)
    told = model.sample(primer=str(primer), length=16, seed=3, qpm=100)[0]
    assert told.qpm == 100 and told.piece.qpm == 100 and told.to_midi().get_tempo_changes()[1][0] == pytest.approx(100)
    own = model.sample(primer=str(primer), length=16, seed=3)[0]  # the primer's tempo (the songs' 120) travels
    assert own.piece.qpm and own.qpm == own.piece.qpm
    assert own.to_midi().get_tempo_changes()[1][0] == pytest.approx(own.piece.qpm, abs=0.01)


def test_the_shipped_folk_model_plays_the_metre_and_key_asked() -> None:
    model = generate.load("folk")
    for meter, key in (("6/8", "D"), ("9/8", "G"), ("3/4", "Am")):
        piece = model.sample(meter=meter, key=key, length=96, seed=5)[0].piece
        assert str(piece.meters[0]) == meter and str(piece.key) == key and len(piece.notes) > 8
        scale = scale_of(piece.key)
        assert sum(n.pitch % 12 in scale for n in piece.notes) >= 0.8 * len(piece.notes)
