"""The command-line edge: Hydra composes a typed config, each command turns it into one public-API call."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from generate.config import (
    CONFIG_DIR,
    EvaluateConfig,
    ExportConfig,
    QualityConfig,
    SampleConfig,
    TrainRunConfig,
    register_configs,
    to_object,
)
from generate.errors import UserError
from generate.runtime import use_threads

# command → the config file under conf/ that Hydra composes for it
CONFIG_NAMES = {"train": "config", "sample": "sample", "evaluate": "evaluate", "export": "export", "quality": "quality"}


# ---------------------------------------------------------------- commands


def run_train(cfg: Any) -> Any:
    """python -m generate.train: one training run (one folder per job of a multirun)."""
    from generate.trainer import train_run

    run = to_object(cfg, TrainRunConfig)
    return train_run(run, run_dir_for(run))


def run_sample(cfg: Any) -> list[Any]:
    """python -m generate.sample: generate from a checkpoint and write every sample to out_dir."""
    from generate.api import Model, TextSample

    settings = to_object(cfg, SampleConfig)
    use_threads(settings.threads)
    model = Model.from_pretrained(settings.checkpoint, device=settings.device.value)
    samples = model.sample(
        settings.prompt, primer=settings.primer, temperature=settings.temperature, top_k=settings.top_k,
        top_p=settings.top_p, length=settings.length, num_samples=settings.num_samples, seed=settings.seed,
        beam_size=settings.beam_size, qpm=settings.qpm,
    )
    print(f"checkpoint: {model.path} ({model.origin})", file=sys.stderr)
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(samples):
        if isinstance(item, TextSample):
            item.write(out_dir / f"sample_{i}.txt")
            if not settings.quiet:
                print(f"--- sample {i} ---\n{item}")
        else:
            written = item.write(out_dir / f"sample_{i}")
            print(f"sample {i}: " + ", ".join(str(p) for p in written))
    print(f"wrote {len(samples)} sample(s) to {out_dir}/", file=sys.stderr)
    return samples


def run_evaluate(cfg: Any) -> Any:
    """python -m generate.evaluate: the loss on a split of the checkpoint's own dataset."""
    from generate.api import Model

    settings = to_object(cfg, EvaluateConfig)
    use_threads(settings.threads)
    model = Model.from_pretrained(settings.checkpoint, device=settings.device.value)
    print(f"checkpoint: {model.path} ({model.origin})")
    split = settings.split.value
    result = model.evaluate(split, batch_size=settings.batch_size, seq_len=settings.seq_len,
                            dataset_path=settings.dataset_path)
    line = (
        f"{model.card()['dataset']} {split}: {result.nats_per_token:.4f} nats/token, "
        f"{result.bits_per_token:.4f} bits/token over {result.tokens:,} tokens"
    )
    if result.nll_per_time_step is not None:
        line += f"; NLL {result.nll_per_time_step:.4f} nats per time step over {result.time_steps:,} steps"
    print(line)
    return result


def run_export(cfg: Any) -> Path:
    """python -m generate.export: a checkpoint stripped to its weights (float16 by default) for sharing."""
    import torch

    from generate.checkpoint import export_checkpoint

    settings = to_object(cfg, ExportConfig)
    if not settings.checkpoint or not settings.out:
        raise UserError("give both checkpoint=PATH (a training checkpoint) and out=PATH (the file to write)")
    target = export_checkpoint(settings.checkpoint, settings.out, getattr(torch, settings.dtype.value))
    size_mb = target.stat().st_size / 1e6
    print(f"wrote {target} ({size_mb:.1f} MB, {settings.dtype.value} weights; training state dropped)")
    return target


