"""MIDI tokenization files/s: serial vs the worker pool, and reloading the token cache vs re-tokenizing."""

from __future__ import annotations

import itertools
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import command_line, compose, interleave, measure_peak, median, parse_args, quiet_stdout, write_results

from generate.data import load_corpus


def synthesize(folder: Path, count: int, seed: int = 0) -> int:
    """`count` MIDI files of random melodies with a chordal accompaniment (pretty_midi); returns total bytes."""
    import pretty_midi

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pm = pretty_midi.PrettyMIDI(initial_tempo=rng.choice([90, 100, 120, 140]))
        melody = pretty_midi.Instrument(program=0, name="melody")
        chords = pretty_midi.Instrument(program=0, name="chords")
        time_s, pitch = 0.0, rng.randint(60, 72)
        for _ in range(rng.randint(150, 300)):  # a 1-3 minute tune: sizes like a typical folk/pop MIDI file
            length = rng.choice([0.125, 0.25, 0.25, 0.5, 0.5, 1.0])
            pitch = min(84, max(48, pitch + rng.choice([-4, -2, -1, 0, 1, 2, 3, 5])))
            melody.notes.append(pretty_midi.Note(velocity=90, pitch=pitch, start=time_s, end=time_s + length * 0.9))
            time_s += length
            if rng.random() < 0.05:
                time_s += 2.5  # the occasional long rest (melodies are split there)
        for bar_start in [x * 2.0 for x in range(int(time_s / 2.0))]:
            root = rng.choice([48, 53, 55, 57])
            for offset in (0, 4, 7):
                chords.notes.append(pretty_midi.Note(velocity=60, pitch=root + offset, start=bar_start, end=bar_start + 1.9))
        pm.instruments += [melody, chords]
        sub = folder / f"set{index % 4}"  # a few sub-folders: the loader reads recursively
        sub.mkdir(exist_ok=True)
        pm.write(str(sub / f"tune{index:04d}.mid"))
    return sum(p.stat().st_size for p in folder.rglob("*.mid"))


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--files", type=int, default=120))
    files = 24 if args.quick else args.files
    work = Path(tempfile.mkdtemp(prefix="bench-midi-"))
    try:
        total_bytes = synthesize(work / "midi", files)
        counter = itertools.count()

        def config(workers: int, cache: Path) -> Any:
            return compose("config", ["dataset=midi", f"dataset.path={work / 'midi'}", f"dataset.num_workers={workers}", f"dataset.cache_dir={cache}"])

        def tokenize(workers: int) -> Callable[[], float]:
            """A variant: files/s of tokenizing the folder from scratch (a fresh, empty cache folder)."""

            def run() -> float:
                cache = work / f"cache{next(counter)}"
                cfg = config(workers, cache).dataset  # composed outside the timed part
                start = time.perf_counter()
                with quiet_stdout():
                    load_corpus(cfg)
                elapsed = time.perf_counter() - start
                shutil.rmtree(cache, ignore_errors=True)
                return files / elapsed

            return run

        warm_cache = work / "cache-warm"
        with quiet_stdout():
            corpus = load_corpus(config(1, warm_cache).dataset)  # fills the cache the reload variant reads
        tokens = sum(len(doc) for docs in corpus.splits.values() for doc in docs)

        reload_cfg = config(1, warm_cache).dataset

        def reload() -> float:
            start = time.perf_counter()
            with quiet_stdout():
                load_corpus(reload_cfg)
            return files / (time.perf_counter() - start)

        from generate.sources.files import worker_count

        pool_workers = worker_count(0, files)
        variants = {
            "tokenize, serial (dataset.num_workers=1)": tokenize(1),
            f"tokenize, worker pool (num_workers=0: {pool_workers} processes)": tokenize(0),
            "reload the token cache": reload,
        }
        print(f"{files} synthesized MIDI files, {args.repeats} interleaved rounds ...", flush=True)
        results = interleave(variants, args.repeats, warmup=False)
        serial = median(results["tokenize, serial (dataset.num_workers=1)"])
        rows = []
        for name, fn in variants.items():
            rate = median(results[name])
            memory = measure_peak(fn)
            rows.append(
                {
                    "variant": name,
                    "files/s": rate,
                    "seconds for the folder": files / rate,
                    "vs serial": rate / serial,
                    "peak MiB (this process)": memory["peak_cpu_mib"],
                    "rounds files/s": [round(x, 2) for x in results[name]],
                }
            )
        children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        notes = [
            f"{files} files, {total_bytes / 1e6:.2f} MB, {tokens:,} tokens after melody extraction (conf/dataset/midi.yaml "
            "defaults: melody tokenizer, transposed to C); the files are synthesized with pretty_midi by this script.",
            f"Worker processes are not in the parent's peak; the largest worker's peak resident memory was {children_peak:.0f} MiB "
            "(resource.getrusage(RUSAGE_CHILDREN), whole run).",
            "Reload = the fingerprint (stat of every file) plus reading the cached int32 tensors.",
        ]
        write_results("midi_tokenize", command_line(), {"MIDI folder → token documents (generate.data.load_corpus)": (rows, list(rows[0])[:-1])}, {"notes": notes})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
