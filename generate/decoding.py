"""Decoding: logit filters, the draw, token-by-token generation from a carried state, and beam search."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from generate import native
from generate.ranges import SAMPLING, check


def check_sampling(
    temperature: float, top_k: int, top_p: float, length: int, num_samples: int, beam_size: int = 1
) -> None:
    """Refuse out-of-range sampling settings before any work, naming each and its valid range."""
    values = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "length": length,
              "num_samples": num_samples, "beam_size": beam_size}
    check(values, SAMPLING)


def filter_logits(logits: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """(N, V) logits → (N, V) logits with temperature applied and top-k / nucleus cut-offs as -inf."""
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked before it already cover top_p; the first always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def pick_next(
    logits: Tensor, generator: torch.Generator, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
    noise: Tensor | None = None,
) -> Tensor:
    """(N, V) logits → (N,) token ids: argmax at temperature 0, else a draw from the filtered softmax.

    The draw is the Gumbel-max trick: argmax(logits / T + g), g = −log E, E ~ Exp(1), is distributed
    as softmax(logits / T) (torch.multinomial draws one sample the same way), and it lets the noise
    of many steps be drawn in one call: `noise` (N, V) is one step of it, drawn here when not given.
    """
    if temperature == 0:
        return logits.argmax(-1)
    if noise is None:
        noise = _gumbel(torch.empty(logits.shape, device=logits.device), generator)
    return _perturbed(logits.float(), noise, temperature, top_k, top_p).argmax(-1)


def _perturbed(
    logits: Tensor, noise: Tensor, temperature: float, top_k: int, top_p: float, out: Tensor | None = None
) -> Tensor:
    """(N, V) filtered logits / T + Gumbel noise: its argmax is one draw (the rule pick_next documents)."""
    if 0 < top_k < logits.shape[-1] or top_p < 1.0:
        return torch.add(filter_logits(logits, temperature, top_k, top_p), noise, out=out)
    return torch.add(noise, logits, alpha=1.0 / temperature, out=out)  # logits / T + g, no temporaries


def _gumbel(buffer: Tensor, generator: torch.Generator) -> Tensor:
    """Fill `buffer` with standard Gumbel noise −log E, E ~ Exp(1), in place."""
    # E = 0 would give +inf noise, which beats even a filtered-out (−inf) token: keep E > 0.
    return buffer.exponential_(generator=generator).clamp_min_(torch.finfo(buffer.dtype).tiny).log_().neg_()


def generate_tokens(
    model: Any, prime: list[int], length: int, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
    num_samples: int = 1, seed: int = 1337, device: torch.device | str = "cpu",
) -> Tensor:
    """Continue `prime` by `length` tokens for `num_samples` samples at once → (N, length) (see stream_tokens)."""
    blocks = stream_tokens(model, prime, length, temperature=temperature, top_k=top_k, top_p=top_p,
                           num_samples=num_samples, seed=seed, device=device, block=length)
    return torch.cat(list(blocks), dim=1)


@torch.inference_mode()
def stream_tokens(
    model: Any, prime: list[int], length: int, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
    num_samples: int = 1, seed: int = 1337, device: torch.device | str = "cpu", block: int = 4096,
) -> Iterator[Tensor]:
    """Continue `prime` by `length` tokens for `num_samples` samples at once, yielding (N, ≤ block) blocks.

    The prime is read in one pass; after that each new token is one step of the GRU from the
    carried hidden state (the prefix is never re-run), taken by model.Stepper on preallocated
    buffers (`model.stepper(hidden)`). Memory is O(N·block + N·V) however long the sample: one
    block buffer, reused. The Gumbel noise for up to `chunk` steps is drawn in one call, so the
    same seed gives the same samples whatever the block size. On the CPU without top-k / top-p the
    steps run in generate/native.c when it is available (many tokens per call, the same noise
    rows); on CUDA each step (GRU and draw) is replayed from a captured CUDA graph.
    """
    model.eval()
    device = torch.device(device)
    temperature, top_k, top_p, count = float(temperature), int(top_k), float(top_p), int(num_samples)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    tokens = torch.tensor(prime, dtype=torch.long, device=device).expand(count, -1)  # (N, P)
    logits, hidden = model(tokens)  # (N, P, V), (L, N, H)
    first = logits[:, -1].float()  # (N, V)
    vocab = first.shape[-1]
    greedy = temperature == 0
    chunk = max(1, min(length, (1 << 20) // (count * vocab)))  # steps of noise per draw (≤ 4 MB)
    noise = torch.empty(chunk, count, vocab, device=device)  # (S, N, V)
    noise_rows = noise.unbind(0)  # views: they see every refill
    scores = torch.empty(count, vocab, device=device)

    def pick(step_logits: Tensor, i: int, into: Tensor, noise_row: Tensor | None = None) -> None:
        """Write the token drawn at step i into `into` (N,)."""
        if greedy:
            torch.argmax(step_logits, -1, out=into)
            return
        if noise_row is None:
            if i % chunk == 0:
                _gumbel(noise, generator)
            noise_row = noise_rows[i % chunk]
        torch.argmax(_perturbed(step_logits, noise_row, temperature, top_k, top_p, scores), -1, out=into)

    buffer = torch.empty(min(length, block), count, dtype=torch.long, device=device)  # time-major block
    rows = buffer.unbind(0)  # views made once: indexing in the loop costs a call per step
    pick(first, 0, rows[0])
    stepper = model.stepper(hidden)
    replay = None
    if device.type == "cuda" and length > 1:
        replay = _capture_cuda_graph(stepper, pick, rows[0], noise, chunk, greedy, generator)
    # A step's largest product is 2·N·H·3H FLOPs; below ~4 MFLOP (batch 1 at H=256 is 0.4) a
    # parallel region costs more than it saves (and stalls for milliseconds when another process
    # holds a core), so small steps run on one thread. Measured in bench/sample_speed.py.
    threads = torch.get_num_threads()
    if device.type == "cpu" and 6 * count * stepper.hidden_size**2 < 4e6:
        torch.set_num_threads(1)
    # The native kernel runs on one thread: it takes the steps PyTorch would also run on one.
    fast = _native_sampler(stepper, device, top_k, top_p, vocab) if length > 1 and torch.get_num_threads() == 1 else None
    try:
        done, prev = 0, rows[0]
        while done < length:
            size = min(len(rows), length - done)
            if fast is not None:  # the native kernel: many steps per call
                prev = _native_block(fast, prev, buffer, 1 if done == 0 else 0, size, done, noise, chunk,
                                     generator, temperature)
            else:
                for j in range(1 if done == 0 else 0, size):
                    if replay is not None:
                        replay(done + j, rows[j])
                    else:
                        pick(stepper.step(prev), done + j, rows[j])  # reads prev before writing rows[j]
                    prev = rows[j]
            done += size
            yield buffer[:size].t().clone()  # (N, size): the buffer is reused for the next block
    finally:
        torch.set_num_threads(threads)


def _native_sampler(stepper: Any, device: torch.device, top_k: int, top_p: float, vocab: int) -> Any:
    """generate/native.c's sampler on this stepper, or None where the PyTorch path runs instead.

    The kernel draws by the plain Gumbel-max rule (greedy or temperature only): top-k / top-p
    filters, and devices other than the CPU, take the PyTorch path, as does everything when the
    kernel is unavailable or turned off (GENERATE_NATIVE=0).
    """
    if device.type != "cpu" or 0 < top_k < vocab or top_p < 1.0 or not hasattr(stepper, "table"):
        return None
    lib = native.kernel()
    return None if lib is None else native.NativeSampler(lib, stepper)


def _native_block(
    fast: Any, prev: Tensor, buffer: Tensor, start: int, size: int, done: int, noise: Tensor, chunk: int,
    generator: torch.Generator, temperature: float,
) -> Tensor:
    """Fill buffer[start:size] (tokens done + start ...) in native calls; → the last token row written.

    The noise is refilled at exactly the steps where the PyTorch path refills it (every `chunk`
    steps), so both paths draw step i from the same noise row.
    """
    j = start
    while j < size:
        i = done + j
        if temperature == 0:
            steps, rows = size - j, None
        else:
            if i % chunk == 0:
                _gumbel(noise, generator)
            steps = min(size - j, chunk - i % chunk)
            rows = noise[i % chunk : i % chunk + steps]
        fast.run(prev, steps, buffer[j : j + steps], rows, temperature)
        j += steps
        prev = buffer[j - 1]
    return prev


def _capture_cuda_graph(
    stepper: Any, pick: Callable[..., None], first: Tensor, noise: Tensor, chunk: int, greedy: bool,
    generator: torch.Generator,
) -> Callable[[int, Tensor], None] | None:
    """A function that advances one step by replaying a captured CUDA graph; None if capture fails.

    One step launches ~20 small kernels; replaying them as one graph removes the per-launch CPU
    cost that otherwise bounds batch-1 sampling on a GPU. The noise is drawn outside the graph
    (one row copied in per step), so the generator advances exactly as on the eager path.
    """
    token = first.clone()  # static input and output of the captured step
    noise_row = torch.zeros_like(noise[0])
    saved = stepper.hidden.clone()

    def body() -> None:
        pick(stepper.step(token), 1, token, noise_row)

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (cuBLAS workspaces, allocator) off the capture
            for _ in range(2):
                body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
    except RuntimeError as err:  # capture unsupported here: the eager loop does the same work
        print(f"note: CUDA graph capture failed ({str(err).splitlines()[0][:120]}); sampling eagerly", file=sys.stderr)
        stepper.hidden.copy_(saved)
        return None
    stepper.hidden.copy_(saved)  # the warm-up steps advanced the state
    token.copy_(first)

    def replay(i: int, into: Tensor) -> None:
        if not greedy:
            if i % chunk == 0:
                _gumbel(noise, generator)
            noise_row.copy_(noise[i % chunk])
        graph.replay()
        into.copy_(token)

    return replay


@torch.inference_mode()
def beam_search(
    model: torch.nn.Module, prime: list[int], length: int, beam_size: int, *, temperature: float = 1.0,
    top_k: int = 0, top_p: float = 1.0, num_samples: int = 1, seed: int = 1337, device: torch.device | str = "cpu",
    hidden: Tensor | None = None,
) -> Tensor:
    """Continue `prime` by `length` tokens → (num_samples, length), each row the best beam found.

    Beams are ranked by their log-likelihood under the model (temperature 1). How a beam is
    extended depends on the sampling settings, as in Magenta's stochastic beam search: with
    temperature 0 each beam proposes its `beam_size` most likely next tokens (classic beam
    search, the same for every sample); otherwise each beam draws `beam_size` distinct tokens from
    the temperature / top-k / top-p distribution, so the samples differ and follow `seed`.

    `hidden` (L, 1, H) is the state the prime is read from (zeros when None, as in `generate`).
    """
    n, width = num_samples, beam_size
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens = torch.tensor(prime, dtype=torch.long, device=device).expand(n, -1)
    if hidden is not None:
        hidden = hidden.to(device).expand(-1, n, -1).contiguous()
    logits, hidden = model(tokens, hidden)  # (N, P, V), (L, N, H)
    # Every sample starts with `width` copies of the primed state; all but one are masked at first
    # so the first expansion does not pick the same token `width` times.
    logits = logits[:, -1].repeat_interleave(width, 0)  # (N*W, V)
    hidden = hidden.repeat_interleave(width, 1)  # (L, N*W, H)
    scores = torch.full((n, width), float("-inf"), device=device)
    scores[:, 0] = 0.0
    history = torch.empty(n, width, 0, dtype=torch.long, device=device)
    vocab = logits.shape[-1]
    picks = min(width, vocab)
    for step in range(length):
        log_probs = logits.float().log_softmax(-1)  # (N*W, V)
        if temperature == 0:
            proposals = log_probs.topk(picks, dim=-1).indices
        else:
            probs = filter_logits(logits.float(), temperature, top_k, top_p).softmax(-1)
            allowed = int((probs > 0).sum(-1).min())
            proposals = torch.multinomial(probs, min(picks, allowed), generator=generator)  # (N*W, K)
        k = proposals.shape[-1]
        candidate = scores.view(n * width, 1) + log_probs.gather(-1, proposals)  # (N*W, K)
        best, flat = candidate.view(n, width * k).topk(width, dim=-1)  # (N, W)
        parent = flat // k  # which beam each survivor extends
        chosen = proposals.view(n, width * k).gather(-1, flat)  # (N, W)
        history = torch.cat([history.gather(1, parent.unsqueeze(-1).expand(-1, -1, history.shape[-1])), chosen.unsqueeze(-1)], -1)
        scores = best
        if step + 1 == length:
            break
        rows = (parent + torch.arange(n, device=device).unsqueeze(1) * width).flatten()  # parent rows in N*W
        logits, hidden = model(chosen.view(n * width, 1), hidden[:, rows])
        logits = logits[:, -1]
    return history[:, 0]  # topk keeps beams sorted: column 0 is the most likely