def run_quality(cfg: Any) -> dict[str, Any]:
    """python -m generate.quality: histogram distances between a music model's samples and held-out music."""
    from generate.api import Model
    from generate.music.analysis import distances, histograms

    settings = to_object(cfg, QualityConfig)
    model = Model.from_pretrained(settings.checkpoint, device=settings.device.value)
    if not model.is_music:
        raise UserError("quality compares music: this checkpoint is a text model")
    print(f"checkpoint: {model.path} ({model.origin})")
    corpus, split = model.dataset(), settings.split.value
    reference_split = "val" if split != "val" else "train"
    held_out = histograms([s.piece for s in model.decode(corpus.splits[split])])
    reference = histograms([s.piece for s in model.decode(corpus.splits[reference_split])])
    sampling = {k: getattr(settings, k) for k in ("temperature", "top_k", "top_p", "length", "num_samples", "seed")}
    generated = histograms([s.piece for s in model.sample(**sampling)])
    result = {
        "checkpoint": str(model.path),
        "split": split,
        "settings": sampling,
        "generated_vs_held_out": distances(generated, held_out),
        f"{reference_split}_vs_held_out": distances(reference, held_out),
    }
    print(f"total variation distance to the {split} split (0 = same distribution, 1 = disjoint):")
    print(f"{'histogram':<14}{'generated':>11}{reference_split + ' split':>14}")
    for name in held_out:
        print(f"{name:<14}{result['generated_vs_held_out'][name]:>11.3f}{result[f'{reference_split}_vs_held_out'][name]:>14.3f}")
    if settings.out:
        Path(settings.out).parent.mkdir(parents=True, exist_ok=True)
        Path(settings.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


COMMANDS: dict[str, Callable[[Any], Any]] = {
    "train": run_train, "sample": run_sample, "evaluate": run_evaluate, "export": run_export, "quality": run_quality,
}


def run_dir_for(run: TrainRunConfig) -> Path:
    """checkpoints/<run_name>/, or one folder per job inside it for a Hydra multirun."""
    base = Path(run.checkpoints_dir) / run.run_name
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return base / _swept_settings(list(hydra_cfg.overrides.task), hydra_cfg.job.num)
    except ValueError:  # not running under @hydra.main (tests, notebooks)
        pass
    return base


def _swept_settings(job_overrides: list[str], job_num: int) -> str:
    """`model.hidden_size=256,train.lr=0.001`: only the keys the multirun sweeps over."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    swept = {o.key_or_group for o in parser.parse_overrides([a for a in sys.argv[1:] if not a.startswith("-")])
             if o.is_sweep_override()}
    chosen = [o for o in job_overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return ",".join(chosen).replace("/", "_") or f"job{job_num}"


# ---------------------------------------------------------------- Hydra wrapping


def _config_error_line(err: Exception) -> str:
    """Hydra/OmegaConf's several-line composition errors, folded into one line with the fix."""
    noise = ("full_key", "reference_type", "object_type", "See https", "To append to your config", "Config search path")
    parts: list[str] = []
    cause: BaseException | None = err
    while cause is not None:  # the useful detail ("Key 'x' not in 'ModelConfig'") is often the cause
        for line in str(cause).splitlines():
            line = line.strip()
            if line.startswith("provider="):
                break
            if line and not line.startswith(noise) and line not in parts:
                parts.append(line)
        cause = cause.__cause__
    return " ".join(parts).replace(" dataset_schema", "").replace(" model_schema", "").replace(" train_schema", "")


def check_overrides(command: str, args: list[str]) -> None:
    """Compose the config once from the command line, so a typo or a wrong type is one line, exit 2.

    Multirun sweeps and Hydra's own flags are left to Hydra, which reports them itself.
    """
    if any(arg.startswith("-") for arg in args):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            compose(config_name=CONFIG_NAMES[command], overrides=args)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        hint = f"see every key and its type with `python -m generate.{command} --cfg job`"
        if "LexerNoViableAlt" in type(err).__name__ or "override_grammar" in str(err):
            hint = "quote values with spaces or symbols like this: 'prompt=\"ROMEO: #1\"'"
        print(f"error: bad command-line setting: {_config_error_line(err)}; {hint}", file=sys.stderr)
        sys.exit(2)


def report_errors(task: Callable[[Any], Any], cfg: Any) -> Any:
    """Run one command; a UserError becomes one line on stderr and exit 2, Ctrl-C exit 130."""
    try:
        return task(cfg)
    except UserError as err:
        # One write call: under torchrun several ranks may report at once, and a line
        # written in one piece (under the pipe's atomic size) is never interleaved.
        sys.stderr.write(f"error: {err}\n")
        sys.stderr.flush()
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def main(command: str) -> None:
    """`python -m generate.<command> [key=value ...]`: compose, check, run."""
    import hydra

    register_configs()
    task = COMMANDS[command]

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=CONFIG_NAMES[command])
    def hydra_main(cfg: Any) -> None:
        report_errors(task, cfg)

    check_overrides(command, sys.argv[1:])
    hydra_main()
