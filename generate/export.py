"""python -m generate.export: a checkpoint stripped to float16 weights for sharing (the work is in generate/cli.py)."""

from generate.cli import main

if __name__ == "__main__":
    main("export")
