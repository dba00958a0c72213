"""The command-line edge: Hydra composes a typed config, each command turns it into one public-API call."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from generate.arguments import prepare_arguments
from generate.config import (
    CONFIG_DIR,
    EvaluateConfig,
    ExportConfig,
    ListConfig,
    QualityConfig,
    SampleConfig,
    TrainRunConfig,
    register_configs,
    to_object,
)
from generate.errors import UserError

# command → the config file under conf/ that Hydra composes for it
CONFIG_NAMES = {"train": "config", "sample": "sample", "evaluate": "evaluate", "export": "export", "quality": "quality",
                "app": "app", "list": "list"}
GIVEN_ARGS: list[str] = []  # the command line as typed, before prepare_arguments quotes values for Hydra


# ---------------------------------------------------------------- commands


def run_train(cfg: Any) -> Any:
    """python -m generate.train: one training run (one folder per job of a multirun)."""
    from generate.trainer import train_run

    run = to_object(cfg, TrainRunConfig)
    again = [arg for arg in sys.argv[1:] if not arg.startswith(("train.resume=", "-m", "--multirun"))]
    hint = " ".join(["python -m generate.train", *map(shlex.quote, again), "train.resume=true"])
    job = multirun_job()  # the model card's recipe: the command as typed, or a multirun job's own settings
    given = [a for a in (job[0] if job else GIVEN_ARGS or sys.argv[1:]) if not a.startswith("train.resume=")]
    recipe = " ".join(["python -m generate.train", *map(shlex.quote, given)])
    return train_run(run, run_dir_for(run), resume_hint=hint, recipe=recipe)


def run_sample(cfg: Any) -> list[Any]:
    """python -m generate.sample: generate from a checkpoint and write every sample to out_dir.

    Returns the samples (texts, pieces); a text sample longer than SHOWN_TOKENS is returned as its file's path.
    """
    from generate.api import Model
    from generate.music.audio import find_soundfont, program_for
    from generate.runtime import use_threads

    settings = to_object(cfg, SampleConfig)
    if settings.prompt_file and settings.prompt:
        raise UserError("prompt= and prompt_file= cannot be used together; give one of them")
    prompt = read_prompt(settings.prompt_file) if settings.prompt_file else settings.prompt
    program_for(settings.instrument), find_soundfont(settings.soundfont)  # a typo fails before any generation
    use_threads(settings.threads)
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # before any work: a path that cannot be a folder fails now
    model = Model.from_pretrained(settings.checkpoint, device=settings.device.value)
    model.prime(prompt, settings.primer, settings.meter, settings.key)  # a bad prompt, primer, meter or key: one line
    model.check_music_length(settings.length)
    print(f"checkpoint: {model.path} ({model.origin})", file=sys.stderr)
    if not model.is_music and settings.beam_size == 1:
        samples = write_text_samples(model, settings, prompt, out_dir)
    else:
        samples = model.sample(
            prompt, primer=settings.primer, temperature=settings.temperature, top_k=settings.top_k,
            top_p=settings.top_p, length=settings.length, num_samples=settings.num_samples, seed=settings.seed,
            beam_size=settings.beam_size, qpm=settings.qpm, meter=settings.meter, key=settings.key,
        )
    for i, item in enumerate(samples):
        if model.is_music:
            written = item.write(out_dir / f"sample_{i}", instrument=settings.instrument, soundfont=settings.soundfont)
            print(f"sample {i}: " + ", ".join(str(p) for p in written))
            continue
        if settings.beam_size > 1:
            item.write(out_dir / f"sample_{i}.txt")
        if not settings.quiet:
            print(f"--- sample {i} ---", flush=True)
            with (out_dir / f"sample_{i}.txt").open(encoding="utf-8") as text:  # in chunks: it may be huge
                shutil.copyfileobj(text, sys.stdout)
            print()
    print(f"wrote {len(samples)} sample(s) to {out_dir}/", file=sys.stderr)
    return samples


def read_prompt(path: str) -> str:
    """A prompt from a UTF-8 text file (nanoGPT's --start=FILE:), refused with one line when unreadable."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt file not found: {path}; give prompt_file=PATH to a UTF-8 text file") from None
    except UnicodeDecodeError as err:
        raise UserError(f"prompt file {path} is not UTF-8 (invalid byte at offset {err.start}); convert it first") from None
    except OSError as err:
        raise UserError(f"cannot read prompt file {path} ({err.strerror}); check the path") from None


def write_text_samples(model: Any, settings: SampleConfig, prompt: str, out_dir: Path, block: int = 4096) -> list[Any]:
    """Stream text samples to out_dir/sample_<i>.txt, `block` tokens at a time, so memory does not grow with length.

    A progress bar appears when generation takes more than a few seconds.
    """
    from tqdm import tqdm

    from generate.samples import TextSample

    paths = [out_dir / f"sample_{i}.txt" for i in range(settings.num_samples)]
    pieces = model.stream_samples(prompt, temperature=settings.temperature, top_k=settings.top_k,
                                  top_p=settings.top_p, length=settings.length, num_samples=settings.num_samples,
                                  seed=settings.seed, block=block)
    with ExitStack() as stack, tqdm(total=settings.length, unit="tok", unit_scale=True, delay=3, file=sys.stderr,
                                    desc="sample", dynamic_ncols=True) as bar:
        files = [stack.enter_context(path.open("w", encoding="utf-8")) for path in paths]
        for k, texts in enumerate(pieces):
            for handle, text in zip(files, texts, strict=True):
                handle.write(text)
            if k or not prompt:  # the prompt comes first, as a block of its own
                bar.update(min(block, settings.length - bar.n))
    if settings.length > SHOWN_TOKENS:
        return paths
    return [TextSample(path.read_text(encoding="utf-8")) for path in paths]


SHOWN_TOKENS = 100_000  # longer text samples are only written to their files


def run_evaluate(cfg: Any) -> Any:
    """python -m generate.evaluate: the loss on a split of the checkpoint's own dataset."""
    from generate.api import Model
    from generate.runtime import use_threads

    settings = to_object(cfg, EvaluateConfig)
    use_threads(settings.threads)
    model = Model.from_pretrained(settings.checkpoint, device=settings.device.value)
    print(f"checkpoint: {model.path} ({model.origin})")
    split = settings.split.value
    result = model.evaluate(split, batch_size=settings.batch_size, seq_len=settings.seq_len,
                            dataset_path=settings.dataset_path, cache_dir=settings.cache_dir,
                            max_tokens=settings.max_tokens, canonical=settings.canonical,
                            transpositions=settings.transpositions, ensemble=settings.ensemble)
    k = result.transpositions
    semitones = f"({-k:+d}..{k:+d} semitones)"
    if result.models > 1:
        print(f"scored as the equal mixture of {result.models} models ({model.path.name} and "
              f"{', '.join(settings.ensemble)})" + (f", {2 * k + 1} transposed views of each {semitones}" if k else "")
              + (f", frame by frame across {result.pitch_orders} pitch orders" if result.pitch_orders > 1 else ""))
    elif k:
        print(f"scored as the mixture of {2 * k + 1} transposed views of the model {semitones}")
    line = (f"{model.card()['dataset']} {split}: {result.nats_per_token:.4f} nats/token, "
            f"{result.bits_per_token:.4f} bits/token over {result.tokens:,} tokens")
    if result.nll_per_time_step is not None:
        line += f"; NLL {result.nll_per_time_step:.4f} nats per time step over {result.time_steps:,} steps"
    print(line)
    if result.first_frames:
        print(result.frame_table(bool(getattr(model.tokenizer, "canonical_order", False))))
    return result


def run_export(cfg: Any) -> Path:
    """python -m generate.export: a checkpoint stripped to its weights (float16 by default) for sharing."""
    import torch

    from generate.checkpoint import export_checkpoint

    settings = to_object(cfg, ExportConfig)
    if not settings.checkpoint or not settings.out:
        raise UserError("give both checkpoint=PATH (a training checkpoint) and out=PATH (the file to write)")
    if settings.format.value == "onnx":
        from generate.onnx_export import export_onnx

        target, meta = export_onnx(settings.checkpoint, settings.out, settings.overwrite)
        print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB, float32 ONNX step graph) and {meta}")
        return target
    target = export_checkpoint(settings.checkpoint, settings.out, getattr(torch, settings.dtype.value), settings.overwrite,
                               card=settings.card)
    size_mb = target.stat().st_size / 1e6
    print(f"wrote {target} ({size_mb:.1f} MB, {settings.dtype.value} weights; training state dropped)")
    return target


