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


# ---------------------------------------------------------------- metre and key

SIXTEENTHS = 4  # grid steps a quarter for the onset autocorrelation
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10, 11)  # natural minor plus the raised seventh (the leading note)


def onset_autocorrelation(pieces: list[Any], lag: int) -> float:
    """The autocorrelation at `lag` sixteenths of the onset signal: on a sixteenth grid, each step where a note
    starts holds the note's length (in sixteenths), every other step 0; the (step, step + lag) pairs of all
    pieces are pooled into one Pearson correlation.

    A jig's quarter-eighth pattern repeats every bar of 6/8 (12 sixteenths) and not every 16; a 4/4 tune's
    rhythm the other way round: the lag of the bar scores higher than another metre's when the metre is
    heard. (The bare share of onsets followed by an onset `lag` later cannot tell them apart: folk tunes run
    in eighths, so nearly every onset has one 8, 12 and 16 sixteenths later.)
    """
    import numpy as np

    firsts, seconds = [], []
    for piece in pieces:
        quarters = piece.in_quarters(120.0)
        signal = np.zeros(round(quarters.duration * SIXTEENTHS) + 1)
        for note in quarters.notes:
            signal[round(note.start * SIXTEENTHS)] = max(1, round((note.end - note.start) * SIXTEENTHS))
        if len(signal) > lag:
            firsts.append(signal[:-lag])
            seconds.append(signal[lag:])
    if not firsts:
        return float("nan")
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def scale_of(key: Any) -> set[int]:
    """The pitch classes of `key`'s scale (minor: natural minor and the raised seventh)."""
    steps = MINOR_SCALE if key.mode == "minor" else MAJOR_SCALE
    return {(key.tonic + s) % 12 for s in steps}


def in_key_fraction(pieces: list[Any], key: Any = None) -> float:
    """The share of notes whose pitch class is in the scale of `key` (None: each piece's own key)."""
    inside = total = 0
    for piece in pieces:
        chosen = key if key is not None else piece.key
        if chosen is None:
            continue
        scale = scale_of(chosen)
        inside += sum(n.pitch % 12 in scale for n in piece.notes)
        total += len(piece.notes)
    return inside / total if total else float("nan")


def by_first_meter(pieces: list[Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for piece in pieces:
        if piece.meters:
            groups.setdefault(str(piece.meters[0]), []).append(piece)
    return groups


def bar_sixteenths(meter: str) -> int:
    numerator, denominator = (int(x) for x in meter.split("/"))
    return round(numerator * 4 / denominator * SIXTEENTHS)


def first_piece(tokenizer: Any, row: list[int], skip: int) -> Any:
    """The piece a prime started: the ids up to the first separator after the prime's `skip` ids, decoded."""
    sep = tokenizer.separator_id()
    cut = next((i for i in range(skip, len(row)) if row[i] == sep), len(row))
    return tokenizer.decode(row[:cut])


def conditioned_pieces(model: Any, sampling: dict[str, Any], meter: str | None = None, key: str | None = None) -> list[Any]:
    """Samples started from the control tokens for `meter` / `key`, each cut at the end of its first piece
    and moved back to the asked key when the model was trained in C/Am."""
    prime, _, shift = model.start("", None, meter, key)
    settings = {**{k: v for k, v in sampling.items() if k != "length"}, "device": model.device}
    rows = model.generate_rows(prime, True, sampling["length"], settings, metre_first=key is not None and meter is None)
    pieces = [first_piece(model.tokenizer, row, len(prime)) for row in rows]
    return [p.transposed(shift) if shift else p for p in pieces]


def metre_key_report(model: Any, train_pieces: list[Any], sampling: dict[str, Any], keys: int = 6,
                     metres: int = 5) -> dict[str, Any]:
    """For a model with control tokens: for each of the commonest metres in training, the onset autocorrelation
    at its bar's lag and at a contrasting metre's (the commonest whose bar neither divides nor is a multiple of
    this one's: 6/8's 12 sixteenths against 4/4's 16), for training pieces and for samples conditioned on it;
    and for the commonest training keys, the share of conditioned samples' notes in that key's scale."""
    from generate.tokenizers.metre import METERS, parse_key

    groups = by_first_meter(train_pieces)
    ranked = [m for m in sorted(groups, key=lambda m: -len(groups[m])) if m in METERS][:metres]

    def contrasting(meter: str) -> str | None:
        a = bar_sixteenths(meter)
        return next((m for m in ranked if a % bar_sixteenths(m) and bar_sixteenths(m) % a), None)

    report: dict[str, Any] = {"metres": {}, "keys": {}}
    for meter in ranked:
        other = contrasting(meter)
        lags = {"bar": bar_sixteenths(meter), **({"other": bar_sixteenths(other)} if other else {})}
        samples = conditioned_pieces(model, sampling, meter=meter)
        entry: dict[str, Any] = {"other_metre": other, "lags": lags, "training_pieces": len(groups[meter])}
        for name, pieces in (("training", groups[meter]), ("samples", samples)):
            entry[name] = {lag: onset_autocorrelation(pieces, n) for lag, n in lags.items()}
            if other:
                entry[name]["contrast"] = entry[name]["bar"] - entry[name]["other"]
        # how many samples the decoder put on bars of the asked metre (the model wrote BAR tokens that far apart)
        entry["samples"]["with_asked_metre"] = sum(bool(p.meters) and str(p.meters[0]) == meter for p in samples) / max(
            1, len(samples))
        entry["bar_gap"] = entry["training"]["bar"] - entry["samples"]["bar"]
        if other:
            entry["contrast_gap"] = entry["training"]["contrast"] - entry["samples"]["contrast"]
        report["metres"][meter] = entry
    key_counts: dict[str, int] = {}
    for piece in train_pieces:
        if piece.key is not None:
            key_counts[str(piece.key)] = key_counts.get(str(piece.key), 0) + 1
    for name in sorted(key_counts, key=lambda k: -key_counts[k])[:keys]:
        samples = conditioned_pieces(model, sampling, key=name)
        report["keys"][name] = {
            "training_pieces": key_counts[name],
            "training_in_key": in_key_fraction([p for p in train_pieces if str(p.key) == name]),
            "samples_in_key": in_key_fraction(samples, parse_key(name)),
            "samples": len(samples),
        }
    return report


def metre_key_section(model: Any, train_docs: Any, sampling: dict[str, Any], limit: int = 800) -> dict[str, Any] | None:
    """The quality report's metre and key section for a model with control tokens (None for one without)."""
    if not getattr(model.tokenizer, "has_controls", False):
        return None
    pieces = [model.tokenizer.decode(train_docs[i]) for i in range(min(len(train_docs), limit))]
    return metre_key_report(model, pieces, sampling)


def print_metre_key(report: dict[str, Any]) -> None:
    """The metre and key section as a few readable lines."""
    for meter, entry in report["metres"].items():
        t, s = entry["training"], entry["samples"]
        lags = entry["lags"]
        print(f"metre {meter}: onset autocorrelation at lag {lags['bar']} (its bar)"
              + (f" vs {lags['other']} ({entry['other_metre']})" if "other" in lags else "")
              + f": training {t['bar']:.2f}" + (f" vs {t['other']:.2f}" if "other" in t else "")
              + f", samples {s['bar']:.2f}" + (f" vs {s['other']:.2f}" if "other" in s else "")
              + (f"; contrast gap {entry['contrast_gap']:+.2f}" if "contrast_gap" in entry else ""))
    for key, entry in report["keys"].items():
        print(f"key {key}: notes in the scale: samples {entry['samples_in_key']:.1%}, training {entry['training_in_key']:.1%}")
