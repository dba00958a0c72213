"""Music sample-quality figures: histograms, distances, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from generate.cli import run_quality as quality
from generate.cli import run_train as train
from generate.errors import UserError
from generate.music.analysis import histograms, in_key_fraction, onset_autocorrelation, total_variation
from generate.music.notes import Key, Note, Piece
from tests.conftest import compose_config, train_overrides
from tests.music_helpers import write_songs


def test_histograms_count_pitch_classes_intervals_and_lengths() -> None:
    # C4 quarter, E4 eighth, C5 half: pitch classes C, E, C; intervals +4, +8; lengths 4, 2, 8 sixteenths.
    piece = Piece([Note(60, 0.0, 1.0), Note(64, 1.0, 1.5), Note(72, 1.5, 3.5)])
    h = histograms([piece])
    assert h["pitch_class"][0] == pytest.approx(2 / 3) and h["pitch_class"][4] == pytest.approx(1 / 3)
    assert h["interval"][12 + 4] == pytest.approx(0.5) and h["interval"][12 + 8] == pytest.approx(0.5)
    assert [round(float(h["note_length"][i]), 3) for i in (1, 3, 7)] == [0.333, 0.333, 0.333]
    for dist in h.values():
        assert float(dist.sum()) == pytest.approx(1.0)


def test_total_variation_bounds() -> None:
    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    assert total_variation(p, p) == 0.0 and total_variation(p, q) == 1.0


def test_quality_end_to_end_on_a_melody_model(tmp_path: Path) -> None:
    write_songs(tmp_path / "music", 8)
    train(compose_config("config", train_overrides(tmp_path, "dataset=midi", f"dataset.path={tmp_path / 'music'}", "dataset.num_workers=1")))
    out = tmp_path / "quality.json"
    ckpt = tmp_path / "checkpoints" / "midi" / "best.pt"
    result = quality(compose_config("quality", [f"checkpoint={ckpt}", "num_samples=4", "length=64", f"out={out}"]))
    assert json.loads(out.read_text()) == result
    for name in ("pitch_class", "interval", "note_length"):
        assert 0.0 <= result["generated_vs_held_out"][name] <= 1.0
        assert 0.0 <= result["val_vs_held_out"][name] <= 1.0
    keys = result["metre_key"]["keys"]  # the midi preset has control tokens: key-conditioned samples are scored
    assert keys and all(0.0 <= k["samples_in_key"] <= 1.0 and k["samples"] == 4 for k in keys.values())


def test_onset_autocorrelation_tells_metres_apart() -> None:
    """A jig rhythm (quarter-eighth twice a bar, every 12 sixteenths) against a 4/4 one (repeating every 16)."""
    jig = Piece([Note(60, b * 3 + x, b * 3 + x + d) for b in range(8) for x, d in ((0.0, 1.0), (1.0, 0.5), (1.5, 1.0),
                                                                                    (2.5, 0.5))], 24.0)
    reel = Piece([Note(60, b * 4 + x, b * 4 + x + d) for b in range(6) for x, d in ((0.0, 1.5), (1.5, 0.5), (2.0, 1.0),
                                                                                     (3.0, 0.5))], 24.0)
    assert onset_autocorrelation([jig], 12) > 0.9 and onset_autocorrelation([jig], 16) < 0.3
    assert onset_autocorrelation([reel], 16) > 0.9 and onset_autocorrelation([reel], 12) < 0.3
    assert onset_autocorrelation([], 12) != onset_autocorrelation([], 12)  # nothing to correlate: nan


def test_in_key_fraction_uses_the_scale_with_the_leading_note() -> None:
    piece = Piece([Note(p, i, i + 1) for i, p in enumerate((62, 64, 65, 67, 69, 70, 73, 63))], key=Key(2, "minor"))
    assert in_key_fraction([piece]) == pytest.approx(7 / 8)  # D minor + C#: only Eb is outside
    assert in_key_fraction([piece], Key(0)) == pytest.approx(5 / 8)  # against C major: Bb, C#, Eb are out


def test_quality_refuses_text_models(text_checkpoint: Path) -> None:
    with pytest.raises(UserError, match="text model"):
        quality(compose_config("quality", [f"checkpoint={text_checkpoint}"]))
