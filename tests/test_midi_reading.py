"""MIDI reading quirks that pretty_midi alone would reject."""

from __future__ import annotations

import struct
from pathlib import Path

import pretty_midi
import pytest

from generate.music.read import read_midi


def test_a_file_with_an_empty_track_is_still_read(tmp_path: Path) -> None:
    # Format 1, two tracks: the first has no events at all (chunk length 0), the second one note.
    note_track = bytes([0x00, 0x90, 60, 90, 0x83, 0x60, 0x80, 60, 0, 0x00, 0xFF, 0x2F, 0x00])
    data = (
        b"MThd" + struct.pack(">IHHH", 6, 1, 2, 480)
        + b"MTrk" + struct.pack(">I", 0)
        + b"MTrk" + struct.pack(">I", len(note_track)) + note_track
    )
    path = tmp_path / "empty_track.mid"
    path.write_bytes(data)
    with pytest.raises(ValueError):  # the quirk this guards against
        pretty_midi.PrettyMIDI(str(path))
    (instrument,) = read_midi(path).instruments
    assert [(n.pitch, n.start, round(n.end, 3)) for n in instrument.notes] == [(60, 0.0, 0.5)]
