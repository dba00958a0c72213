"""Time per output stage of a long melody sample (decode, .mid, .musicxml, .wav, .png) by length, and .wav peak memory.

The token sequences are synthetic but shaped like a melody model's output (a seeded random walk of
notes of 1-8 sixteenths with rests, the melody tokenizer's grid): rendering cost depends on the
notes, not on which model produced them. Each stage is timed in CPU time (1 thread), the lengths
interleaved round after round; the exponent is the least-squares slope of log(median time) over
log(tokens): 1 is linear, 2 quadratic. `--meters` gives the pieces meters (6/8 with a pickup, a change
every 16 bars) and a key, as metre-aware tokenizers decode them (results: render_speed_meters-*).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import PeakMemory, command_line, interleave, parse_args, spread, write_results

from generate.music import render
from generate.music.notes import Key, Meter, Piece
from generate.tokenizers import MelodyTokenizer

QPM = 120.0
STAGES = ("decode", "mid", "musicxml", "wav", "png")


def melody_tokens(length: int, seed: int = 0) -> list[int]:
    """`length` melody tokens: a random walk in G3..G5, notes of 1, 2, 4 or 8 sixteenths, a rest now and then."""
    tok, rng = MelodyTokenizer(), np.random.default_rng(seed)
    out, pitch = [tok.SEP], 67
    while len(out) < length:
        if rng.random() < 0.1:
            out += [tok.NOTE_OFF] + [tok.HOLD] * int(rng.choice([0, 1, 3]))
            continue
        pitch = int(np.clip(pitch + rng.integers(-4, 5), 55, 79))
        out += [tok.note_on(pitch)] + [tok.HOLD] * int(rng.choice([0, 1, 1, 3, 3, 3, 7]))
    return out[:length]


def with_meters(piece: Piece) -> Piece:
    """The piece in 6/8 with a one-eighth pickup, the meter changing (3/4, 6/8, ...) every 16 bars, in D minor."""
    changes = [Meter((3, 6)[k % 2], (4, 8)[k % 2], 0.5 + 48.0 * k) for k in range(1, int(piece.duration // 48))]
    return replace(piece, meters=[Meter(6, 8, 0.5), *changes], key=Key(2, "minor"))


def stages(tokens: list[int], folder: Path, meters: bool = False) -> dict[str, Callable[[], object]]:
    """Each output stage of `write_music` as its own call, in the order write_music runs them."""
    tok = MelodyTokenizer()
    piece = render.sensible_register(tok.decode(tokens))
    piece = with_meters(piece) if meters else piece
    pm = render.to_pretty_midi(piece, QPM)
    seconds = piece.in_seconds(QPM).duration
    return {
        "decode": lambda: tok.decode(tokens),
        "mid": lambda: render.write_midi(render.to_pretty_midi(piece, QPM), folder / "x.mid"),
        "musicxml": lambda: render.write_musicxml(piece, folder / "x.musicxml", QPM, grand_staff=False),
        "wav": lambda: render.write_wav(pm, folder / "x.wav", seconds, soundfont=None),
        "png": lambda: render.write_piano_roll(pm, folder / "x.png", "bench", render.bar_and_beat_seconds(piece, QPM)),
    }


def exponent(lengths: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(length)."""
    return float(np.polyfit(np.log(lengths), np.log(seconds), 1)[0])


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--lengths", default="10000,40000,160000")
        parser.add_argument("--meters", action="store_true", help="give the pieces meters, a pickup and a key")

    args = parse_args(__doc__, options)
    lengths = [10000, 40000] if args.quick else sorted(int(x) for x in args.lengths.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        calls = {n: stages(melody_tokens(n), Path(tmp) / str(n), args.meters) for n in lengths}
        for n in lengths:
            (Path(tmp) / str(n)).mkdir()

        def variant(n: int) -> Callable[[], dict[str, float]]:
            def run() -> dict[str, float]:
                times = {}
                for stage, call in calls[n].items():
                    start = time.process_time()
                    call()
                    times[stage] = time.process_time() - start
                (Path(tmp) / str(n) / "x.wav").unlink()  # 1.8 GB at 160k tokens: one at a time on disk
                return times
            return run

        (Path(tmp) / "warm").mkdir()
        for call in stages(melody_tokens(500), Path(tmp) / "warm").values():  # imports and first-call caches
            call()
        rounds = interleave({str(n): variant(n) for n in lengths}, args.repeats, warmup=False)
        memory = []
        for n in lengths:  # .wav alone, once per length, resident high-water mark reset before each
            with PeakMemory() as peak:
                calls[n]["wav"]()
            memory.append({"tokens": n, "audio minutes": round(MelodyTokenizer().decode(melody_tokens(n)).duration / 2 / 60, 1),
                           "wav peak MiB": round(peak.cpu_mib or 0.0, 1)})
    rows, fits = [], []
    for n in lengths:
        row: dict[str, object] = {"tokens": n}
        for stage in STAGES:
            row[f"{stage} s"] = spread([r[stage] for r in rounds[str(n)]])
        rows.append(row)
    for stage in STAGES:
        medians = [float(np.median([r[stage] for r in rounds[str(n)]])) for n in lengths]
        slope = exponent(lengths, medians)
        fits.append({"stage": stage, "exponent": round(slope, 3), "linear (<= 1.15)": "yes" if slope <= 1.15 else "NO",
                     "s per 1k tokens at the longest": round(medians[-1] / lengths[-1] * 1000, 4)})
    total = [sum(float(np.median([r[s] for r in rounds[str(n)]])) for s in STAGES) for n in lengths]
    fits.append({"stage": "all", "exponent": round(exponent(lengths, total), 3),
                 "linear (<= 1.15)": "yes" if exponent(lengths, total) <= 1.15 else "NO",
                 "s per 1k tokens at the longest": round(total[-1] / lengths[-1] * 1000, 4)})
    flat = max(m["wav peak MiB"] for m in memory) - min(m["wav peak MiB"] for m in memory)
    write_results(
        "render_speed_meters" if args.meters else "render_speed", command_line(),
        {"CPU seconds per stage (median [min-max] over interleaved rounds)": (rows, list(rows[0])),
         "fitted exponent (time ∝ tokens^k)": (fits, list(fits[0])),
         ".wav peak memory (extra resident MiB)": (memory, list(memory[0]))},
        extra={"rounds": {n: rounds[n] for n in rounds}, "notes": [
            f"{args.repeats} interleaved rounds; CPU time (time.process_time), 1 thread",
            f".wav peak memory spread from {lengths[0]} to {lengths[-1]} tokens: {flat:.1f} MiB",
            f"the .wav synthesizer here: {render_synth()}",
        ]},
    )


def render_synth() -> str:
    from generate.music.audio import describe

    return describe()


if __name__ == "__main__":
    main()
