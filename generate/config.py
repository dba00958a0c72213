"""Typed configuration: the dataclasses (and Enums) every YAML file, override and API call is checked against."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from generate.choices import (
    Device,
    Dtype,
    ExportFormat,
    Monophony,
    PitchOrder,
    Source,
    Split,
    TestPosition,
    TokenizerKind,
    Transpose,
)
from generate.errors import UserError
from generate.paths import CONFIG_DIR, PROJECT_ROOT, expand_project_root, home, music21_corpus_dir, portable_paths
from generate.ranges import DATASET, EVALUATE, MODEL, SAMPLING, TRAIN, check, check_plain_name, stretch_problems

# ${project_root:} finds the bundled datasets from any working directory; ${generate_home:} is where
# your runs, samples and caches go ($GENERATE_HOME, else the current folder). Registered here, with
# the schema, so any code that reads a config (CLI, library, notebook) can resolve them.
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
OmegaConf.register_new_resolver("generate_home", lambda: str(home()), replace=True)


GENERIC_DATASETS = ("text", "midi", "scores")  # presets that read the user's own file or folder


def default_run_name(name: str, path: str | None) -> str:
    """For dataset=text|midi|scores the file's or folder's own name (two of them never share a run folder),
    else the dataset's name (shakespeare, bach, jsb, ...)."""
    if path and name in GENERIC_DATASETS:
        return Path(path).stem or name
    return name


OmegaConf.register_new_resolver("default_run_name", default_run_name, replace=True)


def music21_corpus(name: str = "") -> str:
    """${music21_corpus:oneills1850}: a folder of music21's bundled corpus (found without importing music21)."""
    return str(music21_corpus_dir() / name) if name else str(music21_corpus_dir())


OmegaConf.register_new_resolver("music21_corpus", music21_corpus, replace=True)
RUN_NAME = "${default_run_name:${dataset.name},${dataset.path}}"

__all__ = ["CONFIG_DIR", "PROJECT_ROOT"]


# The pitch range each music tokenizer gets when dataset.min_pitch / max_pitch are unset (null): melodies are
# moved by octaves into C3..C6 (Magenta's melody_rnn range); piano rolls and performances keep all 88 keys,
# so a piano folder loses no bass. A value given in a preset, an override or a checkpoint wins.
TOKENIZER_PITCH_RANGE = {"melody": (48, 84), "polyphonic": (21, 108), "events": (21, 108)}
FULL_PIANO = (21, 108)


def tokenizer_pitch(kind: Any, end: str) -> int:
    """The lowest (end='min') or highest pitch of tokenizer `kind`'s own range; YAML presets say
    ${tokenizer_pitch:${.tokenizer},min} so the range follows the tokenizer however it was chosen."""
    low, high = TOKENIZER_PITCH_RANGE.get(str(getattr(kind, "value", kind)), FULL_PIANO)
    return low if end == "min" else high


OmegaConf.register_new_resolver("tokenizer_pitch", tokenizer_pitch, replace=True)


