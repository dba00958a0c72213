"""Tracks → pieces: melodies, piano-roll segments or performances, keys and registers (no tokens here)."""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from generate.music.notes import (
    SECOND,
    GridNote,
    Key,
    Note,
    Piece,
    Track,
    grid_line,
    line_piece,
    meters_from,
    to_steps,
)


@dataclass(frozen=True)
class Extraction:
    """Every dataset setting that changes how the tracks of a file become pieces."""

    min_pitch: int = 21
    max_pitch: int = 108
    steps_per_quarter: int = 4
    monophony: str = "highest"
    split_silence_quarters: float = 4.0
    min_melody_steps: int = 16
    transpose: str = "none"  # none | c | augment
    transpose_range: int = 5
    part: str = ""  # for melodies from scores: take only the part whose name starts with this
    time_stretch: tuple[float, ...] = ()  # performances: training copies with every time scaled by each factor

    def in_range(self, pitch: int) -> bool:
        return self.min_pitch <= pitch <= self.max_pitch

    def shifts(self) -> list[int]:
        """The transpositions each training piece is also seen in (0 first)."""
        if self.transpose != "augment":
            return [0]
        r = self.transpose_range
        return [0] + [k for k in range(-r, r + 1) if k != 0]

    def copies(self) -> list[tuple[int, int, float]]:
        """Every (key, semitones, time factor) each training piece is also seen in, the piece as it is first.

        The key names the copy in the file table: the semitones, plus 256 x the factor's place in the sorted
        factors (so 0 is the piece as it is, which alone goes to validation and test).
        """
        factors = [1.0] + sorted({float(f) for f in self.time_stretch} - {1.0})
        return [(k + 256 * i, k, f) for i, f in enumerate(factors) for k in self.shifts()]

    @property
    def gap_steps(self) -> int:
        return max(1, round(self.split_silence_quarters * self.steps_per_quarter))


def stretched(piece: Piece, factor: float) -> Piece:
    """The piece played `factor` times as long: every onset, duration and rest scaled, the tempo divided."""
    if factor == 1.0:
        return piece
    slower = piece._scaled(factor, piece.unit)  # the scaling a change of unit uses, here within one unit
    slower.qpm = piece.qpm / factor if piece.qpm else piece.qpm
    return slower


# ---------------------------------------------------------------- keys and registers


# Krumhansl-Kessler probe-tone profiles (C major, C minor), the values music21's KrumhanslSchmuckler uses
# (tests/test_music_sources.py checks they agree); written here, importing music21 costs 1.5 s per build.
KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)


def key_profiles() -> tuple[list[float], list[float]]:
    return list(KK_MAJOR), list(KK_MINOR)


