"""python -m generate.quality: how close a music model's samples are to held-out music (the work is in generate/cli.py)."""

from generate.cli import main

if __name__ == "__main__":
    main("quality")
