"""GRU language models for characters and music: train, sample, evaluate — from Python or the command line.

    import generate
    model = generate.load("shakespeare")                       # a shipped model, or a checkpoint path
    print(model.sample("ROMEO:", temperature=0.8, length=200)[0])
    generate.load("bach").sample(num_samples=2)[0].write("tune")  # tune.mid, .musicxml, .wav, .png
    run = generate.train("text", path="input.txt", hidden_size=128, max_steps=300)

Names are imported on first use, so `import generate` (and every command's --help) stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "train", "tokenize", "Model", "TextSample", "MusicSample", "RunSummary", "UserError"]


def __getattr__(name: str) -> Any:
    if name == "UserError":
        from generate.errors import UserError

        return UserError
    if name == "RunSummary":
        from generate.trainer import RunSummary

        return RunSummary
    if name in __all__:
        from generate import api

        return getattr(api, name)
    raise AttributeError(f"module 'generate' has no attribute {name!r}")
