"""dataset.time_stretch: training copies of each performance with every time scaled; validation and test untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from generate.api import preset_values
from generate.config import DatasetConfig, with_settings
from generate.data import load_corpus
from generate.errors import UserError
from generate.music.extract import Extraction, stretched
from generate.music.notes import SECOND, Note, Piece
from generate.sources.music import midi_fingerprint
from generate.tokenizers.events import TICKS_PER_SECOND
from tests.conftest import compose_config, run_cli
from tests.music_helpers import write_songs


def settings(tmp_path: Path, folder: Path, **extra) -> DatasetConfig:
    values = {**preset_values("dataset", "midi"), "path": str(folder), "tokenizer": "events", "num_workers": 1,
              "transpose": "none", "cache_dir": str(tmp_path / "cache"), **extra}
    return with_settings(DatasetConfig(), "dataset", values)


def onsets(tok, ids: np.ndarray) -> list[float]:
    """Every NOTE_ON's time in seconds, read straight off the tokens (TIME_SHIFT steps summed)."""
    now, found = 0, []
    for token in ids.tolist():
        if tok.first_shift <= token < tok.first_velocity:
            now += token - tok.first_shift + 1
        elif 1 <= token < tok.first_note_off:
            found.append(now / TICKS_PER_SECOND)
    return found


def test_copies_list_the_piece_first_and_every_transposition_at_every_factor() -> None:
    ex = Extraction(transpose="augment", transpose_range=1, time_stretch=(1.1, 0.9, 1.0, 1.1))
    assert [(k, f) for _, k, f in ex.copies()] == [(0, 1.0), (-1, 1.0), (1, 1.0), (0, 0.9), (-1, 0.9), (1, 0.9),
                                                   (0, 1.1), (-1, 1.1), (1, 1.1)]
    # Keys: the semitones as before (unstretched copies keep theirs), + 256 per factor; only the piece itself is 0.
    assert [key for key, _, _ in ex.copies()] == [0, -1, 1, 256, 255, 257, 512, 511, 513]
    assert Extraction().copies() == [(0, 0, 1.0)]


def test_a_stretched_piece_has_every_time_scaled_and_its_tempo_divided() -> None:
    piece = Piece([Note(60, 0.5, 1.0, 80), Note(64, 1.0, 2.5, 70)], 3.0, SECOND, qpm=120.0)
    slow = stretched(piece, 1.5)
    assert [(n.pitch, n.start, n.end, n.velocity) for n in slow.notes] == [(60, 0.75, 1.5, 80), (64, 1.5, 3.75, 70)]
    assert slow.duration == 4.5 and slow.qpm == 80.0 and slow.unit == SECOND
    assert stretched(piece, 1.0) is piece


def test_training_gets_stretched_copies_and_validation_and_test_do_not(tmp_path: Path) -> None:
    folder = tmp_path / "midi"
    write_songs(folder, 12)
    plain = load_corpus(settings(tmp_path, folder))
    factors = [0.9, 1.25]
    stretched_corpus = load_corpus(settings(tmp_path, folder, time_stretch=factors))
    train, base = stretched_corpus.splits["train"], plain.splits["train"]
    assert len(base) > 0 and len(train) == len(base) * (1 + len(factors))  # every piece, at every factor
    for split in ("val", "test"):  # untouched: the same documents, token for token
        a, b = plain.splits[split], stretched_corpus.splits[split]
        assert len(a) == len(b) and all(np.array_equal(a[i], b[i]) for i in range(len(a)))
    # Each training piece is there as played and at each factor, its onsets scaled (to the 10 ms grid).
    tok = plain.tokenizer
    originals = [onsets(tok, base[i]) for i in range(len(base))]
    copies = [onsets(tok, train[i]) for i in range(len(train))]
    for times in originals:
        assert times in copies
        for factor in factors:
            match = [c for c in copies if len(c) == len(times) and c != times
                     and np.allclose(c, np.array(times) * factor, atol=0.011)]
            assert match, f"no copy at {factor}x of a piece with {len(times)} notes"
    assert midi_fingerprint(settings(tmp_path, folder)) != midi_fingerprint(settings(tmp_path, folder, time_stretch=factors))


@pytest.mark.parametrize("tokenizer", ["melody", "polyphonic"])
def test_grid_tokenizers_refuse_time_stretch(tmp_path: Path, tokenizer: str) -> None:
    with pytest.raises(UserError, match=r"time_stretch.*needs dataset.tokenizer=events"):
        settings(tmp_path, tmp_path, tokenizer=tokenizer, time_stretch=[1.1])
    with pytest.raises(UserError, match=r"time_stretch factor 3.0 must be .* at most 2.0"):
        settings(tmp_path, tmp_path, time_stretch=[3.0])


def test_the_command_line_refuses_it_in_one_line(tmp_path: Path) -> None:
    result = run_cli("train", "dataset=jsb", "dataset.time_stretch=[1.05]", f"checkpoints_dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: dataset.time_stretch=[1.05] scales")
    cfg = compose_config("config", ["dataset=midi", "dataset.tokenizer=events", "dataset.time_stretch=[0.95,1.05]"])
    assert list(cfg.dataset.time_stretch) == [0.95, 1.05]
