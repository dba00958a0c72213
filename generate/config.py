"""Typed configuration: the dataclasses (and Enums) every YAML file, override and API call is checked against."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from omegaconf import OmegaConf

from generate.errors import UserError
from generate.paths import CONFIG_DIR, PROJECT_ROOT, expand_project_root, portable_paths

# ${project_root:} lets the bundled datasets be found from any working directory. Registered here,
# with the schema, so any code that reads a config (CLI, library, notebook) can resolve it.
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)

__all__ = ["CONFIG_DIR", "PROJECT_ROOT"]


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


class Monophony(str, Enum):
    """Which note of a chord a melody keeps."""

    highest = "highest"
    lowest = "lowest"


class Transpose(str, Enum):
    none = "none"  # as written
    c = "c"  # every piece to C major / A minor, the nearest way
    augment = "augment"  # training copies in every key within +-transpose_range semitones


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"


class Dtype(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


@dataclass
class DatasetConfig:
    name: str = "shakespeare"  # also the default run_name
    source: Source = Source.text
    path: str | None = None  # file or folder, relative to the working directory
    tokenizer: TokenizerKind = TokenizerKind.char
    # Split for single-stream text: train | test | val by fraction of the stream, in that order,
    # so val is the last `val_fraction` (nanoGPT's validation split when val_fraction=0.1).
    val_fraction: float = 0.1
    test_fraction: float = 0.05
    # Where token caches go; keyed by a fingerprint of source + tokenizer settings.
    cache_dir: str = "${project_root:}/datasets/.cache"
    # Music settings (used by the melody / polyphonic / events tokenizers; see generate/music/).
    # For source=benchmark, `path` is the .json.gz piano roll under datasets/music/.
    steps_per_quarter: int = 4  # grid of the melody and polyphonic tokenizers
    min_pitch: int = 21  # pitch range of the vocabulary (MIDI numbers)
    max_pitch: int = 108
    monophony: Monophony = Monophony.highest  # melody extraction: which note of a chord wins
    split_silence_quarters: float = 4.0  # split a melody (or roll) at a rest at least this long
    min_melody_steps: int = 16  # drop fragments shorter than this many grid steps
    transpose: Transpose = Transpose.none
    transpose_range: int = 5
    num_workers: int = 0  # processes tokenizing MIDI/score folders; 0 = one per CPU core
    max_files: int = 0  # 0 = no limit; else the first N files (chorales; sequences per benchmark split)


@dataclass
class ModelConfig:
    # Defaults = conf/model/small.yaml, the default model.
    embedding_size: int = 128
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.1  # between GRU layers and on the embedding / GRU output
    # true: torch.nn.GRU (cuDNN on CUDA), reset applied after the recurrent product.
    # false: the seed equations, reset applied to h before the product.
    reset_after: bool = True
    tie_weights: bool = False  # needs embedding_size == hidden_size


@dataclass
class TrainConfig:
    # Defaults = the default recipe (conf/train/default.yaml): ~10 minutes on 2 CPU cores.
    max_steps: int = 1000
    batch_size: int = 64
    seq_len: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 1337
    device: Device = Device.auto
    eval_every: int = 200
    eval_batch_size: int = 64
    resume: bool = False
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on CPU)
    log_every: int = 25  # steps between progress-bar / metrics updates
    max_bad_steps: int = 10  # consecutive non-finite losses before training stops
    # Validation tokens scored at each evaluation: a split up to this size is scored whole, a bigger one
    # through a fixed sample of about this many tokens (the same every time); 0 = always the whole split.
    eval_tokens: int = 131_072
    threads: int = 1  # torch CPU threads; 1 measured fastest on a shared 2-core machine (docs/performance.md); 0 = torch's default


@dataclass
class TrainRunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_name: str = "${dataset.name}"
    checkpoints_dir: str = "checkpoints"


@dataclass
class SamplingConfig:
    """How tokens are drawn: shared by sample and quality."""

    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    length: int = 500  # new tokens per sample
    num_samples: int = 1
    seed: int = 1337


@dataclass
class SampleConfig(SamplingConfig):
    checkpoint: str | None = None  # None: your default run's best.pt, else the shipped model
    prompt: str = ""
    primer: str | None = None  # a MIDI file to continue (music models)
    beam_size: int = 1
    qpm: float = 120.0  # tempo of written music
    out_dir: str = "samples"
    device: Device = Device.cpu
    quiet: bool = False  # do not print text samples to stdout
    threads: int = 1  # torch CPU threads (0 = torch's default); see train.threads


@dataclass
class EvaluateConfig:
    checkpoint: str | None = None
    split: Split = Split.test
    batch_size: int = 64
    seq_len: int = 256
    device: Device = Device.auto
    # Override where the dataset is read from (e.g. the checkpoint came from another machine).
    dataset_path: str | None = None
    threads: int = 1  # torch CPU threads (0 = torch's default); see train.threads


@dataclass
class ExportConfig:
    checkpoint: str | None = None  # a training checkpoint (last.pt / best.pt)
    out: str | None = None  # where to write the stripped copy
    dtype: Dtype = Dtype.float16  # storage type of the weights


@dataclass
class QualityConfig(SamplingConfig):
    """python -m generate.quality: how close a music model's samples are to held-out music."""

    checkpoint: str | None = None
    split: Split = Split.test  # held-out pieces to compare with
    length: int = 256  # tokens per generated piece
    num_samples: int = 64
    device: Device = Device.cpu
    out: str | None = None  # also write the figures as JSON here


