"""Sample quality for music: pitch-class, interval and note-length histograms and their distances."""

from __future__ import annotations

from typing import Any

import torch

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
