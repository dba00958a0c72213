"""What each regularizer costs: training tokens/s (64 x 64 batches, 2 x 512), evaluation and batch-1 sampling tokens/s.

Every variant is the default small model (128-wide embedding, 2 x 512 GRU, reset-after form, a 65-token
vocabulary as tiny Shakespeare's, dropout 0.1) with one regularizer on, or all of them; `--model 112s` takes
the 112-second recipe's model and batches instead (64-wide embedding, 2 x 256, 32 x 64, dropout 0, so
variational_dropout changes nothing there). All variants of a table run in the same interleaved rounds,
so their ratios to the baseline are what to read (the machine is shared).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from common import bare_loop, clock, command_line, interleave, median, parse_args, spread, write_results

from generate.model import GRULanguageModel, ModelSpec

VOCAB, LAYERS, SEQ = 65, 2, 64
MODELS = {"default": dict(batch=64, embed=128, hidden=512, dropout=0.1),  # conf/model/small.yaml, conf/train/default.yaml
          "112s": dict(batch=32, embed=64, hidden=256, dropout=0.0)}  # conf/experiment/shakespeare_112s.yaml
SETTINGS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "embedding_dropout=0.1": {"embedding_dropout": 0.1},
    "variational_dropout": {"variational_dropout": True},
    "weight_drop=0.2": {"weight_drop": 0.2},
    "zoneout=0.1": {"zoneout": 0.1},
    "layer_norm": {"layer_norm": True},
    "all five": {"embedding_dropout": 0.1, "variational_dropout": True, "weight_drop": 0.2, "zoneout": 0.1,
                 "layer_norm": True},
}


def model_with(shape: dict[str, Any], settings: dict[str, Any]) -> GRULanguageModel:
    torch.manual_seed(0)
    return GRULanguageModel(ModelSpec(VOCAB, shape["embed"], shape["hidden"], LAYERS, dropout=shape["dropout"],
                                      reset_after=True, **settings))


def evaluation(model: GRULanguageModel, batch: int, batches: int) -> Callable[[], float]:
    """A variant: seconds per (batch x SEQ) tokens of a no-grad forward in eval mode (as validation runs)."""
    model.eval()
    tokens = torch.randint(0, VOCAB, (batch, SEQ))
    now = clock()

    def run() -> float:
        with torch.no_grad():
            start = now()
            for _ in range(batches):
                model(tokens)
            return (now() - start) / batches

    return run


def sampling(model: GRULanguageModel, tokens: int) -> Callable[[], float]:
    """A variant: seconds per token of batch-1 sampling (model.generate: native.c where it applies)."""
    model.eval()
    now = clock()

    def run() -> float:
        start = now()
        model.generate([1, 2, 3], tokens, temperature=1.0, seed=0)
        return (now() - start) / tokens

    return run


def table(results: dict[str, list[float]], unit_tokens: int) -> list[dict[str, Any]]:
    base = median(results["baseline"])
    return [{"variant": name, "tokens/s": unit_tokens / median(times), "vs baseline": base / median(times),
             "s per unit [min-max]": spread(times)} for name, times in results.items()]


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--model", default="default", choices=list(MODELS)))
    shape = MODELS[args.model]
    batch, hidden = shape["batch"], shape["hidden"]
    repeats, steps = (1, 1) if args.quick else (args.repeats, 2)
    train_variants = {name: bare_loop(model_with(shape, s), steps, torch.device("cpu"), batch, SEQ, VOCAB)
                      for name, s in SETTINGS.items()}
    print(f"training: {repeats} interleaved rounds of {steps} steps ...", flush=True)
    trained = interleave(train_variants, repeats)
    eval_variants = {name: evaluation(model_with(shape, SETTINGS[name]), batch, 2)
                     for name in ("baseline", "zoneout=0.1", "layer_norm")}
    print("evaluation ...", flush=True)
    evaluated = interleave(eval_variants, repeats)
    sample_variants = {name: sampling(model_with(shape, SETTINGS[name]), 100 if args.quick else 400)
                       for name in ("baseline", "zoneout=0.1", "layer_norm")}
    print("sampling ...", flush=True)
    sampled = interleave(sample_variants, repeats)
    columns = ["variant", "tokens/s", "vs baseline", "s per unit [min-max]"]
    write_results(
        "regularizers" if args.model == "default" else f"regularizers-{args.model}",
        command_line(),
        {
            f"training, {batch} x {SEQ} tokens a step, {LAYERS} x {hidden} (s per unit = per step)":
                (table(trained, batch * SEQ), columns),
            f"evaluation (no grad, eval mode), {batch} x {SEQ} (s per unit = per batch)":
                (table(evaluated, batch * SEQ), columns),
            "batch-1 sampling (model.generate, 400 tokens; s per unit = per token)": (table(sampled, 1), columns),
        },
        extra={"notes": [
            "training: forward, loss, backward, clip, AdamW (bench/common.py bare_loop); the trainer adds the same "
            "fixed overhead to every variant.",
            "training: layer_norm runs an autograd-recorded loop over time (generate/regularize.py); the other "
            "four keep the fused recurrence with its hand-written backward (zoneout's masks go into it). "
            "Evaluation: layer_norm runs that loop without autograd; zoneout runs the fused no-grad loop with its update gate rescaled.",
            "sampling: all three run native.c (zoneout is a rescaled update gate; native.c has the "
            "layer-normalized cell).",
        ]},
    )


if __name__ == "__main__":
    main()
