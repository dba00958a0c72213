"""python -m generate.sample: generate text or music from a checkpoint (the work is in generate/cli.py)."""

from generate.cli import main

if __name__ == "__main__":
    main("sample")
