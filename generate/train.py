"""train(cfg): tokenize, build the model, run truncated-BPTT training, evaluate and checkpoint."""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from generate.checkpoint import atomic_save, load_checkpoint
from generate.config import to_plain
from generate.data import TokenStream, join_documents, load_corpus, split_for_eval
from generate.evaluate import EvalResult, evaluate_loss
from generate.model import GRULanguageModel, ModelSpec
from generate.runtime import UserError, hydra_entry, resolve_device


def run_dir_for(cfg: Any) -> Path:
    """checkpoints/<run_name>/, or one folder per job inside it for a Hydra multirun."""
    base = Path(cfg.checkpoints_dir) / cfg.run_name
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return base / (hydra_cfg.job.override_dirname or f"job{hydra_cfg.job.num}")
    except ValueError:  # not running under @hydra.main (tests, notebooks)
        pass
    return base


class RunLock:
    """An exclusive lock on a run folder, so two trainings never write the same checkpoints.

    flock is released by the kernel when the process dies (even by SIGKILL), so a crashed run
    never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.handle: Any = None

    def __enter__(self) -> "RunLock":
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
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()
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
        ax.plot(*zip(*train), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
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
    """On resume, drop metric rows written after the checkpoint, so the curve has no duplicates."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in keep))


def train(cfg: Any) -> dict[str, Any]:
    """Train a model as `cfg` (a TrainRunConfig) says; returns a summary of the run."""
    tcfg = cfg.train
    device = resolve_device(tcfg.device)
    torch.manual_seed(tcfg.seed)
    run_dir = run_dir_for(cfg)

    corpus = load_corpus(cfg.dataset)
    tokenizer = corpus.tokenizer
    separator = tokenizer.separator_id()
    stream = TokenStream(
        join_documents(corpus.splits["train"], separator), tcfg.batch_size, tcfg.seq_len, tcfg.seed
    )
    val_docs = split_for_eval(corpus.splits["val"], tcfg.eval_batch_size)
    if not val_docs:
        raise UserError(f"the validation split of {cfg.dataset.name} is empty; use a larger dataset")

    try:
        spec = ModelSpec.from_config(tokenizer.vocab_size, cfg.model)
        model = GRULanguageModel(spec).to(device)
    except ValueError as err:
        raise UserError(str(err)) from None
    optimizer = make_optimizer(model, tcfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, tcfg))
    use_bf16 = device.type == "cuda" and tcfg.bf16
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    with RunLock(run_dir):
        last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
        metrics_path = run_dir / "metrics.jsonl"
        step, best_val, hidden = 0, math.inf, None
        if tcfg.resume:
            if not last_path.is_file():
                raise UserError(f"train.resume=true but there is no {last_path} to resume from")
            ckpt = load_checkpoint(last_path)
            if ckpt["model_spec"] != spec.to_dict():
                raise UserError(
                    f"{last_path} holds a different model ({ckpt['model_spec']}); resume with the same model.* settings"
                )
            if ckpt["tokenizer"] != tokenizer.to_dict():
                raise UserError(f"{last_path} was trained on a different dataset; resume with the same dataset.* settings")
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            stream.load_state_dict(ckpt["data_state"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
            step, best_val = ckpt["step"], ckpt["best_val"]
            hidden = ckpt["hidden"].to(device) if ckpt.get("hidden") is not None else None
            _trim_metrics(metrics_path, step)
            print(f"resumed {last_path} at step {step} (best validation loss so far {best_val:.4f})")
        elif last_path.is_file():
            raise UserError(
                f"{last_path} already exists from an earlier run; add train.resume=true to continue it, "
                "or pick a new run_name=..."
            )

        print(
            f"model: {model.num_parameters():,} parameters, {spec.num_layers} x {spec.hidden_size} GRU "
            f"({'nn.GRU' if spec.reset_after else 'seed equations'}), vocab {tokenizer.vocab_size}, device {device}"
        )

        def save(result: EvalResult) -> None:
            nonlocal best_val
            ckpt = {
                "model": model.state_dict(),
                "model_spec": spec.to_dict(),
                "tokenizer": tokenizer.to_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "data_state": stream.state_dict(),
                "hidden": None if hidden is None else hidden.detach().cpu(),
                "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None},
                "config": to_plain(cfg),
                "val_loss": result.nats_per_token,
                "best_val": min(best_val, result.nats_per_token),
            }
            atomic_save(ckpt, last_path)
            if result.nats_per_token < best_val:
                best_val = result.nats_per_token
                atomic_save(ckpt, best_path)

        def validate() -> EvalResult:
            return evaluate_loss(model, val_docs, separator, tcfg.eval_batch_size, tcfg.seq_len, device, autocast)

        model.train()
        tokens_per_step = tcfg.batch_size * tcfg.seq_len
        running_loss = torch.zeros((), device=device)
        running_steps, bad_steps = 0, 0
        last_log_time, last_log_step = time.perf_counter(), step
        start_time = time.perf_counter()
        tokens_per_s = 0.0
        bar = tqdm(total=tcfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
        while step < tcfg.max_steps:
            inputs, targets, fresh = stream.next_batch()
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if fresh or hidden is None:
                hidden = model.init_hidden(tcfg.batch_size, device)
            with autocast:
                logits, new_hidden = model(inputs, hidden)  # (B, T, V), (L, B, H)
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            if not torch.isfinite(grad_norm):
                # Skip the update, drop the state it came from, and never checkpoint it.
                bad_steps += 1
                hidden = None
                tqdm.write(f"step {step}: non-finite loss/gradient ({float(loss):.4g}); update skipped")
                if bad_steps >= tcfg.max_bad_steps:
                    raise UserError(
                        f"training stopped after {bad_steps} non-finite steps in a row at step {step}; "
                        f"the last good checkpoint is kept. Lower train.lr (now {tcfg.lr}) or train.grad_clip"
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

            if step % tcfg.log_every == 0 or step == tcfg.max_steps:
                now = time.perf_counter()
                train_loss = float(running_loss) / running_steps
                tokens_per_s = (step - last_log_step) * tokens_per_step / (now - last_log_time)
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
                with metrics_path.open("a") as f:
                    f.write(
                        json.dumps(
                            {"step": step, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s}
                        )
                        + "\n"
                    )
                running_loss.zero_()
                running_steps, last_log_time, last_log_step = 0, now, step

            if step % tcfg.eval_every == 0 or step == tcfg.max_steps:
                eval_start = time.perf_counter()
                result = validate()
                if not math.isfinite(result.nats_per_token):
                    tqdm.write(f"step {step}: validation loss is not finite; last good checkpoint kept")
                    continue
                save(result)
                tqdm.write(
                    f"step {step}: val {result.nats_per_token:.4f} nats/token ({result.bits_per_token:.4f} bits/token)"
                    f"{'  [best]' if result.nats_per_token <= best_val else ''}"
                )
                with metrics_path.open("a") as f:
                    f.write(json.dumps({"step": step, "val_loss": result.nats_per_token, "val_bits": result.bits_per_token}) + "\n")
                write_loss_plot(metrics_path, run_dir / "loss.png")
                last_log_time += time.perf_counter() - eval_start  # evaluation is not training throughput
        bar.close()

    elapsed = time.perf_counter() - start_time
    print(f"done: best validation loss {best_val:.4f} nats/token ({best_val / math.log(2):.4f} bits/token); "
          f"checkpoints in {run_dir}")
    return {"run_dir": str(run_dir), "best_val": best_val, "step": step, "elapsed_s": elapsed, "tokens_per_s": tokens_per_s}


main = hydra_entry(train, "config")

if __name__ == "__main__":
    main()
