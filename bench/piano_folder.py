"""A folder of piano(-style) MIDI files from music21's bundled corpus, for measuring the events tokenizer.

    python bench/piano_folder.py OUT_DIR

Keyboard works (Joplin, Mozart K545, Chopin, C. Schumann, Schoenberg op. 19, C. P. E. Bach, song
accompaniments) and the string quartets (Beethoven, Mozart, Haydn, R. Schumann), whose four parts span
the keyboard from cello C2 up, each written to OUT_DIR/<composer>_<work>.mid by music21 with every part
on program 0 (piano). No network: the corpus ships with music21.
"""

from __future__ import annotations

import sys
from pathlib import Path

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
    return sorted(works.items())


def write_folder(out: Path) -> int:
    from music21 import converter, instrument

    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, path in corpus_works():
        target = out / f"{name}.mid"
        if target.exists():
            written += 1
            continue
        score = converter.parse(str(path))
        for part in score.parts:  # every part on the piano, so the folder sounds like a piano folder
            for old in part.recurse().getElementsByClass(instrument.Instrument):
                part.remove(old, recurse=True)
            part.insert(0, instrument.Piano())
        try:
            score.write("midi", fp=str(target))
        except Exception as err:  # music21 refuses a few scores (badly formed repeats): say so, go on
            target.unlink(missing_ok=True)
            print(f"skipped {name}: {type(err).__name__}: {err}", flush=True)
            continue
        written += 1
        print(f"{target.name}", flush=True)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/piano_folder.py OUT_DIR")
    print(f"{write_folder(Path(sys.argv[1]))} MIDI files in {sys.argv[1]}")
