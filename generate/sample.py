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


def pick_next(logits: Tensor, cfg: Any, generator: torch.Generator) -> Tensor:
    """(N, V) logits → (N,) token ids: argmax at temperature 0, else a draw from the filtered softmax."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float(), cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(model: torch.nn.Module, prime: list[int], cfg: Any, device: torch.device) -> Tensor:
    """Continue `prime` by cfg.length tokens for cfg.num_samples samples at once → (N, length).

    The prime is read in one pass; after that each new token is one step of the GRU from the
    carried hidden state (the prefix is never re-run).
    """
    model.eval()
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    tokens = torch.tensor(prime, dtype=torch.long, device=device).expand(cfg.num_samples, -1)  # (N, P)
    logits, hidden = model(tokens)  # (N, P, V), (L, N, H)
    out = torch.empty(cfg.num_samples, cfg.length, dtype=torch.long, device=device)
    for i in range(cfg.length):
        out[:, i] = pick_next(logits[:, -1], cfg, generator)
        if i + 1 < cfg.length:
            logits, hidden = model(out[:, i : i + 1], hidden)  # one step: (N, 1, V)
    return out


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