SCHEMAS = {
    "config": TrainRunConfig, "sample": SampleConfig, "evaluate": EvaluateConfig,
    "export": ExportConfig, "quality": QualityConfig,
}


def register_configs() -> None:
    """Make the dataclasses the schema of the YAML files under conf/ (Hydra's ConfigStore)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainRunConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    for name in ("sample", "evaluate", "export", "quality"):
        cs.store(name=f"{name}_schema", node=SCHEMAS[name])


T = TypeVar("T")


def to_object(cfg: Any, schema: type[T]) -> T:
    """A composed DictConfig (or a dict) → an instance of the schema dataclass, interpolations resolved."""
    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, schema)
    return obj


def to_plain(obj: Any) -> dict:
    """A config dataclass → a plain dict (Enums as strings, project paths portable): checkpoint data."""
    plain = OmegaConf.to_container(OmegaConf.structured(obj), resolve=True, enum_to_str=True)
    assert isinstance(plain, dict)
    return portable_paths(plain)


def with_settings(obj: T, section: str, settings: dict[str, Any]) -> T:
    """A copy of a config dataclass with `settings` applied and type-checked; a bad key is a UserError."""
    names = {f.name for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
    unknown = sorted(set(settings) - names)
    if unknown:
        raise UserError(f"{section} has no setting {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(obj), settings)
    except Exception as err:  # OmegaConf's ValidationError: a value of the wrong type
        raise UserError(f"bad {section} setting: {str(err).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def dataset_from_checkpoint(stored: dict[str, Any]) -> DatasetConfig:
    """The DatasetConfig a checkpoint was trained on. Only ${project_root:} is expanded: a stored
    value is never resolved through environment variables or any other interpolation."""
    names = {f.name for f in dataclasses.fields(DatasetConfig)}
    values = {k: v for k, v in stored.items() if k in names}
    for key in ("path", "cache_dir"):
        if isinstance(values.get(key), str):
            values[key] = expand_project_root(values[key])
    for key, value in values.items():
        if isinstance(value, str) and "${" in value:
            raise UserError(f"the checkpoint's dataset.{key} holds an interpolation ({value[:60]}); it is refused")
    return with_settings(DatasetConfig(), "dataset", values)
