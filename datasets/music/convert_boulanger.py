"""Convert the Boulanger-Lewandowski .mat piano rolls to gzipped JSON the toolkit reads without scipy.

Run once (needs scipy, from the [dev] extra):
    python datasets/music/convert_boulanger.py ../shared/data/music/boulanger_polyphonic_tcn_mat datasets/music

Each output holds {"source", "steps_per_quarter", "train", "valid", "test"}; a split is a list of
sequences, a sequence a list of time steps, a step the sorted MIDI pitches sounding in it
(column i of the .mat roll is pitch i + 21). gzip's timestamp is fixed, so the bytes are reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import scipy.io

# .mat name → (output name, steps per quarter note). Boulanger-Lewandowski sampled every eighth
# note, every quarter note for JSB chorales (see http://www-etud.iro.umontreal.ca/~boulanni/icml2012).
FILES = {
    "JSB_Chorales.mat": ("jsb_chorales.json.gz", 1),
    "Nottingham.mat": ("nottingham.json.gz", 2),
    "MuseData.mat": ("musedata.json.gz", 2),
    "Piano_midi.mat": ("piano_midi.json.gz", 2),
}
LOWEST_PITCH = 21  # column 0 of the 88-key roll is A0


def convert(mat_path: Path, steps_per_quarter: int) -> dict:
    mat = scipy.io.loadmat(mat_path)
    out: dict = {"source": mat_path.name, "steps_per_quarter": steps_per_quarter}
    for key, split in (("traindata", "train"), ("validdata", "valid"), ("testdata", "test")):
        out[split] = [
            [(np.flatnonzero(step) + LOWEST_PITCH).tolist() for step in np.asarray(seq)] for seq in mat[key][0]
        ]
    return out


def main(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for mat_name, (out_name, spq) in FILES.items():
        data = convert(src / mat_name, spq)
        raw = json.dumps(data, separators=(",", ":")).encode()
        target = dst / out_name
        with open(target, "wb") as handle, gzip.GzipFile(fileobj=handle, mode="wb", mtime=0, filename="") as gz:
            gz.write(raw)
        steps = "/".join(str(sum(len(s) for s in data[k])) for k in ("train", "valid", "test"))
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        print(f"{out_name}: {target.stat().st_size:,} bytes, time steps train/valid/test {steps}, sha256 {digest}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