@dataclass
class DatasetConfig:
    name: str = "shakespeare"  # also the default run_name
    source: Source = Source.text  # where the raw data comes from
    path: str | None = None  # file or folder, relative to the working directory
    tokenizer: TokenizerKind = TokenizerKind.char  # how the data becomes tokens
    # Split for single-stream text: test | train | val by fraction of the stream, in that order, so val is
    # the last `val_fraction` (nanoGPT's when 0.1) and training runs up to it (test_fraction=0: nanoGPT's exactly).
    val_fraction: float = 0.1  # share held out for validation (the last 10% of a text)
    test_fraction: float = 0.05  # share held out for the test split
    test_position: TestPosition = TestPosition.start  # text: the test split first (start) or just before val
    # Where token caches go; keyed by a fingerprint of source + tokenizer settings.
    cache_dir: str = "${generate_home:}/cache"  # where token caches go
    # Music settings (used by the melody / polyphonic / events tokenizers; see generate/music/).
    # For source=benchmark, `path` is the .json.gz piano roll under datasets/music/.
    steps_per_quarter: int = 4  # grid of the melody and polyphonic tokenizers
    min_pitch: int | None = None  # lowest MIDI pitch in the vocabulary; null: the tokenizer's own (TOKENIZER_PITCH_RANGE)
    max_pitch: int | None = None  # highest MIDI pitch in the vocabulary; null: the tokenizer's own
    monophony: Monophony = Monophony.highest  # melody extraction: which note of a chord wins
    split_silence_quarters: float = 4.0  # split a melody (or roll) at a rest at least this long
    min_melody_steps: int = 16  # drop fragments shorter than this many grid steps
    transpose: Transpose = Transpose.none  # none, c (to C major / A minor) or augment (training copies in every key in range)
    transpose_range: int = 5  # semitones up and down for transpose=augment
    num_workers: int = 0  # processes tokenizing MIDI/score folders; 0 = one per CPU core
    max_files: int = 0  # 0 = no limit; else the first N files (chorales; sequences per benchmark split)
    # Melody / polyphonic tokens: bar lines as a BAR token ("bar"), position-in-bar tokens ("position") or none;
    # `controls` starts every piece with METER, KEY and TEMPO tokens (sample meter=6/8 key=Dm then conditions).
    metre: str = "none"  # none | bar | position (the music presets set bar)
    controls: bool = False  # metre/key/tempo control tokens at the start of every piece (the music presets set true)
    pitch_order: PitchOrder = PitchOrder.ascending  # polyphonic: a step's pitches low to high, high to low, or outer voices first
    time_stretch: list[float] = field(default_factory=list)  # events only: training copies with every time x each factor

    def __post_init__(self) -> None:
        """Every value in its range (generate/ranges.py), checked for the CLI and the API alike."""
        if str(getattr(self.tokenizer, "value", self.tokenizer)) in TOKENIZER_PITCH_RANGE:
            # Unset (None) is the music tokenizer's own range; char reads no pitches and keeps None.
            self.min_pitch = tokenizer_pitch(self.tokenizer, "min") if self.min_pitch is None else self.min_pitch
            self.max_pitch = tokenizer_pitch(self.tokenizer, "max") if self.max_pitch is None else self.max_pitch
        extra = []
        if _numbers(self, "val_fraction", "test_fraction") and self.val_fraction + self.test_fraction >= 1:
            extra.append(f"dataset.val_fraction + dataset.test_fraction = {self.val_fraction + self.test_fraction:g} "
                         "must be below 1 to leave a training split")
        if _numbers(self, "min_pitch", "max_pitch") and self.min_pitch > self.max_pitch:
            extra.append(f"dataset.min_pitch={self.min_pitch} must not exceed dataset.max_pitch={self.max_pitch}")
        extra += stretch_problems(self.time_stretch, self.tokenizer)
        if (str(getattr(self.pitch_order, "value", self.pitch_order)) != "ascending"
                and str(getattr(self.tokenizer, "value", self.tokenizer)) != "polyphonic"):
            extra.append(f"dataset.pitch_order={getattr(self.pitch_order, 'value', self.pitch_order)} orders the "
                         "pitches of a polyphonic step: it needs dataset.tokenizer=polyphonic; remove it")
        check(vars(self), DATASET, "dataset.", extra)
        check_plain_name("dataset.name", self.name)


@dataclass
class ModelConfig:
    # Defaults = conf/model/small.yaml, the default model.
    embedding_size: int = 128  # token embedding width
    hidden_size: int = 512  # GRU width
    num_layers: int = 2  # stacked GRU layers
    dropout: float = 0.1  # between GRU layers and on the embedding / GRU output
    reset_after: bool = True  # true: torch.nn.GRU (cuDNN), reset after the product; false: the seeds' reset before it
    tie_weights: bool = False  # needs embedding_size == hidden_size
    # Regularizers (generate/regularize.py), all off by default:
    embedding_dropout: float = 0.0  # probability of dropping a whole embedding row (token dropout), training only
    variational_dropout: bool = False  # true: model.dropout's masks are locked (one per sequence, every step)
    weight_drop: float = 0.0  # DropConnect probability on the recurrent matrices W_hh, training only
    zoneout: float = 0.0  # probability a hidden unit keeps its previous value per step (its expectation at eval)
    layer_norm: bool = False  # layer-normalized GRU cell (learned gains on the input and recurrent products)

    def __post_init__(self) -> None:
        check(vars(self), MODEL, "model.")


