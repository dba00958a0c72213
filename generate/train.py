"""python -m generate.train: train a GRU language model on text or music (the work is in generate/cli.py)."""

from generate.cli import main

if __name__ == "__main__":
    main("train")
