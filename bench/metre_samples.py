"""One sample per metre from a model with control tokens, printed bar by bar from its decoded notes.

    python bench/metre_samples.py checkpoints/folk/best.pt > bench/results/folk_samples.txt
    python bench/metre_samples.py checkpoints/folk/best.pt --musicxml DIR   # + each sample as .musicxml,
                                                                          # described as music21 reads it back

Each line is a bar [start-end) in quarters; each note NAME:length in eighths. The first line before the
first bar line is the pickup.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import command_line  # noqa: F401  (puts this checkout first on sys.path)

import generate
from generate.music.analysis import conditioned_pieces
from generate.music.notes import PITCH_CLASSES, bar_lines

ASKED = (("6/8", "D"), ("4/4", "G"), ("9/8", "D"), ("2/4", "A"), ("2/2", "G"))
SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_samples": 1, "seed": 3, "length": 160}


def describe_musicxml(path: Path) -> str:
    """What a reader of the score sees: time and key signatures, the pickup measure, the first bars' notes."""
    import music21

    part = music21.converter.parse(str(path)).parts[0]
    measures = list(part.getElementsByClass("Measure"))
    signatures = [f"m{m.number}:{ts.ratioString}" for m in measures for ts in m.getElementsByClass("TimeSignature")]
    keys = [str(k.asKey()) for k in part.recurse().getElementsByClass("KeySignature")][:1]
    first = measures[0]
    pickup = (f"pickup measure {first.number} of {first.duration.quarterLength:g} quarters"
              if first.number == 0 else "no pickup")
    bars = []
    for m in measures[:5]:
        notes = [f"{n.nameWithOctave}:{n.duration.quarterLength * 2:g}" if n.isNote else f"rest:{n.duration.quarterLength * 2:g}"
                 for n in m.notesAndRests]
        bars.append(f"    m{m.number}: " + " ".join(notes))
    return (f"  musicxml {path.name}: time signatures {signatures}, key signature {keys}, {pickup}, "
            f"{len(measures)} measures; first bars (lengths in eighths):\n" + "\n".join(bars))


def main() -> None:
    model = generate.load(sys.argv[1])
    folder = Path(sys.argv[sys.argv.index("--musicxml") + 1]) if "--musicxml" in sys.argv else None
    print(f"# python bench/metre_samples.py {sys.argv[1]}  (sampling {SAMPLING})")
    for meter, key in ASKED:
        piece = conditioned_pieces(model, SAMPLING, meter=meter, key=key)[0]
        lines = bar_lines(piece.meters, piece.duration)
        print(f"== asked meter={meter} key={key}: decoded meters {[(str(m), m.start) for m in piece.meters]}, "
              f"key {piece.key}, {len(piece.notes)} notes, {len(lines)} bars")
        edges = [0.0, *lines, piece.duration]
        for a, b in zip(edges, edges[1:]):
            if b > a:
                notes = [n for n in piece.notes if a - 1e-9 <= n.start < b - 1e-9]
                text = " ".join(f"{PITCH_CLASSES[n.pitch % 12]}{n.pitch // 12 - 1}:{(n.end - n.start) * 2:g}" for n in notes)
                print(f"  [{a:5.2f}-{b:5.2f}) {text}")
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            path = generate.MusicSample(piece, model.tokenizer.render_hints()).to_musicxml(
                folder / f"{meter.replace('/', '-')}_{key}.musicxml")
            print(describe_musicxml(path))


if __name__ == "__main__":
    main()
