"""The Python API in a few lines each: text and music from the shipped models, then a tiny training run.

Run from anywhere: python examples/quickstart.py
"""

import tempfile
from pathlib import Path

import generate

# Text: a shipped model by name, a prompt, temperature; samples are plain strings.
shakespeare = generate.load("shakespeare")
print(shakespeare.sample("ROMEO:", temperature=0.8, length=200, seed=1)[0])
print("loss of a line:", round(shakespeare.score("ROMEO:\nWhat light is this?\n").nats_per_token, 3), "nats/char")

# Music: samples are pieces that write themselves as .mid, .musicxml, .wav and a piano-roll .png.
out = Path(tempfile.mkdtemp())
bach = generate.load("bach")
for i, piece in enumerate(bach.sample(num_samples=2, length=128, temperature=0.9, seed=2)):
    print(piece, "->", [p.name for p in piece.write(out / f"chorale_{i}")])

# Training: any dataset preset, any setting as a keyword; returns where the checkpoints are.
text = out / "tiny.txt"
text.write_text("To be, or not to be, that is the question.\n" * 200)
run = generate.train("text", path=str(text), recipe="smoke", hidden_size=64, max_steps=30,
                     checkpoints_dir=str(out / "runs"), cache_dir=str(out / "cache"))
print(run.best_path, generate.load(run.best_path).sample("To be", length=40, seed=3)[0])
