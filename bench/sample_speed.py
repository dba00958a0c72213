"""Sampling tokens/s at batch 1, 8 and 64: ours (generate.sample.generate) vs today's PyTorch path, a plain step loop, a window re-run, a NumPy step and ONNX Runtime."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from common import clock, command_line, interleave, measure_peak, median, parse_args, spread, sync, write_results

from generate import native
from generate.decoding import generate_tokens
from generate.model import GRULanguageModel, ModelSpec

EMBED, VOCAB, WINDOW = 128, 65, 100
TODAY = "today's path: PyTorch Stepper (GENERATE_NATIVE=0)"


def make_model(layers: int, hidden: int, reset_after: bool, device: torch.device) -> GRULanguageModel:
    torch.manual_seed(0)
    return GRULanguageModel(ModelSpec(VOCAB, EMBED, hidden, layers, dropout=0.1, reset_after=reset_after)).to(device).eval()


def plain_step_loop(model: GRULanguageModel, batch: int, length: int, device: torch.device) -> Callable[[], float]:
    """A variant (s/token): model(token, state) one step at a time, softmax, multinomial, as people write it."""

    @torch.inference_mode()
    def run() -> float:
        model.fused = False  # torch's own modules: nn.GRU (or the seed GRU's reference loop)
        generator = torch.Generator(device=device).manual_seed(0)
        token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        hidden = None
        sync(device)
        start = clock(device)()
        for _ in range(length):
            logits, hidden = model(token, hidden)  # (N, 1, V)
            probs = torch.softmax(logits[:, -1] / 1.0, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)  # (N, 1)
        sync(device)
        model.fused = True
        return (clock(device)() - start) / length

    return run


def window_rerun(model: GRULanguageModel, batch: int, length: int, device: torch.device) -> Callable[[], float]:
    """A variant (s/token): every new token re-reads the last 100 tokens from a zero state (no carried state)."""

    @torch.inference_mode()
    def run() -> float:
        model.fused = False
        generator = torch.Generator(device=device).manual_seed(0)
        history = torch.randint(VOCAB, (batch, WINDOW), device=device)  # a full window from the start
        sync(device)
        start = clock(device)()
        for _ in range(length):
            logits, _ = model(history[:, -WINDOW:])  # (N, 100, V): the whole window, every token
            probs = torch.softmax(logits[:, -1], dim=-1)
            history = torch.cat([history, torch.multinomial(probs, 1, generator=generator)], dim=1)
        sync(device)
        model.fused = True
        return (clock(device)() - start) / length

    return run


def ours(
    model: GRULanguageModel, batch: int, length: int, device: torch.device, temperature: float = 1.0, kernel: bool = True
) -> Callable[[], float]:
    """A variant (s/token): generate.decoding.generate_tokens (what model.sample runs), 1-token prime.

    kernel=False: with GENERATE_NATIVE=0, i.e. the PyTorch Stepper path that ran before the native kernel.
    """

    def run() -> float:
        previous = os.environ.get(native.SWITCH)
        os.environ[native.SWITCH] = "1" if kernel else "0"
        try:
            sync(device)
            start = clock(device)()
            generate_tokens(model, [0], length, num_samples=batch, temperature=temperature, seed=1, device=device)
            sync(device)
            return (clock(device)() - start) / length
        finally:
            if previous is None:
                del os.environ[native.SWITCH]
            else:
                os.environ[native.SWITCH] = previous

    return run


def products_only(model: GRULanguageModel, batch: int, length: int, device: torch.device) -> Callable[[], float]:
    """A variant (s/step): only the matrix products of one Stepper step (same weights, same layout).

    Everything else in a step (lookups, gates, the draw) removed: what the weight reads alone
    cost. At batch 1 these read every weight matrix once per token, so this is the floor of
    any step written with float32 products, ours or the plain loop's.
    """
    from generate.model import Stepper

    @torch.inference_mode()
    def run() -> float:
        stepper = Stepper(model, model.init_hidden(batch, device))
        h, x, gh = stepper.states, stepper.states[0], stepper.gh
        products = []  # (bias, left, weight^T, out): what Stepper.step multiplies, in its order
        for layer, (bias, w_ih_t, w_a, w_b) in enumerate(stepper.layers):
            if layer > 0:
                products.append((bias, x, w_ih_t, stepper.gi))
            if stepper.reset_after:
                products.append((w_b, h[layer], w_a, gh))
            else:
                products.append((bias[: 2 * stepper.hidden_size], h[layer], w_a, stepper.gh_rz))
                products.append((bias[2 * stepper.hidden_size :], h[layer], w_b, stepper.gh_n))
        products.append((stepper.head_b, h[-1], stepper.head_w_t, stepper.logits))
        sync(device)
        start = clock(device)()
        for _ in range(length):
            for bias, left, weight_t, out in products:
                torch.addmm(bias, left, weight_t, out=out)
        sync(device)
        return (clock(device)() - start) / length

    return run


def _gumbel_draws(rng: Any, batch: int, steps: int) -> Any:
    """(steps, batch, VOCAB) Gumbel noise for argmax draws, as ours draws it (one call for many steps)."""
    import numpy as np

    return -np.log(rng.standard_exponential((steps, batch, VOCAB), dtype=np.float32))


def numpy_step_loop(model: GRULanguageModel, batch: int, length: int, device: torch.device) -> Callable[[], float]:
    """A peer (s/token): the same step as Stepper's, weights in the same layout, written with NumPy in place."""
    import numpy as np

    from generate.model import Stepper

    stepper = Stepper(model, model.init_hidden(batch))
    size, reset_after = stepper.hidden_size, stepper.reset_after
    table = stepper.table.numpy()
    layers = [tuple(t.numpy() for t in layer) for layer in stepper.layers]
    head_w_t, head_b = stepper.head_w_t.numpy(), stepper.head_b.numpy()

    def sigmoid_(x: Any) -> None:  # σ(x) = (1 + tanh(x / 2)) / 2, in place (NumPy has no sigmoid)
        x *= 0.5
        np.tanh(x, out=x)
        x *= 0.5
        x += 0.5

    def buffers(batch: int) -> tuple[Any, ...]:
        """gi, gh (N, 3H); rz (N, 2H), hn, tmp (N, H); logits (N, V): np.dot writes only into contiguous arrays."""
        shapes = ((batch, 3 * size), (batch, 3 * size), (batch, 2 * size), (batch, size), (batch, size), (batch, VOCAB))
        return tuple(np.empty(shape, np.float32) for shape in shapes)

    def step(tokens: Any, hidden: Any, buf: tuple[Any, ...]) -> Any:
        gi, gh, rz, hn, tmp, logits = buf
        np.take(table, tokens, axis=0, out=gi)
        x = None
        for (bias, w_ih_t, w_a, w_b), h in zip(layers, hidden):
            if x is not None:
                np.dot(x, w_ih_t, out=gi)
                gi += bias
            if reset_after:
                np.dot(h, w_a, out=gh)
                gh += w_b
                gi[:, : 2 * size] += gh[:, : 2 * size]
                sigmoid_(gi[:, : 2 * size])
                np.multiply(gi[:, :size], gh[:, 2 * size :], out=tmp)
                tmp += gi[:, 2 * size :]
                np.tanh(tmp, out=tmp)  # n
                np.subtract(h, tmp, out=h)
                h *= gi[:, size : 2 * size]
                h += tmp  # n + z (h − n)
            else:
                np.dot(h, w_a, out=rz)
                rz += gi[:, : 2 * size]
                sigmoid_(rz)
                np.multiply(rz[:, :size], h, out=tmp)
                np.dot(tmp, w_b, out=hn)
                hn += gi[:, 2 * size :]
                np.tanh(hn, out=tmp)  # h̃
                tmp -= h
                tmp *= rz[:, size:]
                h += tmp  # h + z (h̃ − h)
            x = h
        np.dot(x, head_w_t, out=logits)
        logits += head_b
        return logits

    def run() -> float:
        rng = np.random.default_rng(1)
        hidden = np.zeros((len(layers), batch, size), dtype=np.float32)
        buf = buffers(batch)
        tokens = np.zeros(batch, dtype=np.int64)
        start = clock(device)()
        noise = _gumbel_draws(rng, batch, length)
        for i in range(length):
            scores = step(tokens, hidden, buf)
            scores += noise[i]
            tokens = scores.argmax(-1)
        return (clock(device)() - start) / length

    run.step, run.buffers = step, buffers  # type: ignore[attr-defined]  # for the correctness check
    return run


