"""The named choices a setting can take: each Enum lets Hydra refuse a misspelt value before any work."""

from __future__ import annotations

from enum import Enum


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Source(str, Enum):
    """Where a dataset's raw data comes from (generate/sources/)."""

    text = "text"
    midi = "midi"
    scores = "scores"
    bach = "bach"
    benchmark = "benchmark"


class TokenizerKind(str, Enum):
    char = "char"
    melody = "melody"
    polyphonic = "polyphonic"
    events = "events"


class PitchOrder(str, Enum):
    """The order of a polyphonic time step's pitches in the token stream."""

    ascending = "ascending"  # the bass first (RNN-NADE's order)
    descending = "descending"  # the top voice first: the tune, then the harmony under it
    outer = "outer"  # the top, then the bass, then the inner voices upward


class Monophony(str, Enum):
    """Which note of a chord a melody keeps."""

    highest = "highest"
    lowest = "lowest"


class Transpose(str, Enum):
    none = "none"  # as written
    c = "c"  # every piece to C major / A minor, the nearest way
    augment = "augment"  # training copies in every key within +-transpose_range semitones


class TestPosition(str, Enum):
    """Where a text's test split sits along the stream (validation is always the last val_fraction)."""

    start = "start"  # the first test_fraction: training runs right up to validation, as nanoGPT's does
    before_val = "before_val"  # just before validation (the layout of checkpoints made before 2026-12-02)


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"


class Dtype(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class ExportFormat(str, Enum):
    pt = "pt"  # a stripped checkpoint, for this toolkit
    onnx = "onnx"  # an ONNX step graph + tokenizer JSON, for any ONNX runtime
