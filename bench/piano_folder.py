"""A folder of piano(-style) MIDI files from music21's bundled corpus, for measuring the events tokenizer.

    python bench/piano_folder.py OUT_DIR [--minutes M]

Keyboard works (Joplin, Mozart K545, Chopin, C. Schumann, Schoenberg op. 19, C. P. E. Bach, song
accompaniments) and the string quartets (Beethoven, Mozart, Haydn, R. Schumann), whose four parts span
the keyboard from cello C2 up, each written to OUT_DIR/<composer>_<work>.mid with every part on program 0
(piano). No network: the corpus ships with music21. Files already there are kept (a rerun goes on).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/piano_folder.py` from anywhere imports this checkout's package
    sys.path.insert(0, str(ROOT))

MAX_NOTE_SECONDS = 60.0  # longer, and the score has a tie music21 merges to the end of a movement: left out
COMPOSERS = (
    "beach", "beethoven", "chopin", "cpebach", "haydn", "joplin", "johnson_j_r", "liliuokalani", "mozart",
    "schoenberg", "schubert", "schumann_clara", "schumann_robert",
)


def corpus_works() -> list[tuple[str, Path]]:
    """(file name, corpus path) of every work by COMPOSERS; .krn twins of an .mxl are left out."""
    from music21 import corpus

    works = {}
    for path in map(Path, corpus.getCorePaths()):
        rel = path.as_posix().split("/corpus/", 1)[1]
        if rel.split("/")[0] not in COMPOSERS:
            continue
        name = rel.rsplit(".", 1)[0].replace("/", "_")
        if name not in works or path.suffix != ".krn":  # prefer MusicXML when both exist
            works[name] = path
    return sorted(works.items(), key=lambda item: item[1].stat().st_size)  # small first: a time limit keeps many


def write_folder(out: Path, minutes: float = 0.0) -> int:
    """Parse each work with music21 and write its notes (ties merged, every part on the piano) with pretty_midi,
    at the score's first metronome mark (else 120 quarters a minute): music21's own MIDI writer expands repeats
    and takes minutes a quartet movement."""
    import pretty_midi
    from music21 import converter, tempo

    from generate.music.read import score_tracks

    out.mkdir(parents=True, exist_ok=True)
    written, began = 0, time.monotonic()
    for name, path in corpus_works():
        if minutes and time.monotonic() - began > minutes * 60:
            print(f"stopped after {minutes:g} minutes (--minutes); run again to go on")
            break
        target = out / f"{name}.mid"
        if not target.exists():
            score = converter.parse(str(path))
            mark = score.flatten().getElementsByClass(tempo.MetronomeMark).first()
            qpm = float(mark.getQuarterBPM()) if mark is not None and mark.getQuarterBPM() else 120.0
            tracks = score_tracks(score, "quarter")
            longest = max((n.end - n.start for t in tracks for n in t.notes), default=0.0) * 60 / qpm
            if longest > MAX_NOTE_SECONDS:
                print(f"skipped {name}: a note of {longest:.0f} s (a tie music21 never closes)", flush=True)
                continue
            pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
            for track in tracks:
                piano = pretty_midi.Instrument(0, name=track.name or "piano")
                piano.notes = [pretty_midi.Note(int(n.velocity), n.pitch, n.start * 60 / qpm, n.end * 60 / qpm)
                               for n in track.notes]
                pm.instruments.append(piano)
            pm.write(str(target))
            print(target.name, flush=True)
        written += 1
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--minutes", type=float, default=0.0, help="stop starting new works after this long (0: all)")
    args = parser.parse_args()
    print(f"{write_folder(args.out, args.minutes)} MIDI files in {args.out}")
