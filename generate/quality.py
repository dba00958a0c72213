"""Sample quality for music: histogram distances between generated and held-out pieces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from generate.checkpoint import build_model, build_tokenizer, load_checkpoint, resolve_checkpoint
from generate.data import load_corpus
from generate.runtime import UserError, hydra_entry, resolve_device
from generate.sample import check_settings, generate

INTERVAL_LIMIT = 12  # intervals beyond an octave share the outermost bins
LENGTH_BINS = 16  # note lengths in sixteenths, 1..16 (longer share the last bin)


def histograms(pieces: list[Any]) -> dict[str, torch.Tensor]:
    """Pitch-class, melodic-interval and note-length distributions (each sums to 1) over `pieces`."""
    pitch_class = torch.zeros(12, dtype=torch.float64)
    interval = torch.zeros(2 * INTERVAL_LIMIT + 1, dtype=torch.float64)
    length = torch.zeros(LENGTH_BINS, dtype=torch.float64)
    for piece in pieces:
        notes = piece.in_quarters(120.0).notes
        for note in notes:
            pitch_class[note.pitch % 12] += 1
            sixteenths = round((note.end - note.start) * 4)
            length[min(max(sixteenths, 1), LENGTH_BINS) - 1] += 1
        for a, b in zip(notes, notes[1:]):
            step = max(-INTERVAL_LIMIT, min(INTERVAL_LIMIT, b.pitch - a.pitch))
            interval[step + INTERVAL_LIMIT] += 1
    return {name: h / h.sum().clamp(min=1) for name, h in
            (("pitch_class", pitch_class), ("interval", interval), ("note_length", length))}


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Half the L1 distance: 0 for identical distributions, 1 for disjoint ones."""
    return float(0.5 * (p - q).abs().sum())


def distances(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: total_variation(a[name], b[name]) for name in a}


def quality(cfg: Any) -> dict[str, Any]:
    check_settings(cfg)
    path, origin = resolve_checkpoint(cfg.checkpoint)
    ckpt = load_checkpoint(path)
    tokenizer = build_tokenizer(ckpt)
    if tokenizer.modality != "music":
        raise UserError("quality compares music: this checkpoint is a text model")
    print(f"checkpoint: {path} ({origin})")
    device = resolve_device(cfg.device)
    model = build_model(ckpt, device)
    corpus = load_corpus(OmegaConf.create(ckpt["config"]["dataset"]), verbose=False)

    def decode_all(docs: list[list[int]]) -> list[Any]:
        return [tokenizer.decode(doc) for doc in docs]

    held_out = histograms(decode_all(corpus.splits[cfg.split]))
    reference_split = "val" if cfg.split != "val" else "train"
    reference = histograms(decode_all(corpus.splits[reference_split]))
    generated_ids = generate(model, tokenizer.start_ids(), cfg, device).tolist()
    generated = histograms(decode_all(generated_ids))
    result = {
        "checkpoint": str(path),
        "split": cfg.split,
        "settings": {k: cfg[k] for k in ("temperature", "top_k", "top_p", "length", "num_samples", "seed")},
        "generated_vs_held_out": distances(generated, held_out),
        f"{reference_split}_vs_held_out": distances(reference, held_out),
    }
    print(f"total variation distance to the {cfg.split} split (0 = same distribution, 1 = disjoint):")
    print(f"{'histogram':<14}{'generated':>11}{reference_split + ' split':>14}")
    for name in held_out:
        print(f"{name:<14}{result['generated_vs_held_out'][name]:>11.3f}{result[f'{reference_split}_vs_held_out'][name]:>14.3f}")
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


main = hydra_entry(quality, "quality")

if __name__ == "__main__":
    main()