def run_quality(cfg: Any) -> dict[str, Any]:
    """python -m generate.quality: histogram distances between a music model's samples and held-out music."""
    from generate.api import Model
    from generate.music.analysis import distances, histograms, metre_key_section, print_metre_key

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
    if (section := metre_key_section(model, corpus.splits["train"], sampling)) is not None:
        result["metre_key"] = section  # models with control tokens: metre and key as asked
        print_metre_key(section)
    if settings.out:
        Path(settings.out).parent.mkdir(parents=True, exist_ok=True)
        Path(settings.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_list(cfg: Any) -> list[dict[str, Any]]:
    """python -m generate.list: one line per shipped model and per run, with the figures that tell them apart."""
    from generate.api import list_models

    settings = to_object(cfg, ListConfig)
    listed = list_models(settings.checkpoints_dir)
    print(f"{'name':<24}{'origin':<10}{'dataset':<14}{'tokenizer':<11}{'parameters':>12}{'steps':>8}{'val loss':>10}  path")
    for entry in listed:
        card = entry.get("card")
        if card is None:
            print(f"{entry['name']:<24}{entry['origin']:<10}unreadable: {entry['error']}")
            continue
        loss = "" if card["val_loss"] is None else f"{card['val_loss']:.4f}"
        print(f"{entry['name']:<24}{entry['origin']:<10}{card['dataset']:<14}{card['tokenizer']:<11}"
              f"{card['parameters']:>12,}{card['steps'] or 0:>8,}{loss:>10}  {Path(entry['path']).resolve()}")
        if card.get("recipe"):  # a card from training (older checkpoints have none): how to make it again
            print(f"{'':<24}recipe: {card['recipe']}")
    if not any(e["origin"] != "shipped" for e in listed):
        print(f"(no runs of yours under {Path(settings.checkpoints_dir).resolve()}: train one with python -m generate.train)")
    return listed


COMMANDS: dict[str, Callable[[Any], Any]] = {
    "train": run_train, "sample": run_sample, "evaluate": run_evaluate, "export": run_export, "quality": run_quality,
    "list": run_list,
}


def run_dir_for(run: TrainRunConfig) -> Path:
    """checkpoints/<run_name>/, or one folder per job inside it for a Hydra multirun."""
    base = Path(run.checkpoints_dir) / run.run_name
    job = multirun_job()
    return base / _swept_settings(*job) if job else base


def multirun_job() -> tuple[list[str], int] | None:
    """A multirun job's own overrides (one value per key) and its number; None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # not running under @hydra.main (tests, notebooks)
        return None
    return (list(hydra_cfg.overrides.task), hydra_cfg.job.num) if hydra_cfg.mode == RunMode.MULTIRUN else None


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
    except OSError as err:  # disk full, read-only, not a folder, no permission: the path and the fix
        from generate.storage import describe_os_error

        sys.stderr.write(f"error: {describe_os_error(err)}\n")
        sys.stderr.flush()
        sys.exit(2)
    except KeyboardInterrupt as err:  # Ctrl-C (SIGINT) or, during training, SIGTERM
        if not getattr(err, "explained", False):  # else the trainer has already said where its work is
            print("interrupted", file=sys.stderr)
        sys.exit(128 + getattr(err, "signum", 2))


def main(command: str, task: Callable[[Any], Any] | None = None) -> None:
    """`python -m generate.<command> [key=value ...]`: help, compose, check, run (`task`: a command not in COMMANDS)."""
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        from generate.help import command_help

        print(command_help(command))
        return
    GIVEN_ARGS[:] = sys.argv[1:]
    sys.argv[1:] = prepare_arguments(command, sys.argv[1:])
    import hydra

    register_configs()
    task = task or COMMANDS[command]

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=CONFIG_NAMES[command])
    def hydra_main(cfg: Any) -> None:
        report_errors(task, cfg)

    check_overrides(command, sys.argv[1:])
    hydra_main()
