"""train(cfg): tokenize, build the model, run truncated-BPTT training, evaluate and checkpoint."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from generate.checkpoint import atomic_save, load_checkpoint, remove_stale_temp_files
from generate.config import to_plain
from generate.data import IGNORE, load_corpus, split_for_eval, training_stream
from generate.distributed import (
    Dist,
    all_gather,
    all_reduce_sum,
    close_distributed,
    init_distributed,
    main_first,
    main_only,
)
from generate.evaluate import EvalResult, evaluate_loss
from generate.model import GRULanguageModel, ModelSpec
from generate.runtime import UserError, hydra_entry, resolve_device

# Test-only hook: with this set to N, the process SIGKILLs itself right after its N-th checkpoint
# save, so tests can prove that resume after a hard kill is exact (tests/test_resume.py). Unset, it
# costs nothing.
KILL_AFTER_SAVE_ENV = "GENERATE_TEST_KILL_AFTER_SAVE"


def run_dir_for(cfg: Any) -> Path:
    """checkpoints/<run_name>/, or one folder per job inside it for a Hydra multirun."""
    base = Path(cfg.checkpoints_dir) / cfg.run_name
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
    import sys

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    swept = {o.key_or_group for o in parser.parse_overrides([a for a in sys.argv[1:] if not a.startswith("-")])
             if o.is_sweep_override()}
    chosen = [o for o in job_overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return ",".join(chosen).replace("/", "_") or f"job{job_num}"


class RunLock:
    """An exclusive lock on a run folder, so two trainings never write the same checkpoints.

    flock is released by the kernel when the process dies (even by SIGKILL), so a crashed run
    never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.handle: Any = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; carry on unlocked
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise UserError(
                f"{self.path.parent} is in use by a training run ({holder}); wait for it to finish "
                "or choose another run_name=..."
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.handle.flush()
        # Saves killed mid-write (SIGKILL, power loss) leave temp files; holding the lock, they are ours to delete.
        remove_stale_temp_files(self.path.parent)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.close()


def lr_at(step: int, cfg: Any) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at max_steps (as a multiplier)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: Any, device: torch.device) -> torch.optim.Optimizer:
    # Weight decay on matrices only; biases, and the embedding table, are left alone.
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embedding")]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("embedding"))]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=device.type == "cuda")


