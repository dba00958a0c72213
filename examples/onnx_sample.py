"""Sample from an exported ONNX model with numpy and onnxruntime only: no torch, no toolkit.

    python -m generate.export checkpoint=shakespeare format=onnx out=shakespeare.onnx
    python examples/onnx_sample.py shakespeare.onnx --prompt "ROMEO:" --length 300 --temperature 0.8

The export wrote shakespeare.tokenizer.json beside the graph: the vocabulary, a printable name for
every token id and the state's shape. Text models print text; music models print token names (turn
them into MIDI with `generate.load(...)` where the toolkit is installed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort


def load(path: Path) -> tuple[ort.InferenceSession, dict]:
    """The ONNX session (one thread: batch-1 steps are too small to share) and the tokenizer JSON beside it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = json.loads(path.with_name(path.stem + ".tokenizer.json").read_text(encoding="utf-8"))
    return session, meta


def draw(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """One token id from (V,) logits: argmax at temperature 0, else softmax(logits / T) over the top k."""
    if temperature == 0:
        return int(logits.argmax())
    scaled = logits.astype(np.float64) / temperature
    if 0 < top_k < scaled.size:
        scaled[scaled < np.partition(scaled, -top_k)[-top_k]] = -np.inf
    probs = np.exp(scaled - scaled.max())
    return int(rng.choice(scaled.size, p=probs / probs.sum()))


def sample(session: ort.InferenceSession, meta: dict, prime: list[int], length: int, temperature: float,
           top_k: int, seed: int) -> list[int]:
    """`length` new token ids after `prime`: the prime is read in one call, then one call per token."""
    spec = meta["model_spec"]
    hidden = np.zeros((spec["num_layers"], 1, spec["hidden_size"]), dtype=np.float32)
    tokens = np.asarray(prime, dtype=np.int64).reshape(-1, 1)  # (seq, batch = 1)
    rng, out = np.random.default_rng(seed), []
    for _ in range(length):
        logits, hidden = session.run(None, {"tokens": tokens, "hidden": hidden})
        out.append(draw(logits[-1, 0], temperature, top_k, rng))
        tokens = np.array([[out[-1]]], dtype=np.int64)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the .onnx file written by `generate.export format=onnx`")
    parser.add_argument("--prompt", default="", help="text to continue (text models)")
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    session, meta = load(args.model)
    tokenizer = meta["tokenizer"]
    if tokenizer["kind"] == "char":
        index = {c: i for i, c in enumerate(tokenizer["chars"])}
        unknown = sorted({c for c in args.prompt if c not in index})
        if unknown:
            parser.error(f"the model never saw {''.join(unknown)!r}; use only: {tokenizer['chars']!r}")
        prime = [index[c] for c in args.prompt] or meta["start_ids"]
        ids = sample(session, meta, prime, args.length, args.temperature, args.top_k, args.seed)
        print(args.prompt + "".join(tokenizer["chars"][i] for i in ids))
    else:
        if args.prompt:
            parser.error("--prompt is for text models; music models start from their separator token")
        ids = sample(session, meta, meta["start_ids"], args.length, args.temperature, args.top_k, args.seed)
        print(" ".join(meta["token_names"][i] for i in ids))


if __name__ == "__main__":
    main()
