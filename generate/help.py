"""`--help` for each command: its own keys with type, default and the schema's one-line description (no torch)."""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from generate import config
from generate.paths import CONFIG_DIR

SUMMARIES = {
    "train": "Train a stacked GRU language model on text or music; checkpoints go to <checkpoints_dir>/<run_name>/.",
    "sample": "Generate text or music from a checkpoint (a path or a shipped model's name).",
    "evaluate": "The loss of a checkpoint on a split of its own dataset, in nats and bits per token.",
    "export": "A training checkpoint stripped to its weights (float16 by default), or an ONNX step graph, for sharing.",
    "quality": "How close a music model's samples are to held-out music (histograms; metre and key if controlled).",
    "list": "The shipped models and your runs, with dataset, tokenizer, parameters, steps and validation loss.",
    "app": "A local web page: pick a model, generate, listen and download (needs pip install -e \".[app]\").",
}
EXAMPLES = {
    "train": [
        "python -m generate.train                                   # tiny Shakespeare, ~10 minutes on a laptop CPU",
        "python -m generate.train train=smoke                       # a few seconds: check that a setup works",
        "python -m generate.train dataset=text dataset.path=my.txt model.hidden_size=256",
        "python -m generate.train dataset=midi dataset.path=my_midi_folder/ train.max_steps=2000",
        "python -m generate.train run_name=shakespeare train.resume=true train.max_steps=2000   # continue a run",
    ],
    "sample": [
        "python -m generate.sample                                  # your default run, else the shipped Shakespeare",
        "python -m generate.sample checkpoint=shakespeare prompt=\"ROMEO:\" temperature=0.8 length=300",
        "python -m generate.sample checkpoint=bach num_samples=4 out_dir=tunes/",
        "python -m generate.sample checkpoint=shakespeare prompt_file=opening.txt",
        "python -m generate.sample checkpoint=checkpoints/folk/best.pt meter=6/8 key=Dm   # models with control tokens",
    ],
    "evaluate": [
        "python -m generate.evaluate checkpoint=checkpoints/shakespeare/best.pt split=test",
        "python -m generate.evaluate checkpoint=jsb split=test      # also the NLL per time step",
    ],
    "export": ["python -m generate.export checkpoint=checkpoints/shakespeare/best.pt out=shakespeare.pt",
               "python -m generate.export checkpoint=shakespeare format=onnx out=shakespeare.onnx   # needs [onnx]"],
    "quality": ["python -m generate.quality checkpoint=bach num_samples=32 out=quality.json",
                "python -m generate.quality checkpoint=checkpoints/folk/best.pt   # + metre and key as asked"],
    "list": ["python -m generate.list", "python -m generate.list checkpoints_dir=/data/runs"],
    "app": ["python -m generate.app                                     # http://127.0.0.1:7860",
            "python -m generate.app port=8000 checkpoints_dir=runs/"],
}
SECTIONS = {"train": [("dataset", config.DatasetConfig), ("model", config.ModelConfig), ("train", config.TrainConfig),
                      ("", config.TrainRunConfig)]}
SCHEMAS = {"sample": config.SampleConfig, "evaluate": config.EvaluateConfig, "export": config.ExportConfig,
           "quality": config.QualityConfig, "app": config.AppConfig, "list": config.ListConfig}


def field_comments(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each field line in the dataclass's source (inherited fields included)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        source = inspect.getsource(klass)
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                line = token.line.strip()
                name = line.split(":", 1)[0]
                if ":" in line and name.isidentifier() and not line.startswith("#"):
                    comments[name] = token.string.lstrip("# ").strip()
    return comments


def type_name(annotation: Any) -> str:
    """int, float, str, bool, `a|b|c` for an Enum, `X or null` for an optional value."""
    hint = annotation
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = len(args) < len(typing.get_args(hint))
    if optional:
        hint = args[0]
    if isinstance(hint, type) and issubclass(hint, Enum):
        name = "|".join(member.value for member in hint)
    else:
        name = getattr(hint, "__name__", str(hint))
    return f"{name} or null" if optional else name


def key_lines(prefix: str, cls: type, defaults: dict[str, Any]) -> list[str]:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue  # a section of its own
        default = defaults.get(f.name)
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()  # a list or dict field (dataset.time_stretch, export's card)
        default = default.value if isinstance(default, Enum) else default
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        shown = shown.replace("${generate_home:}/", "./")  # see the note under the table
        key = f"{prefix}.{f.name}" if prefix else f.name
        lines.append(f"  {key:<30} {type_name(hints[f.name]):<22} {shown:<22} {comments.get(f.name, '')}".rstrip())
    return lines


def presets(group: str) -> str:
    return ", ".join(sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")))


def command_help(command: str) -> str:
    """The whole --help text of one command."""
    out = [f"usage: python -m generate.{command} [key=value ...]", "", SUMMARIES[command], ""]
    if command == "train":
        out += ["presets (choose with group=name):",
                f"  dataset={{{presets('dataset')}}}", f"  model={{{presets('model')}}}", f"  train={{{presets('train')}}}",
                f"  +experiment={{{presets('experiment')}}}   (a whole recipe)", ""]
        shakespeare = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "dataset" / "shakespeare.yaml"))
        assert isinstance(shakespeare, dict)
        for prefix, cls in SECTIONS["train"]:
            defaults = {f.name: f.default for f in dataclasses.fields(cls)}
            if prefix == "dataset":
                defaults.update({k: v for k, v in shakespeare.items() if k != "defaults"})
            out.append(f"{prefix or 'run'} settings (default dataset=shakespeare):" if prefix == "dataset"
                       else f"{prefix or 'run'} settings:")
            out += key_lines(prefix, cls, defaults) + [""]
    else:
        cls = SCHEMAS[command]
        out.append("settings:")
        out += key_lines("", cls, {f.name: f.default for f in dataclasses.fields(cls)}) + [""]
    out += ["examples:"] + [f"  {line}" for line in EXAMPLES[command]]
    out += ["", "Write settings as key=value (no dashes). Quote text with spaces or symbols: prompt=\"What, ho! Romeo\".",
            "Paths shown as ./ are under $GENERATE_HOME when it is set, else the current folder.",
            f"Every resolved value: python -m generate.{command} --cfg job"]
    return "\n".join(out)


def setting_names(command: str) -> set[str]:
    """Every key the command accepts, dotted for train's sections (for the argparse-habit hint)."""
    if command == "train":
        names = {f.name for f in dataclasses.fields(config.TrainRunConfig)}
        for prefix, cls in SECTIONS["train"][:3]:
            names |= {f"{prefix}.{f.name}" for f in dataclasses.fields(cls)} | {f.name for f in dataclasses.fields(cls)}
        return names
    return {f.name for f in dataclasses.fields(SCHEMAS[command])}


def text_settings(command: str, lists: bool = False) -> set[str]:
    """Keys whose values are free text or paths (str-typed, not a choice): the CLI quotes them for Hydra.
    With `lists`: the keys that take a list of them instead (ensemble=[a,b])."""
    sections = SECTIONS["train"] if command == "train" else [("", SCHEMAS[command])]
    keys = set()
    for prefix, cls in sections:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            if args[0] is str and (typing.get_origin(hint) is list) == lists:
                keys.add(f"{prefix}.{f.name}" if prefix else f.name)
    return keys