def write_loss_plot(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def _trim_metrics(path: Path, last_step: int) -> None:
    """On resume, drop metric rows written after the checkpoint, so the curve has no duplicates.

    A torn last line (power loss mid-append) is dropped too; the file is replaced atomically.
    """
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def rng_state(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def lock_run(cfg: Any, run_dir: Path, stack: ExitStack) -> None:
    """Lock the run folder until `stack` closes, and check that it holds what the run expects.

    Rank 0 alone calls this, before any other work, so a busy folder is refused at once.
    """
    stack.enter_context(RunLock(run_dir))
    last_path = run_dir / "last.pt"
    if cfg.train.resume and not last_path.is_file():
        raise UserError(f"train.resume=true but there is no {last_path} to resume from")
    if not cfg.train.resume and last_path.is_file():
        raise UserError(
            f"{last_path} already exists from an earlier run; add train.resume=true to continue it, "
            "or pick a new run_name=..."
        )
    if not cfg.train.resume:  # rows of a run that died before its first last.pt: not this run's curve
        _trim_metrics(run_dir / "metrics.jsonl", 0)


RESUME_KEYS = ("optimizer", "scheduler", "step", "best_val", "data_state", "rng", "hidden", "config")


def read_resume(run_dir: Path, spec: ModelSpec, tokenizer: Any) -> dict[str, Any]:
    """last.pt, checked against this run's model and data (rank 0, holding the lock)."""
    last_path = run_dir / "last.pt"
    ckpt = load_checkpoint(last_path)
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing or not isinstance(ckpt["rng"], list):
        raise UserError(
            f"{last_path} holds a model but not the training state to resume from ({', '.join(missing) or 'per-process state'} "
            "missing); start a new run_name=... (sample and evaluate can still use this file)"
        )
    if ckpt["model_spec"] != spec.to_dict():
        raise UserError(
            f"{last_path} holds a different model ({ckpt['model_spec']}); resume with the same model.* settings"
        )
    if ckpt["tokenizer"] != tokenizer.to_dict():
        raise UserError(f"{last_path} was trained on a different dataset; resume with the same dataset.* settings")
    _trim_metrics(run_dir / "metrics.jsonl", ckpt["step"])
    return ckpt


def train(cfg: Any) -> dict[str, Any]:
    """Train a model as `cfg` (a TrainRunConfig) says; returns a summary of the run.

    Under torchrun every process calls this: each reads its own rows of the token stream, DDP
    averages gradients, and rank 0 alone writes checkpoints, metrics and the plot.
    """
    d, device = init_distributed(resolve_device(cfg.train.device))
    try:
        with ExitStack() as stack:  # holds the run-folder lock; closes the progress bar
            return _train(cfg, d, device, stack)
    finally:
        close_distributed(d)


def _train(cfg: Any, d: Dist, device: torch.device, stack: ExitStack) -> dict[str, Any]:
    tcfg = cfg.train
    say: Callable[[str], None] = tqdm.write if d.is_main else (lambda _: None)
    torch.manual_seed(tcfg.seed)
    run_dir = run_dir_for(cfg)
    kill_after_save = int(os.environ.get(KILL_AFTER_SAVE_ENV) or 0)
    main_only(d, lambda: lock_run(cfg, run_dir, stack))

    corpus = main_first(d, lambda: load_corpus(cfg.dataset, verbose=d.is_main))  # rank 0 fills the cache
    tokenizer = corpus.tokenizer
    separator = tokenizer.separator_id()
    stream = training_stream(corpus.splits["train"], separator, tcfg.batch_size, tcfg.seq_len, tcfg.seed, d.rank, d.world_size)
    val_docs = split_for_eval(corpus.splits["val"], tcfg.eval_batch_size)
    if not val_docs:
        raise UserError(f"the validation split of {cfg.dataset.name} is empty; use a larger dataset")
    val_shard = val_docs[d.rank :: d.world_size]  # each rank scores its share; the sums are all-reduced

    try:
        spec = ModelSpec.from_config(tokenizer.vocab_size, cfg.model)
        model = GRULanguageModel(spec).to(device)  # the same initial weights on every rank (same seed)
    except ValueError as err:
        raise UserError(str(err)) from None
    if d.rank:
        torch.manual_seed(tcfg.seed + d.rank)  # but each rank its own dropout masks
    optimizer = make_optimizer(model, tcfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, tcfg))
    use_bf16 = device.type == "cuda" and tcfg.bf16
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    ckpt = main_only(d, lambda: read_resume(run_dir, spec, tokenizer)) if tcfg.resume else None
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    metrics_path = run_dir / "metrics.jsonl"
    step, best_val, saved_step, hidden = 0, math.inf, None, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, best_val, saved_step = ckpt["step"], ckpt["best_val"], ckpt["step"]
        # Per-rank state: each rank's data position, carried hidden state and random streams.
        before = ckpt["config"]["train"]
        if len(ckpt["rng"]) == d.world_size and (before["batch_size"], before["seq_len"]) == (tcfg.batch_size, tcfg.seq_len):
            stream.load_state_dict(ckpt["data_state"][d.rank])
            set_rng_state(ckpt["rng"][d.rank], device)
            carried = ckpt["hidden"][d.rank]
            hidden = None if carried is None else carried.to(device)
        else:
            say(
                f"warning: {last_path} was written by {len(ckpt['rng'])} process(es) with batch_size="
                f"{before['batch_size']}, seq_len={before['seq_len']}; with other settings the resume is not "
                "exact (the data is read from its start again, with a fresh hidden state and random streams)"
            )
        say(f"resumed {last_path} at step {step} (best validation loss so far {best_val:.4f})")

    if d.is_main:
        print(
            f"model: {model.num_parameters():,} parameters, {spec.num_layers} x {spec.hidden_size} GRU "
            f"({'nn.GRU' if spec.reset_after else 'seed equations'}), vocab {tokenizer.vocab_size}, device {device}"
            + (f", {d.world_size} processes" if d.enabled else "")
        )
    net = model
    if d.enabled:  # wrapped after any resume: DDP's first act is to copy rank 0's weights to every rank
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    saves = 0

    def save(result: EvalResult) -> None:
        nonlocal best_val, saved_step, saves
        states = all_gather(d, (stream.state_dict(), rng_state(device), None if hidden is None else hidden.detach().cpu()))
        is_best = result.nats_per_token < best_val
        best_val, saved_step, saves = min(best_val, result.nats_per_token), step, saves + 1
        if not d.is_main:
            return
        ckpt = {
            "model": model.state_dict(),
            "model_spec": spec.to_dict(),
            "tokenizer": tokenizer.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            # One entry per rank: its data position, random streams and carried (L, B, H) state.
            "data_state": [data for data, _, _ in states],
            "rng": [rng for _, rng, _ in states],
            "hidden": [h for _, _, h in states],
            "config": to_plain(cfg),
            "val_loss": result.nats_per_token,
            "best_val": best_val,
        }
        # best.pt before last.pt: killed in between, the resume starts from the older last.pt and
        # rewrites both; the other order would leave last.pt claiming a best that best.pt lacks.
        if is_best:
            atomic_save(ckpt, best_path)
        atomic_save(ckpt, last_path)
        if saves == kill_after_save:
            os.kill(os.getpid(), signal.SIGKILL)

    def validate() -> EvalResult:
        # The bare module, not DDP: evaluation must not join DDP's collectives.
        local = evaluate_loss(model, val_shard, separator, tcfg.eval_batch_size, tcfg.seq_len, device, autocast)
        total = all_reduce_sum(d, torch.tensor([local.nll, local.tokens], dtype=torch.float64, device=device))
        return EvalResult(float(total[0]), int(total[1]))

    net.train()
    tokens_per_step = tcfg.batch_size * tcfg.seq_len * d.world_size
    running_loss = torch.zeros((), device=device)
    running_steps, bad_steps = 0, 0
    last_log_time, last_log_step = time.perf_counter(), step
    start_time = time.perf_counter()
    tokens_per_s = 0.0
    bar = tqdm(total=tcfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True, disable=not d.is_main)
    stack.callback(bar.close)  # also on an error, which then starts on a line of its own
    while step < tcfg.max_steps:
        inputs, targets, reset = stream.next_batch()  # reset (B,): rows that start a new document or pass
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if hidden is None:
            hidden = model.init_hidden(tcfg.batch_size, device)
        elif reset.any():  # a CPU tensor: no device sync
            hidden = hidden.masked_fill(reset.to(device, non_blocking=True).view(1, -1, 1), 0.0)
        with autocast:
            logits, new_hidden = net(inputs, hidden)  # (B, T, V), (L, B, H)
            loss = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE  # padding after a document
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        # A non-finite loss makes a non-finite gradient norm. The norm is of the all-reduced
        # gradients, so under DDP every rank takes the same branch here.
        if not torch.isfinite(grad_norm):
            bad_steps += 1
            hidden = None  # the state it came from may be poisoned too
            say(f"step {step}: non-finite loss/gradient (loss {float(loss.detach()):.4g}); update skipped")
            if bad_steps >= tcfg.max_bad_steps:
                kept = f"the last good checkpoint {last_path} (step {saved_step}) is kept" if saved_step is not None else "no checkpoint was written"
                raise UserError(
                    f"training stopped after {bad_steps} non-finite steps in a row at step {step}; {kept}. "
                    f"Lower train.lr (now {tcfg.lr}) or train.grad_clip (now {tcfg.grad_clip})"
                )
            continue
        bad_steps = 0
        optimizer.step()
        scheduler.step()
        hidden = new_hidden.detach()  # carry the state, not its history (truncated BPTT)
        step += 1
        running_loss += loss.detach()
        running_steps += 1
        bar.update(1)

        at_eval = step % tcfg.eval_every == 0 or step == tcfg.max_steps
        # A log row at every evaluation too, so no logging window spans a checkpoint (exact resume).
        if at_eval or step % tcfg.log_every == 0:
            now = time.perf_counter()
            train_loss = float(all_reduce_sum(d, running_loss)) / (running_steps * d.world_size)
            tokens_per_s = (step - last_log_step) * tokens_per_step / (now - last_log_time)
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            if d.is_main:
                with metrics_path.open("a") as f:
                    row = {"step": step, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s}
                    f.write(json.dumps(row) + "\n")
            running_loss.zero_()
            running_steps, last_log_time, last_log_step = 0, now, step

        if at_eval:
            eval_start = time.perf_counter()
            result = validate()
            if not math.isfinite(result.nats_per_token):
                say(f"step {step}: validation loss is not finite; not saved, the last good checkpoint is kept")
                continue
            say(
                f"step {step}: val {result.nats_per_token:.4f} nats/token ({result.bits_per_token:.4f} bits/token)"
                f"{'  [best]' if result.nats_per_token < best_val else ''}"
            )
            if d.is_main:  # the row goes first: a checkpoint never lacks its row; resume trims later ones
                with metrics_path.open("a") as f:
                    f.write(json.dumps({"step": step, "val_loss": result.nats_per_token, "val_bits": result.bits_per_token}) + "\n")
            save(result)
            if d.is_main:
                write_loss_plot(metrics_path, run_dir / "loss.png")
            last_log_time += time.perf_counter() - eval_start  # evaluation is not training throughput
    bar.close()

    elapsed = time.perf_counter() - start_time
    if d.is_main:
        print(
            f"done: best validation loss {best_val:.4f} nats/token ({best_val / math.log(2):.4f} bits/token); "
            f"checkpoints in {run_dir}"
        )
    return {"run_dir": str(run_dir), "best_val": best_val, "step": step, "elapsed_s": elapsed, "tokens_per_s": tokens_per_s}


main = hydra_entry(train, "config")

if __name__ == "__main__":
    main()
