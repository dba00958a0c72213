"""python -m generate.evaluate: the loss of a checkpoint on a split of its dataset (the work is in generate/cli.py)."""

from generate.cli import main

if __name__ == "__main__":
    main("evaluate")
