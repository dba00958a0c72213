"""Seconds of render time per minute of music: tinysoundfont + SoundFont vs the sine fallback vs pretty_midi's synthesize."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pretty_midi
from common import command_line, interleave, median, parse_args, write_results

from generate.music import audio


def make_piece(seconds: float) -> pretty_midi.PrettyMIDI:
    """Eighth-note flute melody, a bass note a second, a kick every beat (120 qpm): 3 tracks, about 7 notes/s."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    lead, bass = pretty_midi.Instrument(program=73), pretty_midi.Instrument(program=32)
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    t = 0.0
    while t < seconds:
        lead.notes.append(pretty_midi.Note(90, 60 + int(t * 4) % 12, t, t + 0.25))
        if t % 1.0 == 0:
            bass.notes.append(pretty_midi.Note(100, 36 + int(t) % 7, t, t + 1.0))
        if t % 0.5 == 0:
            drums.notes.append(pretty_midi.Note(100, 36, t, t + 0.1))
        t += 0.25
    pm.instruments += [lead, bass, drums]
    return pm


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--seconds", type=float, default=120.0))
    seconds = 20.0 if args.quick else args.seconds
    pm = make_piece(seconds)
    font = audio.find_soundfont()
    if font is None or not audio.has_synthesizer():
        raise SystemExit(f"needs a SoundFont and tinysoundfont: {audio.describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        variants: dict[str, Callable[[], float]] = {}
        for rate in (44100, 22050):
            for synth in ("tinysoundfont", "sine"):
                def run(synth: str = synth, rate: int = rate) -> float:
                    start = time.perf_counter()
                    audio.render_wav(pm, Path(tmp) / "x.wav", synthesizer=synth, sample_rate=rate)
                    return time.perf_counter() - start
                variants[f"{synth} {rate} Hz"] = run

        def old() -> float:  # what generate/music/render.py used before: the whole signal in memory
            start = time.perf_counter()
            pm.synthesize(fs=22050)
            return time.perf_counter() - start
        variants["pretty_midi.synthesize 22050 Hz (before)"] = old
        times = interleave(variants, args.repeats)
    minutes = (seconds + 0.4) / 60
    rows = [{"render": name, "seconds": round(median(t), 3), "s per minute of music": round(median(t) / minutes, 3)}
            for name, t in times.items()]
    write_results("audio_render", command_line(), {f"{seconds:.0f} s piece, 3 tracks": (rows, list(rows[0]))},
                  extra={"soundfont": font, "notes": [f"SoundFont: {font}", "median over interleaved rounds"]})


if __name__ == "__main__":
    main()
