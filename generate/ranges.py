"""The valid range of every numeric setting, and the one function that checks values against them."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

from generate.errors import UserError

MIN_TEMPERATURE = 0.01  # below it logits / T overflow float32 (inf - inf = nan); 0 means greedy
MAX_PARAMETERS = 2**31  # ~8.6 GB of float32 weights: the largest model this toolkit builds or loads
MAX_MUSIC_TOKENS = 100_000  # a music sample is decoded and rendered whole: ~3.5 hours at 120 qpm
BIG = 10**12  # "no practical limit" for counts of steps


class Between(NamedTuple):
    """low <= value <= high (low excluded when low_open); floats must be finite."""

    low: float
    high: float
    low_open: bool = False
    note: str = ""  # what a special value means, e.g. "(0 turns it off)"

    def admits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return (self.low < value if self.low_open else self.low <= value) and value <= self.high

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def describe(self) -> str:
        low = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:,}"
        kind = "an integer" if self.is_int else "a finite number"
        return f"{kind} {low} and at most {self.high:,}" + (f" {self.note}" if self.note else "")


DATASET = {
    "val_fraction": Between(0.0, 1.0, note="(a fraction of the data)"),
    "test_fraction": Between(0.0, 1.0, note="(a fraction of the data)"),
    "steps_per_quarter": Between(1, 96),
    "min_pitch": Between(0, 127),
    "max_pitch": Between(0, 127),
    "split_silence_quarters": Between(0.0, 1e6, low_open=True),
    "min_melody_steps": Between(0, 10**6),
    "transpose_range": Between(0, 127, note="(semitones)"),
    "num_workers": Between(0, 1024, note="(0 = one per CPU core)"),
    "max_files": Between(0, BIG, note="(0 = no limit)"),
}
TIME_STRETCH = Between(0.5, 2.0, note="(each dataset.time_stretch factor; 1.0 is the piece as played)")
MODEL = {
    "embedding_size": Between(1, 16384),
    "hidden_size": Between(1, 16384),
    "num_layers": Between(1, 64),
    "dropout": Between(0.0, 0.999, note="(a probability)"),
    "embedding_dropout": Between(0.0, 0.999, note="(a probability)"),
    "weight_drop": Between(0.0, 0.999, note="(a probability)"),
    "zoneout": Between(0.0, 0.999, note="(a probability)"),
}
TRAIN = {
    "max_steps": Between(1, BIG),
    "batch_size": Between(1, 65536),
    "seq_len": Between(1, 10**6),
    "lr": Between(0.0, sys.float_info.max, low_open=True),  # absurd values diverge and stop (max_bad_steps)
    "min_lr_ratio": Between(0.0, 1.0),
    "warmup_steps": Between(0, BIG),
    "weight_decay": Between(0.0, 1000.0),
    "grad_clip": Between(0.0, 1e9, low_open=True),
    "seed": Between(0, 2**63 - 1),
    "eval_every": Between(1, BIG),
    "eval_batch_size": Between(1, 65536),
    "log_every": Between(1, BIG),
    "max_bad_steps": Between(1, BIG),
    "dist_timeout_minutes": Between(0.0, 1440.0, low_open=True),
    "save_every_minutes": Between(0.0, 10**6, note="(0 = only at evaluations)"),
    "eval_tokens": Between(0, BIG, note="(0 = the whole split)"),
    "threads": Between(0, 1024, note="(0 = torch's default)"),
    "ema_decay": Between(0.0, 0.999999, note="(0 turns it off)"),
}
SAMPLING = {
    "temperature": Between(0.0, 100.0, note=f"(0 = greedy, else at least {MIN_TEMPERATURE})"),
    "top_k": Between(0, 2**31 - 1, note="(0 turns it off)"),
    "top_p": Between(0.0, 1.0, low_open=True, note="(1.0 turns it off)"),
    "length": Between(1, 10**9),
    "num_samples": Between(1, 4096),
    "seed": Between(0, 2**63 - 1),
    "beam_size": Between(1, 256),
    "qpm": Between(0.0, 1000.0, low_open=True, note="(quarter notes per minute)"),
    "threads": Between(0, 1024, note="(0 = torch's default)"),
}
EVALUATE = {"batch_size": Between(1, 65536), "seq_len": Between(1, 10**6), "threads": Between(0, 1024),
            "max_tokens": Between(0, 10**12, note="(0 = the whole split)"),
            "transpositions": Between(0, 12, note="(0 = the model alone)")}


def range_problems(values: Mapping[str, Any], ranges: Mapping[str, Between], prefix: str = "") -> list[str]:
    """One phrase per value outside its range: `prefix+key=value must be ...`. Keys absent from values are skipped."""
    problems = []
    for key, between in ranges.items():
        if key not in values or values[key] is None:
            continue
        value = values[key]
        if not between.admits(value):
            problems.append(f"{prefix}{key}={value} must be {between.describe()}")
    temperature = values.get("temperature") if "temperature" in ranges else None
    if temperature is not None and ranges["temperature"].admits(temperature) and 0 < temperature < MIN_TEMPERATURE:
        problems.append(f"{prefix}temperature={temperature} must be 0 (greedy) or at least {MIN_TEMPERATURE}")
    return problems


def check(values: Mapping[str, Any], ranges: Mapping[str, Between], prefix: str = "", extra: list[str] | None = None) -> None:
    """Raise one UserError listing every value outside its range (and any `extra` problems found by the caller)."""
    problems = range_problems(values, ranges, prefix) + (extra or [])
    if problems:
        raise UserError("; ".join(problems))


def stretch_problems(factors: Any, tokenizer: Any) -> list[str]:
    """What is wrong with dataset.time_stretch: each factor in range, and only for the events tokenizer."""
    factors = list(factors)
    if factors and str(getattr(tokenizer, "value", tokenizer)) != "events":
        return [f"dataset.time_stretch={factors} scales performance times: it needs dataset.tokenizer=events "
                "(a grid tokenizer would round the stretch away); remove it or set dataset.time_stretch=[]"]
    return [f"dataset.time_stretch factor {f} must be {TIME_STRETCH.describe()}" for f in factors
            if not TIME_STRETCH.admits(f)]


def check_plain_name(key: str, value: str) -> None:
    """A name that becomes one folder or file name: no separators, no `..`, not empty."""
    if value.startswith("${"):  # an interpolation not yet resolved (the dataclass default)
        return
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value or value.startswith("~"):
        raise UserError(
            f"{key}={value!r} must be a plain name (no '/', no '..'); to put runs elsewhere set checkpoints_dir=FOLDER"
        )
