"""Training: a Trainer that reads top to bottom — set up (or resume), step, evaluate, save — and `train_run`."""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from generate.averaging import evaluated, make_average, restore_weights, weight_entries
from generate.checkpoint import card_progress, load_checkpoint, model_summary, training_card, with_digest
from generate.config import TrainRunConfig, split_changes, to_plain
from generate.data import IGNORE, load_corpus, split_for_eval, training_stream
from generate.distributed import (
    Dist,
    all_gather,
    all_reduce_sum,
    distributed_job,
    main_first,
    main_only,
)
from generate.errors import Interrupted, UserError
from generate.interrupts import StopRequests
from generate.model import GRULanguageModel, ModelSpec
from generate.optim import apply_settings, lr_at, make_optimizer, rng_state, set_rng_state
from generate.ranges import check_plain_name
from generate.run_folder import RunLock, remove_if_unused
from generate.runtime import resolve_device, use_threads
from generate.scoring import EvalResult, evaluate_loss
from generate.storage import atomic_save
from generate.training_log import trim_metrics, write_loss_plot
from generate.validate import (
    check_optimizer_state,
    check_shape,
    check_size,
    check_training_state,
    restore_part,
    restore_stream,
)


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


class Trainer:
    """One training run. Under torchrun every process builds one: each reads its own rows of the
    token stream, DDP averages gradients, and rank 0 alone writes checkpoints, metrics and the plot."""

    def __init__(self, run: TrainRunConfig, run_dir: Path, d: Dist, device: torch.device, stack: ExitStack):
        self.run, self.cfg, self.run_dir, self.d, self.device = run, run.train, Path(run_dir), d, device
        self.say = tqdm.write if d.is_main else (lambda _: None)
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        torch.manual_seed(self.cfg.seed)
        self.setup_data()  # first: a dataset error is the error the user sees, and it leaves no run folder
        main_only(d, lambda: self.lock(stack))
        self.setup_model()
        self.step, self.best_val, self.saved_step, self.hidden = 0, math.inf, None, None
        # For the model card: the command that trains this run (set by train_run), best step, wall time so far.
        self.recipe, self.best_step, self.wall_before, self.start_time = "", None, 0.0, time.perf_counter()
        self.last_val: float | None = None
        self.running_loss, self.running_steps = torch.zeros((), device=device), 0  # the log row being summed
        self.resume_hint = "the same command with train.resume=true"
        self.next_timed_save = math.inf
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
            check_size(self.spec)
            self.model = GRULanguageModel(self.spec).to(self.device)  # the same initial weights on every rank
        except ValueError as err:
            raise UserError(str(err)) from None
        except (RuntimeError, MemoryError) as err:  # an allocation the machine cannot make
            raise UserError(f"cannot allocate the model on {self.device} ({str(err).splitlines()[0][:120]}); "
                            "lower model.hidden_size or model.num_layers") from None
        if self.d.rank:
            torch.manual_seed(self.cfg.seed + self.d.rank)  # but each rank its own dropout masks
        self.average = make_average(self.model, self.cfg.ema_decay)  # the weights validation and saves use
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_at(step, self.cfg))
        use_bf16 = self.device.type == "cuda" and self.cfg.bf16
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    def read_resume(self) -> dict[str, Any]:
        """last.pt, checked against this run's model and data (rank 0, holding the lock)."""
        ckpt = load_checkpoint(self.last_path)
        check_training_state(ckpt, self.last_path, self.spec.to_dict(), self.tokenizer.to_dict(), self.tokenizer.learned)
        if changed := split_changes(ckpt["config"].get("dataset"), self.run.dataset):
            raise UserError(f"{self.last_path} was trained on other splits; add {' '.join(changed)} to resume it")
        trim_metrics(self.metrics_path, ckpt["step"])
        return ckpt

    def resume(self, ckpt: dict[str, Any]) -> None:
        """Restore weights, optimizer and schedule, and this rank's data position, state and random streams.

        Each part is checked as it is restored (a damaged one is one line naming it). The current
        train.* settings (lr, schedule, weight_decay, grad_clip, max_steps) apply from here on:
        the saved config then records what was used.
        """
        restore = partial(restore_part, self.last_path)
        restore_weights(self.model, self.average, ckpt, self.last_path, restore, self.say)
        self.best_step, self.wall_before = card_progress(ckpt)
        check_optimizer_state(ckpt["optimizer"], [p for g in self.optimizer.param_groups for p in g["params"]],
                              self.last_path)
        restore("optimizer state", lambda: self.optimizer.load_state_dict(ckpt["optimizer"]))
        restore("lr schedule", lambda: self.scheduler.load_state_dict(ckpt["scheduler"]))
        apply_settings(self.optimizer, self.scheduler, self.cfg)
        self.step, self.best_val, self.saved_step = ckpt["step"], float(ckpt["best_val"]), ckpt["step"]
        before, d = ckpt["config"]["train"], self.d
        same_layout = (before["batch_size"], before["seq_len"]) == (self.cfg.batch_size, self.cfg.seq_len)
        if len(ckpt["rng"]) == d.world_size and same_layout:
            restore("data position", lambda: restore_stream(self.stream, ckpt["data_state"][d.rank]))
            restore("random state", lambda: set_rng_state(ckpt["rng"][d.rank], self.device))
            carried = ckpt["hidden"][d.rank]
            shape = (self.spec.num_layers, self.cfg.batch_size, self.spec.hidden_size)
            restore("carried hidden state", lambda: check_shape(carried, shape))
            self.hidden = None if carried is None else carried.float().to(self.device)
            loss_sum, steps = ckpt.get("log_window", [(0.0, 0)] * d.world_size)[d.rank]
            self.running_loss.fill_(loss_sum)
            self.running_steps = steps
        else:
            self.say(
                f"warning: {self.last_path} was written by {len(ckpt['rng'])} process(es) with batch_size="
                f"{before['batch_size']}, seq_len={before['seq_len']}; with other settings the resume is not "
                "exact (the data is read from its start again, with a fresh hidden state and random streams)"
            )
        self.say(f"resumed {self.last_path} at step {self.step} (best validation loss so far {self.best_val:.4f})")

    # ---------------------------------------------------------------- the loop

    def fit(self) -> RunSummary:
        """Train to max_steps: a step, a log row every log_every steps, an evaluation and a save every eval_every.

        Ctrl-C or SIGTERM: last.pt is saved after the current step and the run stops (resumable);
        every train.save_every_minutes last.pt is saved too, so a crash loses at most that much.
        """
        cfg, d = self.cfg, self.d
        self.announce()
        self.net.train()
        tokens_per_step = cfg.batch_size * cfg.seq_len * d.world_size
        bad_steps = 0
        self.last_log_time, self.last_log_step, self.tokens_per_s = time.perf_counter(), self.step, 0.0
        start_time = self.start_time = time.perf_counter()
        self.schedule_timed_save()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True, disable=not d.is_main)
        try:
            with StopRequests(announce=d.is_main) as stop:
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
                    self.pause_if_asked(stop, at_eval)
        finally:
            bar.close()  # also on an error, which then starts on a line of its own
        elapsed = time.perf_counter() - start_time
        if d.is_main:
            best = self.best_path.resolve()
            print(
                f"done: best validation loss {self.best_val:.4f} nats/token ({self.best_val / math.log(2):.4f} "
                f"bits/token) at {best}\nsample it: python -m generate.sample checkpoint={best}"
            )
        return RunSummary(self.run_dir, self.best_val, self.step, elapsed, self.tokens_per_s)

    def schedule_timed_save(self) -> None:
        minutes = self.cfg.save_every_minutes
        self.next_timed_save = time.monotonic() + 60 * minutes if minutes > 0 else math.inf

    def pause_if_asked(self, stop: StopRequests, just_saved: bool) -> None:
        """Save last.pt when a signal asked to stop (then stop) or the timed save is due; every rank agrees."""
        flags = torch.tensor([stop.signum or 0, time.monotonic() >= self.next_timed_save], dtype=torch.float64)
        if self.d.enabled:  # a signal or a clock may reach one rank first: act together, or the collectives hang
            flags = all_reduce_sum(self.d, flags.to(self.device)).cpu()
        signum, due = stop.signum or int(flags[0]), bool(flags[1])  # another rank's signal: its number (or a sum)
        if signum and signum not in (signal.SIGINT, signal.SIGTERM):
            signum = signal.SIGTERM if signum % signal.SIGTERM == 0 else signal.SIGINT
        if not signum and not due:
            return
        if not just_saved:
            self.save(None)
        self.schedule_timed_save()
        if signum:
            self.say(f"stopped at step {self.step}; saved {self.last_path.resolve()}\nresume with: {self.resume_hint}")
            raise Interrupted(signum, explained=True)

    def announce(self) -> None:
        if self.d.is_main:
            print(f"model: {model_summary(self.model)}, vocab {self.tokenizer.vocab_size}, device {self.device}"
                  + (f", {self.d.world_size} processes" if self.d.enabled else ""))

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
        if self.average is not None:
            self.average.update_parameters(self.model)
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
            + (" (EMA weights)" if self.average else "") + ("  [best]" if result.nats_per_token < self.best_val else "")
        )
        # The row goes first: a checkpoint never lacks its row; resume trims later ones.
        self.append_metrics({"step": self.step, "val_loss": result.nats_per_token, "val_bits": result.bits_per_token,
                             "weights": "ema" if self.average else "raw"})  # which weights were scored and saved
        self.save(result)
        if self.d.is_main:
            write_loss_plot(self.metrics_path, self.run_dir / "loss.png")
        self.last_log_time += time.perf_counter() - eval_start  # evaluation is not training throughput

    def validate(self) -> EvalResult:
        # The bare module, not DDP: evaluation must not join DDP's collectives.
        local = evaluate_loss(
            evaluated(self.model, self.average), self.val_shard, self.separator, self.cfg.eval_batch_size,
            self.cfg.seq_len, self.device, self.autocast,
        )
        total = all_reduce_sum(self.d, torch.tensor([local.nll, local.tokens], dtype=torch.float64, device=self.device))
        return EvalResult(float(total[0]), int(total[1]))

    def save(self, result: EvalResult | None) -> None:
        """Write last.pt (and best.pt when this is the best so far) with everything an exact resume needs;
        without a result (Ctrl-C, the timed save) only last.pt, carrying the last validation loss."""
        hidden = None if self.hidden is None else self.hidden.detach().cpu()
        window = (float(self.running_loss), self.running_steps)
        states = all_gather(self.d, (self.stream.state_dict(), rng_state(self.device), hidden, window))
        is_best = result is not None and result.nats_per_token < self.best_val
        if result is not None:
            self.best_val, self.last_val = min(self.best_val, result.nats_per_token), result.nats_per_token
        self.saved_step, self.best_step = self.step, self.step if is_best else self.best_step
        if not self.d.is_main:
            return
        config, wall_s = to_plain(self.run), self.wall_before + time.perf_counter() - self.start_time
        ckpt = with_digest({
            **weight_entries(self.model, self.average),  # "model": the averaged weights when averaging
            "model_spec": self.spec.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            # One entry per rank: its data position, random streams and carried (L, B, H) state.
            "data_state": [state[0] for state in states],
            "rng": [state[1] for state in states],
            "hidden": [state[2] for state in states],
            "log_window": [state[3] for state in states],  # the train-loss row being summed, for an exact curve
            "config": config,
            "val_loss": self.last_val,
            "best_val": self.best_val,
            "card": training_card(config, self.model, self.tokenizer, recipe=self.recipe, best_val=self.best_val,
                                  best_step=self.best_step, wall_time_s=wall_s, device=self.device, processes=self.d.
                                  world_size, weights=f"ema {self.cfg.ema_decay:g}" if self.average else "raw"),
        })
        # best.pt before last.pt: killed in between, the resume starts from the older last.pt and
        # rewrites both; the other order would leave last.pt claiming a best that best.pt lacks.
        if is_best:
            atomic_save(ckpt, self.best_path)
        atomic_save(ckpt, self.last_path)


def train_run(run: TrainRunConfig, run_dir: str | Path | None = None, resume_hint: str = "",
              recipe: str = "") -> RunSummary:
    """Train as `run` says, into `run_dir` (default: checkpoints_dir/run_name; `recipe`: for the model card)."""
    check_plain_name("run_name", run.run_name)  # also when set after the config was built (the API)
    run_dir = Path(run_dir) if run_dir is not None else Path(run.checkpoints_dir) / run.run_name
    created = not run_dir.exists()
    with distributed_job(resolve_device(run.train.device), run.train.dist_timeout_minutes) as (d, device):
        try:
            with ExitStack() as stack:  # holds the run-folder lock
                trainer = Trainer(run, run_dir, d, device, stack)
                if resume_hint:
                    trainer.resume_hint = resume_hint
                trainer.recipe = recipe
                return trainer.fit()
        except BaseException:
            if created and d.is_main:
                remove_if_unused(run_dir)
            raise
