"""GRU language models for characters and music: train, sample, evaluate."""

__version__ = "0.1.0"