def estimate_key(notes: list[Note]) -> Key | None:
    """The notes' most likely key (Krumhansl-Schmuckler), None when no key stands out (no notes, a flat histogram).

    The major or minor profile, rotated to each of the 12 tonics, that correlates best with the
    duration-weighted pitch-class histogram.
    """
    import numpy as np

    hist = np.zeros(12)
    for n in notes:
        hist[n.pitch % 12] += n.end - n.start
    if not hist.any():
        return None
    candidates, _ = rotated_profiles()
    # Pearson correlation with all 24 rotated profiles at once (np.corrcoef 24 times was 2/3 of a file's time).
    centred = hist - hist.mean()
    norm = np.sqrt((centred**2).sum())
    if norm == 0:  # every pitch class equally long: no key stands out (corrcoef would give nan, never a best)
        return None
    scores = candidates @ centred / norm
    # Exact ties (e.g. two notes a fifth apart) go to the first candidate in order, not to rounding noise.
    best = int(np.flatnonzero(scores >= scores.max() - 1e-12)[0])
    return Key(best // 2, "minor" if best % 2 else "major")


def shift_to_c(key: Key | None) -> int:
    """Semitones (-6..5) that take `key` to C major (or A minor: they share no sharps or flats)."""
    if key is None:
        return 0
    shift = ((9 if key.mode == "minor" else 0) - key.tonic) % 12
    return shift - 12 if shift > 5 else shift


def key_shift(notes: list[Note]) -> int:
    """Semitones (-6..5) that take the notes' most likely key (estimate_key) to C major or A minor."""
    return shift_to_c(estimate_key(notes))


def piece_key(tracks: list[Track], counts: Counter) -> Key | None:
    """The key a file's pieces carry: the one the file gives, else the estimate; counts which it was."""
    given = next((t for t in tracks if t.key is not None and t.key_source), None)
    if given is not None:
        counts[f"keys from the {given.key_source}"] += 1  # the MIDI key signature, or the score
        return given.key
    estimated = estimate_key([n for t in tracks for n in t.notes])
    counts["keys estimated (none in the file)" if estimated else "keys unknown"] += 1
    return estimated


@functools.cache
def rotated_profiles() -> tuple[Any, Any]:
    """The 24 key profiles (each tonic, major then minor), centred and scaled to unit length, and their shifts."""
    import numpy as np

    major, minor = (np.asarray(p, dtype=float) for p in key_profiles())
    rows, targets = [], []
    for tonic in range(12):
        for profile, target in ((major, 0), (minor, 9)):  # C major / A minor share no sharps or flats
            rotated = np.roll(profile, tonic)  # row 2*tonic + (minor): estimate_key reads the key back from it
            centred = rotated - rotated.mean()
            rows.append(centred / np.sqrt((centred**2).sum()))
            targets.append((target - tonic) % 12)
    return np.array(rows), np.array(targets)


def fit_octaves(piece: Piece, low: int, high: int) -> Piece | None:
    """Move a piece by whole octaves (the fewest) so every pitch is in low..high; None if it cannot fit."""
    span = piece.pitch_range()
    if span is None:
        return piece
    lo, hi = span
    if hi - lo > high - low:
        return None
    octaves = 0
    while lo + 12 * octaves < low:
        octaves += 1
    while hi + 12 * octaves > high:
        octaves -= 1
    if lo + 12 * octaves < low:  # the span fits but no whole-octave move lands it
        return None
    return piece.transposed(12 * octaves) if octaves else piece


# ---------------------------------------------------------------- tracks → pieces


def split_at_silences(steps: list[GridNote], gap: int) -> list[list[GridNote]]:
    """Grid notes (sorted by start) → groups separated by at least `gap` silent steps."""
    groups: list[list[GridNote]] = []
    reach = None  # the latest end so far in the current group
    for note in steps:
        if reach is None or note[0] - reach >= gap:
            groups.append([])
            reach = note[1]
        groups[-1].append(note)
        reach = max(reach, note[1])
    return groups


def _from_start(group: list[GridNote]) -> tuple[list[GridNote], int, int]:
    """Grid notes → the same notes moved to start at step 0, their length in steps and the step they began at."""
    first = min(s for s, _, _, _ in group)
    return [(s - first, e - first, p, v) for s, e, p, v in group], max(e for _, e, _, _ in group) - first, first


def fold_into_range(piece: Piece, low: int, high: int, counts: Counter) -> Piece | None:
    """A piece in low..high: by whole octaves if it fits (fit_octaves), else the octave that holds the most notes,
    then each note still outside moved by octaves to the nearest in-range pitch (counted). None only when a
    range narrower than an octave leaves notes that no octave move brings in."""
    fitted = fit_octaves(piece, low, high)
    if fitted is not None:
        return fitted
    pitches = [n.pitch for n in piece.notes]
    best = max(range(-10, 11), key=lambda k: (sum(low <= p + 12 * k <= high for p in pitches), -abs(k)))
    notes, folded = [], 0
    for n in piece.notes:
        pitch = n.pitch + 12 * best
        while pitch < low:
            pitch += 12
        while pitch > high:
            pitch -= 12
        if pitch < low:  # the range is narrower than an octave and this pitch class is not in it
            return None
        folded += pitch != n.pitch + 12 * best
        notes.append(replace(n, pitch=pitch))
    counts["notes moved by an octave into the range (fragment wider than the range)"] += folded
    key = piece.key.transposed(12 * best) if piece.key else None
    return replace(piece, notes=notes, key=key)


def off_grid(notes: list[Note], spq: int) -> bool:
    """The documented triplet rule: True when over 10% of the onsets miss the grid of `spq` steps a quarter
    (by more than a tenth of a step) while at least 90% sit on the three-times finer grid (triplets).

    Performances (onsets on neither grid) are not caught: they are quantized as before.
    """
    if not notes:
        return False

    def on(grid: int) -> float:
        return sum(abs(n.start * grid - round(n.start * grid)) <= 0.1 for n in notes) / len(notes)

    return on(spq) < 0.9 and on(3 * spq) >= 0.9


TRIPLETS = "fragments in triplets (off the grid) skipped: set dataset.steps_per_quarter=12"


def melody_pieces(tracks: list[Track], ex: Extraction, counts: Counter) -> list[Piece]:
    """Each non-drum track → one line (monophony rule) → fragments split at long rests, long enough,
    moved by octaves into the range; each keeps its bars (meters) and the file's key."""
    spq = ex.steps_per_quarter
    pieces = []
    key = piece_key(tracks, counts) if tracks else None
    for track in tracks:
        if not track.notes:
            continue
        counts["tracks read"] += 1
        for group in split_at_silences(grid_line(track.notes, spq, ex.monophony), ex.gap_steps):
            counts["fragments"] += 1
            line, length, first = _from_start(group)
            if length < ex.min_melody_steps:
                counts[f"fragments shorter than {ex.min_melody_steps} steps"] += 1
                continue
            origin, stop = first / spq, (first + length) / spq
            if off_grid([n for n in track.notes if origin - 1e-9 <= n.start < stop], spq):
                counts[TRIPLETS] += 1
                continue
            piece = line_piece(line, spq, length / spq)
            piece.meters, piece.key, piece.qpm = meters_from(track.meters, origin, stop), key, track.qpm
            fitted = fold_into_range(piece, ex.min_pitch, ex.max_pitch, counts)
            if fitted is None:
                counts[f"fragments wider than the range {ex.min_pitch}..{ex.max_pitch}"] += 1
                continue
            pieces.append(fitted)
    return pieces


def _in_range(notes: list[Note], ex: Extraction, counts: Counter) -> list[Note]:
    kept = [n for n in notes if ex.in_range(n.pitch)]
    if len(kept) < len(notes):
        counts["notes outside the pitch range dropped"] += len(notes) - len(kept)
    return kept


def roll_pieces(tracks: list[Track], ex: Extraction, counts: Counter) -> list[Piece]:
    """All non-drum tracks together → segments split at long silences, at least min_melody_steps long,
    each with its bars (meters) and the file's key."""
    spq = ex.steps_per_quarter
    counts["tracks read"] += sum(1 for t in tracks if t.notes)
    key = piece_key(tracks, counts) if tracks else None
    meters, qpm = (tracks[0].meters, tracks[0].qpm) if tracks else ([], None)
    in_range = _in_range([n for t in tracks for n in t.notes], ex, counts)
    steps = sorted(to_steps(in_range, spq))
    pieces = []
    for group in split_at_silences(steps, ex.gap_steps):
        counts["fragments"] += 1
        notes, length, first = _from_start(group)
        if length < ex.min_melody_steps:
            counts[f"fragments shorter than {ex.min_melody_steps} steps"] += 1
            continue
        origin, stop = first / spq, (first + length) / spq
        if off_grid([n for n in in_range if origin - 1e-9 <= n.start < stop], spq):
            counts[TRIPLETS] += 1
            continue
        piece = Piece([Note(p, s / spq, e / spq, v) for s, e, p, v in notes], length / spq)
        piece.meters, piece.key, piece.qpm = meters_from(meters, origin, stop), key, qpm
        pieces.append(piece)
    return pieces


def performance_pieces(tracks: list[Track], ex: Extraction, counts: Counter) -> list[Piece]:
    """All non-drum tracks together, in seconds, from the first note on: one performance per file."""
    counts["tracks read"] += sum(1 for t in tracks if t.notes)
    notes = _in_range([n for t in tracks for n in t.notes], ex, counts)
    if not notes:
        return []
    first = min(n.start for n in notes)
    return [Piece([Note(n.pitch, n.start - first, n.end - first, n.velocity) for n in notes], 0.0, SECOND)]
