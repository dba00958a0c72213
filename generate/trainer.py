"""Training: a Trainer that reads top to bottom — set up (or resume), step, evaluate, save — and `train_run`."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from generate.checkpoint import load_checkpoint
from generate.config import TrainRunConfig, to_plain
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
from generate.errors import UserError
from generate.model import GRULanguageModel, ModelSpec
from generate.runtime import resolve_device, use_threads
from generate.scoring import EvalResult, evaluate_loss
from generate.storage import atomic_save, remove_stale_temp_files
from generate.training_log import trim_metrics, write_loss_plot


@dataclass
class RunSummary:
    """What a finished training run reports."""

    run_dir: Path
    best_val: float
    step: int
    elapsed_s: float
    tokens_per_s: float

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"


class RunLock:
    """An exclusive lock on a run folder, so two trainings never write the same checkpoints.

    filelock takes an OS lock (flock on Unix, msvcrt on Windows) that the kernel releases when the
    process dies, even by SIGKILL, so a crashed run never leaves a stale lock behind. Who holds it is
    written beside it, so a refused run can say which process to wait for.
    """

    def __init__(self, run_dir: Path):
        self.lock = FileLock(run_dir / ".lock", timeout=0)
        self.owner = run_dir / ".lock.owner"

    def __enter__(self) -> RunLock:
        self.owner.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            holder = self.owner.read_text().strip() if self.owner.is_file() else "another process"
            raise UserError(
                f"{self.owner.parent} is in use by a training run ({holder}); wait for it to finish "
                "or choose another run_name=..."
            ) from None
        self.owner.write_text(f"pid {os.getpid()} on {socket.gethostname()}")
        # Saves killed mid-write (SIGKILL, power loss) leave temp files; holding the lock, they are ours to delete.
        remove_stale_temp_files(self.owner.parent)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.owner.unlink(missing_ok=True)
        self.lock.release()


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


def rng_state(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


RESUME_KEYS = ("optimizer", "scheduler", "step", "best_val", "data_state", "rng", "hidden", "config")


class Trainer:
    """One training run. Under torchrun every process builds one: each reads its own rows of the
    token stream, DDP averages gradients, and rank 0 alone writes checkpoints, metrics and the plot."""

    def __init__(self, run: TrainRunConfig, run_dir: Path, d: Dist, device: torch.device, stack: ExitStack):
        self.run, self.cfg, self.run_dir, self.d, self.device = run, run.train, Path(run_dir), d, device
        self.say = tqdm.write if d.is_main else (lambda _: None)
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        torch.manual_seed(self.cfg.seed)
        main_only(d, lambda: self.lock(stack))
        self.setup_data()
        self.setup_model()
        self.step, self.best_val, self.saved_step, self.hidden = 0, math.inf, None, None
        if self.cfg.resume:
            self.resume(main_only(d, self.read_resume))
        self.net: torch.nn.Module = self.model
        if d.enabled:  # wrapped after any resume: DDP's first act is to copy rank 0's weights to every rank
            self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)

    # ---------------------------------------------------------------- setup

    def lock(self, stack: ExitStack) -> None:
        """Lock the run folder until `stack` closes, and check that it holds what the run expects (rank 0)."""
        stack.enter_context(RunLock(self.run_dir))
        if self.cfg.resume and not self.last_path.is_file():
            raise UserError(f"train.resume=true but there is no {self.last_path} to resume from")
        if not self.cfg.resume and self.last_path.is_file():
            raise UserError(
                f"{self.last_path} already exists from an earlier run; add train.resume=true to continue it, "
                "or pick a new run_name=..."
            )
        if not self.cfg.resume:  # rows of a run that died before its first last.pt: not this run's curve
            trim_metrics(self.metrics_path, 0)

    def setup_data(self) -> None:
        d, cfg = self.d, self.cfg
        use_threads(cfg.threads)
        corpus = main_first(d, lambda: load_corpus(self.run.dataset, verbose=d.is_main))  # rank 0 fills the cache
        self.tokenizer = corpus.tokenizer
        self.separator = self.tokenizer.separator_id()
        self.stream = training_stream(
            corpus.splits["train"], self.separator, cfg.batch_size, cfg.seq_len, cfg.seed, d.rank, d.world_size
        )
        # A bounded, fixed sample of the validation split (train.eval_tokens), so each evaluation takes seconds.
        val_docs = split_for_eval(corpus.splits["val"], cfg.eval_batch_size, cfg.eval_tokens)
        if not val_docs:
            raise UserError(f"the validation split of {self.run.dataset.name} is empty; use a larger dataset")
        self.val_shard = val_docs[d.rank :: d.world_size]  # each rank scores its share; the sums are all-reduced

    def setup_model(self) -> None:
        try:
            self.spec = ModelSpec.from_config(self.tokenizer.vocab_size, self.run.model)
            self.model = GRULanguageModel(self.spec).to(self.device)  # the same initial weights on every rank
        except ValueError as err:
            raise UserError(str(err)) from None
        if self.d.rank:
            torch.manual_seed(self.cfg.seed + self.d.rank)  # but each rank its own dropout masks
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_at(step, self.cfg))
        use_bf16 = self.device.type == "cuda" and self.cfg.bf16
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    def read_resume(self) -> dict[str, Any]:
        """last.pt, checked against this run's model and data (rank 0, holding the lock)."""
        ckpt = load_checkpoint(self.last_path)
        missing = [key for key in RESUME_KEYS if key not in ckpt]
        if missing or not isinstance(ckpt["rng"], list):
            raise UserError(
                f"{self.last_path} holds a model but not the training state to resume from "
                f"({', '.join(missing) or 'per-process state'} missing); start a new run_name=... "
                "(sample and evaluate can still use this file)"
            )
        if ckpt["model_spec"] != self.spec.to_dict():
            raise UserError(
                f"{self.last_path} holds a different model ({ckpt['model_spec']}); resume with the same model.* settings"
            )
        if ckpt["tokenizer"] != self.tokenizer.to_dict():
            raise UserError(f"{self.last_path} was trained on a different dataset; resume with the same dataset.* settings")
        trim_metrics(self.metrics_path, ckpt["step"])
        return ckpt

    def resume(self, ckpt: dict[str, Any]) -> None:
        """Restore weights, optimizer and schedule, and this rank's data position, state and random streams."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.best_val, self.saved_step = ckpt["step"], ckpt["best_val"], ckpt["step"]
        before, d = ckpt["config"]["train"], self.d
        same_layout = (before["batch_size"], before["seq_len"]) == (self.cfg.batch_size, self.cfg.seq_len)
        if len(ckpt["rng"]) == d.world_size and same_layout:
            self.stream.load_state_dict(ckpt["data_state"][d.rank])
            set_rng_state(ckpt["rng"][d.rank], self.device)
            carried = ckpt["hidden"][d.rank]
            self.hidden = None if carried is None else carried.to(self.device)
        else:
            self.say(
                f"warning: {self.last_path} was written by {len(ckpt['rng'])} process(es) with batch_size="
                f"{before['batch_size']}, seq_len={before['seq_len']}; with other settings the resume is not "
                "exact (the data is read from its start again, with a fresh hidden state and random streams)"
            )
        self.say(f"resumed {self.last_path} at step {self.step} (best validation loss so far {self.best_val:.4f})")

    # ---------------------------------------------------------------- the loop

    def fit(self) -> RunSummary:
        """Train to max_steps: a step, a log row every log_every steps, an evaluation and a save every eval_every."""
        cfg, d = self.cfg, self.d
        self.announce()
        self.net.train()
        tokens_per_step = cfg.batch_size * cfg.seq_len * d.world_size
        self.running_loss, self.running_steps, bad_steps = torch.zeros((), device=self.device), 0, 0
        self.last_log_time, self.last_log_step, self.tokens_per_s = time.perf_counter(), self.step, 0.0
        start_time = time.perf_counter()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True, disable=not d.is_main)
        try:
            while self.step < cfg.max_steps:
                if not self.train_step():
                    bad_steps += 1
                    self.check_bad_steps(bad_steps)
                    continue
                bad_steps = 0
                bar.update(1)
                at_eval = self.step % cfg.eval_every == 0 or self.step == cfg.max_steps
                # A log row at every evaluation too, so no logging window spans a checkpoint (exact resume).
                if at_eval or self.step % cfg.log_every == 0:
                    bar.set_postfix(self.log_progress(tokens_per_step))
                if at_eval:
                    self.evaluate_and_save()
        finally:
            bar.close()  # also on an error, which then starts on a line of its own
        elapsed = time.perf_counter() - start_time
        if d.is_main:
            print(
                f"done: best validation loss {self.best_val:.4f} nats/token ({self.best_val / math.log(2):.4f} "
                f"bits/token); checkpoints in {self.run_dir}"
            )
        return RunSummary(self.run_dir, self.best_val, self.step, elapsed, self.tokens_per_s)

    def announce(self) -> None:
        if self.d.is_main:
            spec = self.spec
            print(
                f"model: {self.model.num_parameters():,} parameters, {spec.num_layers} x {spec.hidden_size} GRU "
                f"({'nn.GRU' if spec.reset_after else 'seed equations'}), vocab {self.tokenizer.vocab_size}, "
                f"device {self.device}" + (f", {self.d.world_size} processes" if self.d.enabled else "")
            )

    def train_step(self) -> bool:
        """One optimizer step on the next batch; False (nothing updated) when the loss is not finite."""
        inputs, targets, reset = self.stream.next_batch()  # reset (B,): rows that start a new document or pass
        inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
        if self.hidden is None:
            self.hidden = self.model.init_hidden(self.cfg.batch_size, self.device)
        elif reset.any():  # a CPU tensor: no device sync
            self.hidden = self.hidden.masked_fill(reset.to(self.device, non_blocking=True).view(1, -1, 1), 0.0)
        with self.autocast:
            logits, new_hidden = self.net(inputs, self.hidden)  # (B, T, V), (L, B, H)
            loss = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE  # padding after a document
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        # A non-finite loss makes a non-finite gradient norm. The norm is of the all-reduced
        # gradients, so under DDP every rank takes the same branch here.
        if not torch.isfinite(grad_norm):
            self.hidden = None  # the state it came from may be poisoned too
            self.say(f"step {self.step}: non-finite loss/gradient (loss {float(loss.detach()):.4g}); update skipped")
            return False
        self.optimizer.step()
        self.scheduler.step()
        self.hidden = new_hidden.detach()  # carry the state, not its history (truncated BPTT)
        self.step += 1
        self.running_loss += loss.detach()
        self.running_steps += 1
        return True

    def check_bad_steps(self, bad_steps: int) -> None:
        if bad_steps >= self.cfg.max_bad_steps:
            kept = (
                f"the last good checkpoint {self.last_path} (step {self.saved_step}) is kept"
                if self.saved_step is not None else "no checkpoint was written"
            )
            raise UserError(
                f"training stopped after {bad_steps} non-finite steps in a row at step {self.step}; {kept}. "
                f"Lower train.lr (now {self.cfg.lr}) or train.grad_clip (now {self.cfg.grad_clip})"
            )

    def log_progress(self, tokens_per_step: int) -> dict[str, str]:
        """Append a metrics row (mean train loss since the last row, lr, tokens/s); → the progress bar's postfix."""
        now = time.perf_counter()
        train_loss = float(all_reduce_sum(self.d, self.running_loss)) / (self.running_steps * self.d.world_size)
        self.tokens_per_s = (self.step - self.last_log_step) * tokens_per_step / (now - self.last_log_time)
        lr = self.scheduler.get_last_lr()[0]
        self.append_metrics({"step": self.step, "train_loss": train_loss, "lr": lr, "tokens_per_s": self.tokens_per_s})
        self.running_loss.zero_()
        self.running_steps, self.last_log_time, self.last_log_step = 0, now, self.step
        return {"loss": f"{train_loss:.3f}", "tok_s": f"{self.tokens_per_s:,.0f}"}

    def append_metrics(self, row: dict[str, Any]) -> None:
        if self.d.is_main:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def evaluate_and_save(self) -> None:
        eval_start = time.perf_counter()
        result = self.validate()
        if not math.isfinite(result.nats_per_token):
            self.say(f"step {self.step}: validation loss is not finite; not saved, the last good checkpoint is kept")
            return
        self.say(
            f"step {self.step}: val {result.nats_per_token:.4f} nats/token ({result.bits_per_token:.4f} bits/token)"
            f"{'  [best]' if result.nats_per_token < self.best_val else ''}"
        )
        # The row goes first: a checkpoint never lacks its row; resume trims later ones.
        self.append_metrics({"step": self.step, "val_loss": result.nats_per_token, "val_bits": result.bits_per_token})
        self.save(result)
        if self.d.is_main:
            write_loss_plot(self.metrics_path, self.run_dir / "loss.png")
        self.last_log_time += time.perf_counter() - eval_start  # evaluation is not training throughput

    def validate(self) -> EvalResult:
        # The bare module, not DDP: evaluation must not join DDP's collectives.
        local = evaluate_loss(
            self.model, self.val_shard, self.separator, self.cfg.eval_batch_size, self.cfg.seq_len, self.device,
            self.autocast,
        )
        total = all_reduce_sum(self.d, torch.tensor([local.nll, local.tokens], dtype=torch.float64, device=self.device))
        return EvalResult(float(total[0]), int(total[1]))

    def save(self, result: EvalResult) -> None:
        """Write last.pt (and best.pt when this is the best so far) with everything an exact resume needs."""
        hidden = None if self.hidden is None else self.hidden.detach().cpu()
        states = all_gather(self.d, (self.stream.state_dict(), rng_state(self.device), hidden))
        is_best = result.nats_per_token < self.best_val
        self.best_val, self.saved_step = min(self.best_val, result.nats_per_token), self.step
        if not self.d.is_main:
            return
        ckpt = {
            "model": self.model.state_dict(),
            "model_spec": self.spec.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            # One entry per rank: its data position, random streams and carried (L, B, H) state.
            "data_state": [data for data, _, _ in states],
            "rng": [rng for _, rng, _ in states],
            "hidden": [h for _, _, h in states],
            "config": to_plain(self.run),
            "val_loss": result.nats_per_token,
            "best_val": self.best_val,
        }
        # best.pt before last.pt: killed in between, the resume starts from the older last.pt and
        # rewrites both; the other order would leave last.pt claiming a best that best.pt lacks.
        if is_best:
            atomic_save(ckpt, self.best_path)
        atomic_save(ckpt, self.last_path)


def train_run(run: TrainRunConfig, run_dir: str | Path | None = None) -> RunSummary:
    """Train as `run` says, into `run_dir` (default: checkpoints_dir/run_name); returns the summary."""
    run_dir = Path(run_dir) if run_dir is not None else Path(run.checkpoints_dir) / run.run_name
    d, device = init_distributed(resolve_device(run.train.device))
    try:
        with ExitStack() as stack:  # holds the run-folder lock
            return Trainer(run, run_dir, d, device, stack).fit()
    finally:
        close_distributed(d)