def onnx_step_loop(model: GRULanguageModel, batch: int, length: int, device: torch.device) -> Callable[[], float]:
    """A peer (s/token): the exported ONNX step graph in onnxruntime (1 thread), the draw in NumPy."""
    import numpy as np
    import onnxruntime as ort

    from generate.onnx_export import build_graph

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(build_graph(model).SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run() -> float:
        rng = np.random.default_rng(1)
        hidden = np.zeros((model.spec.num_layers, batch, model.spec.hidden_size), dtype=np.float32)
        tokens = np.zeros((1, batch), dtype=np.int64)
        start = clock(device)()
        noise = _gumbel_draws(rng, batch, length)
        for i in range(length):
            logits, hidden = session.run(None, {"tokens": tokens, "hidden": hidden})
            tokens = (logits[0] + noise[i]).argmax(-1)[None]
        return (clock(device)() - start) / length

    run.session = session  # type: ignore[attr-defined]  # for the correctness check
    return run


def check_peers(model: GRULanguageModel, numpy_run: Any, onnx_run: Any | None, steps: int = 50) -> float:
    """Largest |logit difference| of the NumPy and ONNX steps from the model's own forward over `steps` tokens."""
    import numpy as np

    tokens = torch.randint(VOCAB, (steps, 2), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        reference, _ = model(tokens.t())  # (2, steps, V)
    size = model.spec.hidden_size
    hidden = np.zeros((model.spec.num_layers, 2, size), np.float32)
    buf = numpy_run.buffers(2)
    worst = 0.0
    state = np.zeros_like(hidden)
    for t in range(steps):
        out = numpy_run.step(tokens[t].numpy(), hidden, buf)
        worst = max(worst, float(np.abs(out - reference[:, t].numpy()).max()))
        if onnx_run is not None:
            ox, state = onnx_run.session.run(None, {"tokens": tokens[t : t + 1].numpy(), "hidden": state})
            worst = max(worst, float(np.abs(ox[0] - reference[:, t].numpy()).max()))
    if worst > 1e-4:
        raise SystemExit(f"a peer's logits differ from the model's by {worst:.2e}: the comparison would be unfair")
    return worst


def check_native(model: GRULanguageModel, steps: int = 100) -> float:
    """Largest |logit difference| of the native kernel from the model's own forward over `steps` drawn tokens (batch 2)."""
    lib = native.kernel()
    if lib is None:
        return 0.0
    with torch.inference_mode():
        sampler = native.NativeSampler(lib, model.stepper(model.init_hidden(2)))
        out, logits = torch.empty(steps, 2, dtype=torch.long), torch.empty(steps, 2, VOCAB)
        noise = -torch.empty(steps, 2, VOCAB).exponential_(generator=torch.Generator().manual_seed(3)).log()
        sampler.run(torch.zeros(2, dtype=torch.long), steps, out, noise, 1.0, logits)
        reference, _ = model(torch.cat([torch.zeros(2, 1, dtype=torch.long), out.t()], 1))  # (2, steps + 1, V)
    worst = float((logits - reference[:, :steps].transpose(0, 1)).abs().max())
    if worst > 1e-4:
        raise SystemExit(f"the native kernel's logits differ from the model's by {worst:.2e}")
    return worst


def forward_no_grad(model: GRULanguageModel, batch: int, steps: int, path: str, device: torch.device) -> Callable[[], float]:
    """A variant (s/call): model(tokens) without gradients on one path: "fused" (ours) or "nn.GRU"."""
    tokens = torch.randint(VOCAB, (batch, steps), device=device)

    @torch.inference_mode()
    def run() -> float:
        model.fused = path == "fused"
        model.FUSED_MIN_STEPS_NO_GRAD = 0  # take the asked-for path whatever the length
        sync(device)
        start = clock(device)()
        for _ in range(max(1, 64 // steps)):
            model(tokens)
        sync(device)
        model.fused = True
        del model.FUSED_MIN_STEPS_NO_GRAD  # back to the class's threshold
        return (clock(device)() - start) / max(1, 64 // steps)

    return run


def crossover_rows(layers: int, hidden: int, repeats: int, device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Where the fused path starts to beat nn.GRU without gradients (GRULanguageModel.FUSED_MIN_STEPS_NO_GRAD)."""
    model = make_model(layers, hidden, True, device)
    rows = []
    for batch in (1, 64):
        for steps in ((1, 64) if quick else (1, 4, 16, 64, 256)):
            results = interleave({p: forward_no_grad(model, batch, steps, p, device) for p in ("nn.GRU", "fused")}, repeats)
            torch_s, ours_s = median(results["nn.GRU"]), median(results["fused"])
            rows.append({"batch": batch, "steps (T)": steps, "nn.GRU ms/call": torch_s * 1e3, "fused ms/call": ours_s * 1e3,
                         "fused speed vs nn.GRU": torch_s / ours_s})
    return rows


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--hidden", type=int, default=256)
        parser.add_argument("--layers", type=int, default=2)

    args = parse_args(__doc__, extra)
    device = torch.device(args.device)
    rows = []
    batches = [1] if args.quick else [1, 8, 64]
    forms = [True] if args.quick else [True, False]
    for reset_after in forms:
        model = make_model(args.layers, args.hidden, reset_after, device)
        form = "nn.GRU form" if reset_after else "seed form"
        for batch in batches:
            length = 400 if batch == 1 else 100
            if args.quick:
                length //= 4
            window_length = max(4, length // 20)  # ~100x the work per token: fewer tokens
            variants = {
                "plain step loop (model per token, multinomial)": plain_step_loop(model, batch, length, device),
                f"re-run a {WINDOW}-token window per token": window_rerun(model, batch, window_length, device),
                "ours: generate.sample.generate": ours(model, batch, length, device),
                "ours, greedy (temperature=0)": ours(model, batch, length, device, temperature=0.0),
                TODAY: ours(model, batch, length, device, kernel=False),
                "today's path, greedy": ours(model, batch, length, device, temperature=0.0, kernel=False),
                "floor: the step's matrix products alone": products_only(model, batch, length, device),
            }
            if device.type == "cpu":
                variants["peer: NumPy step, same weight layout as ours"] = numpy_step_loop(model, batch, length, device)
                try:
                    variants["peer: ONNX Runtime step (export format=onnx)"] = onnx_step_loop(model, batch, length, device)
                except ImportError:
                    print("onnxruntime not installed: no ONNX Runtime row (pip install -e '.[onnx]')", flush=True)
                check_native(model)
                check_peers(model, variants["peer: NumPy step, same weight layout as ours"],
                            variants.get("peer: ONNX Runtime step (export format=onnx)"))
            print(f"{form}, batch {batch}: {args.repeats} interleaved rounds ...", flush=True)
            results = interleave(variants, args.repeats)
            plain = median(results["plain step loop (model per token, multinomial)"])
            today = median(results[TODAY])
            for name, fn in variants.items():
                per_token = median(results[name])
                memory = measure_peak(fn, device)
                rows.append(
                    {
                        "form": form,
                        "batch": batch,
                        "variant": name,
                        "tokens/s": batch / per_token,
                        "µs per step": per_token * 1e6,
                        "µs median [min-max]": spread([x * 1e6 for x in results[name]]),
                        "vs plain step loop": plain / per_token,
                        "vs today's path": today / per_token,
                        "peak MiB": memory["peak_cuda_mib"] if device.type == "cuda" else memory["peak_cpu_mib"],
                        "rounds s/token": [round(x, 7) for x in results[name]],
                    }
                )
    print("model.forward without gradients: fused vs nn.GRU ...", flush=True)
    crossover = crossover_rows(args.layers, args.hidden, args.repeats, device, args.quick) if device.type == "cpu" else []
    columns = ["form", "batch", "variant", "tokens/s", "µs median [min-max]", "vs plain step loop", "vs today's path",
               "peak MiB"]
    lib = native.kernel() if device.type == "cpu" else None
    notes = [
        "ours on the CPU: generate/native.c (the whole step in one C call, many tokens per call), compiled here with "
        f"`{' '.join(native.FLAGS[0] + native.COMMON)}`; today's path: the same generate_tokens with "
        "GENERATE_NATIVE=0 (the PyTorch Stepper), measured in the same interleaved rounds."
        if lib is not None else "The native kernel was NOT available: the ours rows ran the PyTorch path.",
        f"Model: {args.layers} x {args.hidden} GRU, embedding {EMBED}, vocabulary {VOCAB}; temperature 1 unless noted; "
        "a step = one new token for each of the `batch` sequences.",
        "The plain loop and the window re-run use torch's modules (model.fused = False: nn.GRU, or the seed GRU's "
        "reference loop) under torch.inference_mode.",
        f"GPU figures: {'measured here' if device.type == 'cuda' else 'not measured (no GPU on this machine)'}.",
    ]
    tables = {f"Sampling ({args.device})": (rows, columns)}
    if crossover:
        tables["model.forward without gradients (prime pass, beam-search step, evaluation): nn.GRU form, fused vs nn.GRU"] = (
            crossover, list(crossover[0])
        )
    write_results("sample_speed", command_line(), tables, {"notes": notes}, device=args.device)


if __name__ == "__main__":
    main()
