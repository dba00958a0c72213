"""sample(cfg): prime a checkpoint's model, generate token by token with the carried state, write outputs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from generate.checkpoint import build_model, build_tokenizer, load_checkpoint, resolve_checkpoint
from generate.runtime import UserError, hydra_entry, resolve_device
from generate.tokenizers import Tokenizer


def check_settings(cfg: Any) -> None:
    """Refuse out-of-range settings before any work, naming the setting and its valid range."""
    problems = []
    if cfg.temperature < 0:
        problems.append(f"temperature={cfg.temperature} must be >= 0 (0 means greedy)")
    if not 0 < cfg.top_p <= 1:
        problems.append(f"top_p={cfg.top_p} must be in (0, 1] (1.0 turns it off)")
    if cfg.top_k < 0:
        problems.append(f"top_k={cfg.top_k} must be >= 0 (0 turns it off)")
    if cfg.length < 1:
        problems.append(f"length={cfg.length} must be >= 1")
    if cfg.num_samples < 1:
        problems.append(f"num_samples={cfg.num_samples} must be >= 1")
    if cfg.beam_size < 1:
        problems.append(f"beam_size={cfg.beam_size} must be >= 1")
    if cfg.prompt and cfg.primer:
        problems.append("prompt= and primer= cannot be used together; give one of them")
    if problems:
        raise UserError("; ".join(problems))


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


def pick_next(logits: Tensor, cfg: Any, generator: torch.Generator, noise: Tensor | None = None) -> Tensor:
    """(N, V) logits → (N,) token ids: argmax at temperature 0, else a draw from the filtered softmax.

    The draw is the Gumbel-max trick: argmax(logits / T + g), g = −log E, E ~ Exp(1), is distributed
    as softmax(logits / T) (torch.multinomial draws one sample the same way), and it lets the noise
    of many steps be drawn in one call: `noise` (N, V) is one step of it, drawn here when not given.
    """
    if cfg.temperature == 0:
        return logits.argmax(-1)
    if noise is None:
        noise = _gumbel(torch.empty(logits.shape, device=logits.device), generator)
    return _perturbed(logits.float(), noise, cfg.temperature, cfg.top_k, cfg.top_p).argmax(-1)


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


@torch.inference_mode()
def generate(model: torch.nn.Module, prime: list[int], cfg: Any, device: torch.device) -> Tensor:
    """Continue `prime` by cfg.length tokens for cfg.num_samples samples at once → (N, length).

    The prime is read in one pass; after that each new token is one step of the GRU from the
    carried hidden state (the prefix is never re-run), taken by model.Stepper on preallocated
    buffers. The Gumbel noise for up to `chunk` steps is drawn in one call, so the same seed gives
    the same samples. On CUDA each step (GRU and draw) is replayed from a captured CUDA graph.
    """
    from generate.model import Stepper

    model.eval()
    # Settings read once: reading a DictConfig attribute costs as much as a small kernel.
    temperature, top_k, top_p = float(cfg.temperature), int(cfg.top_k), float(cfg.top_p)
    length, count = int(cfg.length), int(cfg.num_samples)
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    tokens = torch.tensor(prime, dtype=torch.long, device=device).expand(count, -1)  # (N, P)
    logits, hidden = model(tokens)  # (N, P, V), (L, N, H)
    first = logits[:, -1].float()  # (N, V)
    vocab = first.shape[-1]
    out = torch.empty(length, count, dtype=torch.long, device=device)  # time-major: out[i] feeds step i + 1
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

    pick(first, 0, out[0])
    stepper = Stepper(model, hidden)
    if device.type == "cuda" and length > 1 and _generate_cuda_graph(stepper, pick, out, noise, chunk, greedy, generator):
        return out.t().contiguous()
    # A step's largest product is 2·N·H·3H FLOPs; below ~4 MFLOP (batch 1 at H=256 is 0.4) a
    # parallel region costs more than it saves (and stalls for milliseconds when another process
    # holds a core), so small steps run on one thread. Measured in bench/sample_speed.py.
    threads = torch.get_num_threads()
    if device.type == "cpu" and 6 * count * stepper.hidden_size**2 < 4e6:
        torch.set_num_threads(1)
    rows = out.unbind(0)  # views made once: indexing in the loop costs a call per step
    try:
        for i in range(1, length):
            pick(stepper.step(rows[i - 1]), i, rows[i])
    finally:
        torch.set_num_threads(threads)
    return out.t().contiguous()


def _generate_cuda_graph(
    stepper: Any, pick: Any, out: Tensor, noise: Tensor, chunk: int, greedy: bool, generator: torch.Generator
) -> bool:
    """Fill out[1:] by replaying one captured step per token; False (nothing changed) if capture fails.

    One step launches ~20 small kernels; replaying them as one graph removes the per-launch CPU
    cost that otherwise bounds batch-1 sampling on a GPU. The noise is drawn outside the graph
    (one row copied in per step), so the generator advances exactly as on the eager path.
    """
    token = out[0].clone()  # static input and output of the captured step
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
        return False
    stepper.hidden.copy_(saved)  # the warm-up steps advanced the state
    token.copy_(out[0])
    for i in range(1, out.shape[0]):
        if not greedy:
            if i % chunk == 0:
                _gumbel(noise, generator)
            noise_row.copy_(noise[i % chunk])
        graph.replay()
        out[i].copy_(token)
    return True


def prime_ids(cfg: Any, tokenizer: Tokenizer) -> tuple[list[int], bool]:
    """The ids generation starts from, and whether they belong in the written output."""
    if cfg.primer:
        encode_primer = getattr(tokenizer, "encode_primer", None)
        if encode_primer is None:
            raise UserError("primer= is a MIDI file for music models; this is a text model, use prompt=\"...\"")
        return encode_primer(cfg.primer), True
    if cfg.prompt:
        if tokenizer.modality != "text":
            raise UserError("prompt= is text for text models; for a music model give primer=FILE.mid")
        return tokenizer.encode(cfg.prompt), True
    return tokenizer.start_ids(), False


def sample(cfg: Any) -> list[Any]:
    """Generate cfg.num_samples samples from a checkpoint and write them to cfg.out_dir."""
    check_settings(cfg)
    path, origin = resolve_checkpoint(cfg.checkpoint)
    ckpt = load_checkpoint(path)
    print(f"checkpoint: {path} ({origin})", file=sys.stderr)
    device = resolve_device(cfg.device)
    model = build_model(ckpt, device)
    tokenizer = build_tokenizer(ckpt)

    prime, keep_prime = prime_ids(cfg, tokenizer)
    if cfg.beam_size > 1:
        from generate.beam import beam_search  # music feature; see generate/beam.py

        generated = beam_search(model, prime, cfg, device)
    else:
        generated = generate(model, prime, cfg, device)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, row in enumerate(generated.tolist()):
        ids = (prime if keep_prime else []) + row
        item = tokenizer.decode(ids)
        samples.append(item)
        if tokenizer.modality == "text":
            (out_dir / f"sample_{i}.txt").write_text(item, encoding="utf-8")
            if not cfg.quiet:
                print(f"--- sample {i} ---\n{item}")
        else:
            from generate.render import write_music

            written = write_music(item, out_dir / f"sample_{i}", tokenizer, cfg)
            print(f"sample {i}: " + ", ".join(str(p) for p in written))
    print(f"wrote {len(samples)} sample(s) to {out_dir}/", file=sys.stderr)
    return samples


main = hydra_entry(sample, "sample")

if __name__ == "__main__":
    main()
