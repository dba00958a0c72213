"""Small-op measurements behind design choices: tanh forms by size, matrix-vector layouts, fresh-buffer page faults."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from common import command_line, interleave, median, parse_args, write_results

from generate.recurrence import tanh_


def per_call(fn: Callable[[], object], calls: int) -> Callable[[], float]:
    """A variant: seconds per call of fn, over `calls` calls."""

    def run() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls

    return run


def gemv_variants(hidden: int) -> dict[str, Callable[[], float]]:
    """Batch-1 (1 x H) @ (H x 3H) with the weight in nn.GRU's layout and in the one Stepper keeps."""
    h, bias = torch.randn(1, hidden), torch.randn(3 * hidden)
    weight = torch.randn(3 * hidden, hidden)  # nn.GRU's layout: (3H, H)
    weight_t = weight.t().contiguous()  # (H, 3H): what Stepper keeps
    out = torch.empty(1, 3 * hidden)
    return {
        "addmm(h, W.t()) (nn.GRU layout)": per_call(lambda: torch.addmm(bias, h, weight.t(), out=out), 500),
        "addmm(h, W^T contiguous) (Stepper)": per_call(lambda: torch.addmm(bias, h, weight_t, out=out), 500),
        "addmv(W, h)": per_call(lambda: torch.addmv(bias, weight, h[0], out=out[0]), 500),
    }


def compile_step_rows(repeats: int) -> list[dict[str, object]]:
    """Batch-1 sampling step, 2 x 256 nn.GRU form: Stepper.step vs the same math as a torch.compile'd function."""
    import warnings

    from generate.model import GRULanguageModel, ModelSpec, Stepper

    torch.manual_seed(0)
    model = GRULanguageModel(ModelSpec(65, 128, 256, 2, reset_after=True)).eval()
    hidden = 256
    with torch.inference_mode():
        stepper = Stepper(model, model.init_hidden(1))
        (bias0, _, w_hh0_t, b_hn0), (bias1, w_ih1_t, w_hh1_t, b_hn1) = stepper.layers

        def step(tok: torch.Tensor, h0: torch.Tensor, h1: torch.Tensor) -> tuple[torch.Tensor, ...]:
            states = []
            for gi_from, h, w_hh_t, b_hn3 in ((None, h0, w_hh0_t, b_hn0), ((bias1, w_ih1_t), h1, w_hh1_t, b_hn1)):
                gi = stepper.table[tok] if gi_from is None else torch.addmm(gi_from[0], states[-1], gi_from[1])
                gh = torch.addmm(b_hn3, h, w_hh_t)
                rz = torch.sigmoid(gi[:, : 2 * hidden] + gh[:, : 2 * hidden])
                n = torch.tanh(gi[:, 2 * hidden :] + rz[:, :hidden] * gh[:, 2 * hidden :])
                states.append(n + rz[:, hidden:] * (h - n))
            return torch.addmm(stepper.head_b, states[-1], stepper.head_w_t), *states

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = torch.compile(step, dynamic=False)
            tok, h0, h1 = torch.zeros(1, dtype=torch.long), stepper.hidden[0].clone(), stepper.hidden[1].clone()
            start = time.perf_counter()
            compiled(tok, h0, h1)
            compile_s = time.perf_counter() - start
            results = interleave(
                {"Stepper.step (ours)": per_call(lambda: stepper.step(tok), 1000),
                 "the same step as a plain function": per_call(lambda: step(tok, h0, h1), 1000),
                 "that function, torch.compile'd": per_call(lambda: compiled(tok, h0, h1), 1000)},
                repeats,
            )
    return [{"batch-1 step (2 x 256)": name, "µs": median(times) * 1e6,
             "first call s": compile_s if "compile" in name else None} for name, times in results.items()]


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--compile-step", action="store_true", help="also time a torch.compile'd sampling step"))
    repeats = max(3, args.repeats)
    tanh_rows = []
    for size in (256, 1024, 4096, 16384, 32768, 65536):
        x, y = torch.randn(size), torch.empty(size)
        results = interleave(
            {"copy + tensor.tanh_()": per_call(lambda x=x, y=y: y.copy_(x).tanh_(), 500),
             "copy + recurrence.tanh_ (2σ(2x) − 1)": per_call(lambda x=x, y=y: tanh_(y.copy_(x)), 500),
             "copy only": per_call(lambda x=x, y=y: y.copy_(x), 500)},
            repeats,
        )
        copy = median(results["copy only"])
        plain, ours = median(results["copy + tensor.tanh_()"]) - copy, median(results["copy + recurrence.tanh_ (2σ(2x) − 1)"]) - copy
        tanh_rows.append({"elements": size, "tensor.tanh_ µs": plain * 1e6, "2σ(2x) − 1 µs": ours * 1e6, "speed-up": plain / ours})

    gemv_rows = []
    for hidden in (256, 512):
        results = interleave(gemv_variants(hidden), repeats)
        for name, times in results.items():
            t = median(times)
            gemv_rows.append({"H": hidden, "product (1 x H) @ (H x 3H)": name, "µs": t * 1e6,
                              "GB/s of weights read": 4 * 3 * hidden * hidden / t / 1e9})

    size = 50 * 2**20 // 4
    reused = torch.empty(size)

    def fresh() -> float:
        start = time.perf_counter()
        torch.empty(size).fill_(1.0)
        return time.perf_counter() - start

    def warm() -> float:
        start = time.perf_counter()
        reused.fill_(1.0)
        return time.perf_counter() - start

    results = interleave({"fresh 50 MiB buffer, fill": fresh, "reused 50 MiB buffer, fill": warm}, repeats * 2)
    fault_rows = [{"case": name, "ms": median(times) * 1e3, "ms per MiB": median(times) * 1e3 / 50} for name, times in results.items()]
    tables = {
        "In-place tanh by size (one thread's worth of work; copy subtracted)": (tanh_rows, list(tanh_rows[0])),
        "Batch-1 matrix-vector product layouts": (gemv_rows, list(gemv_rows[0])),
        "Fresh vs reused memory (page faults of a new allocation)": (fault_rows, list(fault_rows[0])),
    }
    if args.compile_step:
        rows = compile_step_rows(repeats)
        tables["Sampling step: eager Stepper vs torch.compile (batch 1)"] = (rows, list(rows[0]))
    write_results("kernels", command_line(), tables)


if __name__ == "__main__":
    main()