@dataclass
class TrainConfig:
    # Defaults = the default recipe (conf/train/default.yaml): ~10 minutes on 2 CPU cores.
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 64  # parallel token streams per step (per process under torchrun)
    seq_len: int = 64  # tokens per stream per step (truncated BPTT length)
    lr: float = 3e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50  # linear warm-up steps before the cosine decay
    weight_decay: float = 0.01  # decoupled weight decay on weight matrices
    grad_clip: float = 1.0  # gradient-norm clipping
    seed: int = 1337  # everything random derives from it; same seed and settings, same result
    device: Device = Device.auto  # auto, cpu or cuda
    eval_every: int = 200  # steps between validation and saving last.pt / best.pt
    eval_batch_size: int = 64  # streams scored at once during validation
    resume: bool = False  # continue <run folder>/last.pt exactly where it stopped
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on CPU)
    log_every: int = 25  # steps between progress-bar / metrics updates
    max_bad_steps: int = 10  # consecutive non-finite losses before training stops
    save_every_minutes: float = 5.0  # also save last.pt this often (0 = only at evaluations), so a crash loses little
    dist_timeout_minutes: float = 5.0  # torchrun: a rank silent this long in a collective ends the job, one line
    # A split up to eval_tokens is scored whole, a bigger one through a fixed sample of about this many
    # tokens (the same every time).
    eval_tokens: int = 131_072  # validation tokens per evaluation (0 = always the whole split)
    threads: int = 1  # torch CPU threads; 1 measured fastest on a shared 2-core machine (docs/performance.md); 0 = torch's default
    ema_decay: float = 0.0  # > 0: validate and save an exponential moving average of the weights (e.g. 0.999); 0 = off

    def __post_init__(self) -> None:
        check(vars(self), TRAIN, "train.")


@dataclass
class TrainRunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_name: str = RUN_NAME  # checkpoints go to <checkpoints_dir>/<run_name>/ (default: the file's, folder's or dataset's name)
    checkpoints_dir: str = "${generate_home:}/checkpoints"  # where run folders go

    def __post_init__(self) -> None:
        check_plain_name("run_name", self.run_name)


@dataclass
class SamplingConfig:
    """How tokens are drawn: shared by sample and quality."""

    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    length: int = 500  # new tokens per sample
    num_samples: int = 1  # samples generated together as one batch
    seed: int = 1337  # everything random derives from it; same seed and settings, same result

    def __post_init__(self) -> None:
        check(vars(self), SAMPLING)


@dataclass
class SampleConfig(SamplingConfig):
    checkpoint: str | None = None  # a path or a shipped model's name (shakespeare, bach, jsb); none: your default run
    prompt: str = ""  # text to continue (text models)
    prompt_file: str | None = None  # read the prompt from this UTF-8 file instead
    primer: str | None = None  # a MIDI file to continue (music models)
    beam_size: int = 1  # > 1: beam search over whole continuations
    qpm: float | None = None  # tempo of written music (null: the tempo the model chose, else 120)
    out_dir: str = "${generate_home:}/samples"  # where sample_<i>.* files are written
    device: Device = Device.cpu  # cpu, cuda or auto
    quiet: bool = False  # do not print text samples to stdout
    instrument: str = ""  # music: a General MIDI program 0..127 or name (flute, violin, ...); "": piano
    soundfont: str | None = None  # music: the .sf2/.sf3 for .wav files; None: a system one, else sine waves
    threads: int = 1  # torch CPU threads (0 = torch's default); see train.threads
    meter: str | None = None  # music models with control tokens: start from this metre (2/4 3/4 4/4 6/8 9/8 ...)
    key: str | None = None  # ... and this key (D, Dm, F#m, Bb); none: the model chooses


@dataclass
class EvaluateConfig:
    checkpoint: str | None = None  # a checkpoint path or a shipped model's name; none: your default run
    split: Split = Split.test  # train, val or test
    batch_size: int = 64  # documents (or text chunks) scored at once
    seq_len: int = 256  # tokens per forward pass
    device: Device = Device.auto  # auto, cpu or cuda
    dataset_path: str | None = None  # read the dataset from here instead (a checkpoint from another machine)
    cache_dir: str | None = None  # where the dataset's token cache goes (default: ./cache, or $GENERATE_HOME/cache)
    threads: int = 1  # torch CPU threads (0 = torch's default); see train.threads
    max_tokens: int = 0  # score a fixed sample of about this many tokens (0 = the whole split)
    canonical: bool | None = None  # polyphonic: also the canonical-order NLL (null: when the model has that order)
    transpositions: int = 0  # music: score the mixture of the model over the piece moved by -K..K semitones
    ensemble: list[str] = field(default_factory=list)  # more checkpoints (paths or shipped names) mixed in equally

    def __post_init__(self) -> None:
        check(vars(self), EVALUATE)


@dataclass
class ExportConfig:
    checkpoint: str | None = None  # a training checkpoint (last.pt / best.pt)
    out: str | None = None  # where to write the stripped copy
    dtype: Dtype = Dtype.float16  # storage type of the weights
    overwrite: bool = False  # replace an existing `out` (never a run's last.pt / best.pt)
    format: ExportFormat = ExportFormat.pt  # pt: a checkpoint; onnx: float32 step graph + <out stem>.tokenizer.json
    card: dict[str, Any] = field(default_factory=dict)  # figures added to the model card: +card.test_nll_per_step=3.9


