"""Typed configuration: the dataclasses Hydra validates every YAML file and override against."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

# conf/ sits next to the package; built from __file__ so `main` works wherever it is imported from.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class DatasetConfig:
    name: str = "shakespeare"  # also the default run_name
    # Where the raw data comes from: text | midi | bach | scores | benchmark.
    source: str = "text"
    path: str | None = None  # file or folder, relative to the working directory
    tokenizer: str = "char"  # char | melody | polyphonic | events
    # Split for single-stream text: train | test | val by fraction of the stream, in that order,
    # so val is the last `val_fraction` (nanoGPT's validation split when val_fraction=0.1).
    val_fraction: float = 0.1
    test_fraction: float = 0.05
    # Where token caches go; keyed by a fingerprint of source + tokenizer settings.
    cache_dir: str = "${project_root:}/datasets/.cache"
    # Music settings (used by the melody / polyphonic / events tokenizers; see generate/music.py).
    # For source=benchmark, `path` is the .json.gz piano roll under datasets/music/.
    steps_per_quarter: int = 4  # grid of the melody and polyphonic tokenizers
    min_pitch: int = 21  # pitch range of the vocabulary (MIDI numbers)
    max_pitch: int = 108
    # Melody extraction: which note wins when an instrument plays a chord.
    monophony: str = "highest"  # highest | lowest
    split_silence_quarters: float = 4.0  # split a melody (or roll) at a rest at least this long
    min_melody_steps: int = 16  # drop fragments shorter than this many grid steps
    # Transposition: none | c (to C major / A minor) | augment (training copies in every key within
    # +-transpose_range semitones; val and test stay as written)
    transpose: str = "none"
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


@dataclass
class TrainRunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_name: str = "${dataset.name}"
    checkpoints_dir: str = "checkpoints"


@dataclass
class SampleConfig:
    checkpoint: str | None = None  # None: your default run's best.pt, else the shipped model
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    length: int = 500
    num_samples: int = 1
    seed: int = 1337
    prompt: str = ""
    primer: str | None = None  # a MIDI file to continue (music models)
    beam_size: int = 1
    qpm: float = 120.0  # tempo of written music
    out_dir: str = "samples"
    device: Device = Device.cpu
    quiet: bool = False  # do not print text samples to stdout


@dataclass
class EvaluateConfig:
    checkpoint: str | None = None
    split: str = "test"  # train | val | test
    batch_size: int = 64
    seq_len: int = 256
    device: Device = Device.auto
    # Override where the dataset is read from (e.g. the checkpoint came from another machine).
    dataset_path: str | None = None


@dataclass
class ExportConfig:
    checkpoint: str | None = None  # a training checkpoint (last.pt / best.pt)
    out: str | None = None  # where to write the stripped copy
    dtype: str = "float16"  # float32 | float16 | bfloat16: storage type of the weights


@dataclass
class QualityConfig:
    """python -m generate.quality: how close a music model's samples are to held-out music."""

    checkpoint: str | None = None
    split: str = "test"  # held-out pieces to compare with
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    length: int = 256  # tokens per generated piece
    num_samples: int = 64
    seed: int = 1337
    device: Device = Device.cpu
    out: str | None = None  # also write the figures as JSON here
    # check_settings() reads these sample settings too.
    prompt: str = ""
    primer: str | None = None
    beam_size: int = 1


def register_configs() -> None:
    """Make the dataclasses the schema of the YAML files under conf/."""
    from omegaconf import OmegaConf

    # ${project_root:} lets the bundled datasets be found from any working directory.
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainRunConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    cs.store(name="sample_schema", node=SampleConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="quality_schema", node=QualityConfig)


def to_plain(cfg: Any) -> dict:
    """A resolved, plain-dict copy of a config (safe to put in a checkpoint)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(plain, dict)
    return portable_paths(plain)


def portable_paths(value: Any) -> Any:
    """Paths inside this project written as ${project_root:}/..., so a checkpoint still finds the
    bundled data when the project is cloned somewhere else."""
    if isinstance(value, dict):
        return {k: portable_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v) for v in value]
    root = str(PROJECT_ROOT)
    if isinstance(value, str) and (value == root or value.startswith(root + "/")):
        return "${project_root:}" + value[len(root):]
    return value
