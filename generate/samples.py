"""What sampling returns: a TextSample (a str that writes itself) or a MusicSample (a piece that writes MIDI, MusicXML, WAV)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from generate.music.notes import Piece


class TextSample(str):
    """A generated text: a str that can also write itself to a file."""

    def write(self, path: str | Path) -> Path:
        Path(path).write_text(self, encoding="utf-8")
        return Path(path)


class MusicSample:
    """A generated piece with the rendering hints of its tokenizer: write it as MIDI, MusicXML, WAV or PNG."""

    def __init__(self, piece: Piece, hints: dict[str, Any], qpm: float = 120.0):
        # `qpm` is the fallback tempo: a piece that carries its own (piece.qpm) is written at that.
        self.piece, self.hints, self.qpm = piece, hints, piece.qpm if piece.qpm and piece.qpm > 0 else qpm

    def write(self, path_stem: str | Path, *, instrument: str | int | None = None, soundfont: str | None = None) -> list[Path]:
        """path_stem.mid, .musicxml, .wav and a piano-roll .png; returns the paths written.

        `instrument`: a General MIDI program or name (flute, violin, ...; None: piano) for the .mid and .wav;
        `soundfont`: the .sf2/.sf3 the .wav is played with (None: a system one, else sine waves).
        """
        from generate.music.render import write_music

        Path(path_stem).parent.mkdir(parents=True, exist_ok=True)
        return write_music(self.piece, path_stem, self.qpm, **self.hints, instrument=instrument, soundfont=soundfont)

    def to_midi(self, instrument: str | int | None = None) -> Any:
        """A pretty_midi.PrettyMIDI of the piece (call .write(path) on it for a .mid file)."""
        from generate.music.audio import program_for
        from generate.music.render import sensible_register, to_pretty_midi

        piece = sensible_register(self.piece) if self.hints.get("melody") else self.piece
        return to_pretty_midi(piece, self.qpm, program_for(instrument))

    def to_musicxml(self, path: str | Path) -> Path:
        from generate.music.render import write_musicxml

        return write_musicxml(self.piece, Path(path), self.qpm, self.hints.get("grand_staff", True) and not self.hints.get("melody"))

    def to_wav(self, path: str | Path, *, instrument: str | int | None = None, soundfont: str | None = None) -> Path:
        from generate.music.render import write_wav

        return write_wav(self.to_midi(instrument), Path(path), self.piece.in_seconds(self.qpm).duration, soundfont)

    def __repr__(self) -> str:
        return f"MusicSample({len(self.piece.notes)} notes, {self.piece.in_seconds(self.qpm).duration:.1f} s)"