@dataclass
class QualityConfig(SamplingConfig):
    """python -m generate.quality: how close a music model's samples are to held-out music."""

    checkpoint: str | None = None  # a music checkpoint path or a shipped model's name
    split: Split = Split.test  # held-out pieces to compare with
    length: int = 256  # tokens per generated piece
    num_samples: int = 64  # pieces generated to compare
    device: Device = Device.cpu  # cpu, cuda or auto
    out: str | None = None  # also write the figures as JSON here


@dataclass
class AppConfig:
    """python -m generate.app: the local web app."""

    host: str = "127.0.0.1"  # loopback: only this machine can reach it
    port: int = 7860  # 0: any free port (the URL printed says which)
    checkpoints_dir: str = "${generate_home:}/checkpoints"  # your runs: checkpoints_dir/*/best.pt, beside the shipped models
    out_dir: str | None = None  # where samples are written; None: a new temporary folder
    soundfont: str | None = None  # the .sf2/.sf3 for .wav files; None: a system one, else sine waves
    device: Device = Device.cpu  # cpu, cuda or auto


@dataclass
class ListConfig:
    """python -m generate.list: the shipped models and your runs."""

    checkpoints_dir: str = "${generate_home:}/checkpoints"  # where your run folders are


SCHEMAS = {
    "config": TrainRunConfig, "sample": SampleConfig, "evaluate": EvaluateConfig,
    "export": ExportConfig, "quality": QualityConfig, "app": AppConfig, "list": ListConfig,
}


def register_configs() -> None:
    """Make the dataclasses the schema of the YAML files under conf/ (Hydra's ConfigStore)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainRunConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    for name in ("sample", "evaluate", "export", "quality", "app", "list"):
        cs.store(name=f"{name}_schema", node=SCHEMAS[name])


T = TypeVar("T")


def _numbers(obj: Any, *names: str) -> bool:
    """Whether these fields hold finite numbers (so a cross-field rule can compare them)."""
    return all(isinstance(getattr(obj, n), int | float) and getattr(obj, n) == getattr(obj, n) for n in names)


def to_object(cfg: Any, schema: type[T]) -> T:
    """A composed DictConfig (or a dict) → an instance of the schema dataclass, interpolations resolved."""
    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:  # an interpolation that does not resolve, a value of the wrong type
        raise UserError(f"bad setting: {str(err).strip().splitlines()[0]}") from None
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


def dataset_from_checkpoint(stored: Any, cache_dir: str | None = None) -> DatasetConfig:
    """The DatasetConfig a checkpoint was trained on. Only ${project_root:} is expanded: a stored
    value is never resolved through environment variables or any other interpolation. The cache
    folder is never the checkpoint's: it is `cache_dir`, else $GENERATE_HOME/cache (./cache)."""
    if not isinstance(stored, dict):
        raise UserError("the checkpoint's config.dataset is not a mapping; it is damaged or foreign")
    names = {f.name for f in dataclasses.fields(DatasetConfig)} - {"cache_dir"}
    values = {k: v for k, v in stored.items() if k in names}
    if "test_position" not in stored:  # trained before the key existed, when a text's test split sat before val
        values["test_position"] = TestPosition.before_val
    if isinstance(values.get("path"), str):
        values["path"] = expand_project_root(values["path"])
    for key, value in values.items():
        if isinstance(value, str) and "${" in value:
            raise UserError(f"the checkpoint's dataset.{key} holds an interpolation ({value[:60]}); it is refused")
    try:
        settings = with_settings(DatasetConfig(), "dataset", values)
    except UserError as err:
        raise UserError(f"the checkpoint's dataset settings are invalid: {err}") from None
    # The schema's default is "${generate_home:}/cache", which only Hydra would resolve: say it here.
    settings.cache_dir = str(home() / "cache") if cache_dir is None else expand_project_root(cache_dir)  # type: ignore[assignment]
    return settings


def split_changes(stored: Any, current: DatasetConfig) -> list[str]:
    """The split settings a run trained with (`dataset.key=value`) where `current` differs: a resume on other
    splits would train on what was held out. test_position counts for text alone (music splits by file)."""
    then = dataset_from_checkpoint(stored)
    keys = ["val_fraction", "test_fraction"] + (["test_position"] if then.source == Source.text else [])
    value = lambda v: getattr(v, "value", v)  # noqa: E731
    return [f"dataset.{k}={value(getattr(then, k))}" for k in keys if value(getattr(then, k)) != value(getattr(current, k))]

