"""python -m generate.list: the shipped models and your runs, with dataset, size, steps and validation loss."""

from generate.cli import main

if __name__ == "__main__":
    main("list")
