"""Music in: MIDI (pretty_midi) and scores (music21) → tracks → melodies, piano-roll segments or performances."""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generate.runtime import UserError
from generate.tokenizers.notes import QUARTER, SECOND, MusicTokenizer, Note, Piece, make_monophonic, to_steps

# Part of every music fingerprint: bump when extraction changes what tokens a file gives.
EXTRACT_VERSION = 2
SAFE_RESOLUTION = 480  # ticks per quarter that over-long, over-fine MIDI files are re-timed to
SCORE_SECONDS_PER_QUARTER = 0.5  # scores have no performance timing: read them at 120 quarters/minute


@dataclass
class Track:
    """One instrument (MIDI) or part (score): its notes in quarters or seconds."""

    notes: list[Note]
    is_drum: bool = False
    name: str = ""


@dataclass
class Extraction:
    """What every dataset setting that changes tokens says about turning tracks into pieces."""

    tokenizer: MusicTokenizer
    steps_per_quarter: int = 4
    monophony: str = "highest"
    split_silence_quarters: float = 4.0
    min_melody_steps: int = 16
    transpose: str = "none"  # none | c | augment
    transpose_range: int = 5
    part: str = ""  # for melodies from scores: take only the part whose name starts with this

    @property
    def kind(self) -> str:
        return self.tokenizer.kind

    @property
    def unit(self) -> str:
        return self.tokenizer.unit

    def shifts(self) -> list[int]:
        """The transpositions each training piece is also seen in (0 first)."""
        if self.transpose != "augment":
            return [0]
        r = self.transpose_range
        return [0] + [k for k in range(-r, r + 1) if k != 0]


@dataclass
class FileResult:
    """One file's outcome: why it was skipped, or its pieces as token lists per transposition."""

    name: str
    reason: str | None = None
    docs: list[dict[int, list[int]]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


# ---------------------------------------------------------------- reading


def midi_tracks(pm: Any, unit: str) -> list[Track]:
    """A pretty_midi.PrettyMIDI → tracks. Quarters come from ticks, so they do not depend on tempo."""
    tracks = []
    for inst in pm.instruments:
        if unit == QUARTER:
            res = pm.resolution
            notes = [
                Note(n.pitch, pm.time_to_tick(n.start) / res, pm.time_to_tick(n.end) / res, n.velocity)
                for n in inst.notes
            ]
        else:
            notes = [Note(n.pitch, n.start, n.end, n.velocity) for n in inst.notes]
        tracks.append(Track(notes, inst.is_drum, inst.name))
    return tracks


def read_midi(path: Path) -> Any:
    """A MIDI file → pretty_midi.PrettyMIDI, also for long files written at a very fine resolution.

    pretty_midi refuses files whose last tick is past its MAX_TICK (1e7) as "likely corrupt";
    music21 writes 10080 ticks per quarter, so a 250-bar piece from it hits that. Such a file is
    re-timed to 480 ticks per quarter first (with mido, which pretty_midi reads through); a file
    that is past the limit even at 480 is left for pretty_midi to refuse.
    """
    import mido
    import pretty_midi

    with warnings.catch_warnings():  # pretty_midi warns about harmless quirks of many real files
        warnings.simplefilter("ignore")
        data = mido.MidiFile(filename=str(path), charset="latin1")
        # pretty_midi fails on a track with no events at all ("max() arg is an empty sequence");
        # such tracks carry nothing, so the rest of the file is still worth reading.
        data.tracks = [track for track in data.tracks if len(track)] or data.tracks[:1]
        last_tick = max((sum(msg.time for msg in track) for track in data.tracks), default=0)
        if last_tick >= pretty_midi.pretty_midi.MAX_TICK and data.ticks_per_beat > SAFE_RESOLUTION:
            _retime(data, SAFE_RESOLUTION)
        return pretty_midi.PrettyMIDI(mido_object=data)


def _retime(data: Any, resolution: int) -> None:
    """Change a mido.MidiFile's ticks per quarter in place, rounding absolute times (no drift)."""
    scale = resolution / data.ticks_per_beat
    for track in data.tracks:
        absolute, placed = 0, 0
        for msg in track:
            absolute += msg.time
            new = round(absolute * scale)
            msg.time, placed = new - placed, new
    data.ticks_per_beat = resolution


def score_tracks(score: Any, unit: str) -> list[Track]:
    """A music21 score → one track per part (ties merged; grace notes and unpitched notes left out)."""
    from music21 import instrument

    scale = 1.0 if unit == QUARTER else SCORE_SECONDS_PER_QUARTER
    tracks = []
    for part in score.parts:
        inst = part.getInstrument(returnDefault=True)
        is_drum = isinstance(inst, instrument.UnpitchedPercussion)
        notes = []
        for el in part.stripTies().flatten().notes:
            length = float(el.quarterLength)
            if length <= 0 or not hasattr(el, "pitches"):
                continue
            start = float(el.offset)
            velocity = el.volume.velocity or 90
            for p in el.pitches:
                notes.append(Note(p.midi, start * scale, (start + length) * scale, velocity))
        tracks.append(Track(notes, is_drum, part.partName or ""))
    return tracks


def read_scores(path: Path) -> list[Any]:
    """A notation file → its scores (an ABC file may hold many tunes)."""
    from music21 import converter, stream

    parsed = converter.parse(str(path))
    if isinstance(parsed, stream.Opus):
        return list(parsed.scores)
    if not isinstance(parsed, stream.Score):  # a lone part or stream: wrap it
        parsed = stream.Score([parsed])
    return [parsed]


def read_primer(path: Path, unit: str) -> tuple[list[Note], float]:
    """A primer MIDI file → its pitched notes, starting at 0, and its length; UserError if unusable."""
    if not path.is_file():
        raise UserError(f"primer file not found: {path}; give primer=FILE.mid")
    try:
        pm = read_midi(path)
    except Exception as err:  # mido/pretty_midi raise many types for non-MIDI bytes
        detail = str(err).strip().splitlines()[0][:80] if str(err).strip() else ""
        raise UserError(
            f"primer {path} is not a readable MIDI file ({type(err).__name__}{': ' + detail if detail else ''}); "
            "give a .mid file"
        ) from None
    notes = [n for t in midi_tracks(pm, unit) if not t.is_drum for n in t.notes]
    if not notes:
        raise UserError(f"primer {path} has no pitched notes (drums are ignored); give a MIDI file with a melody in it")
    first = min(n.start for n in notes)
    notes = [Note(n.pitch, n.start - first, n.end - first, n.velocity) for n in notes]
    return notes, max(n.end for n in notes)


# ---------------------------------------------------------------- transposition


@functools.cache
def key_profiles() -> tuple[list[float], list[float]]:
    # Krumhansl-Kessler probe-tone profiles, as music21 ships them.
    from music21.analysis.discrete import KrumhanslSchmuckler

    ks = KrumhanslSchmuckler()
    return ks.getWeights("major"), ks.getWeights("minor")


def key_shift(notes: list[Note]) -> int:
    """Semitones (-6..5) that take the notes' most likely key to C major or A minor.

    The key is the Krumhansl-Schmuckler estimate: the major or minor profile, rotated to each of
    the 12 tonics, that correlates best with the duration-weighted pitch-class histogram.
    """
    import numpy as np

    hist = np.zeros(12)
    for n in notes:
        hist[n.pitch % 12] += n.end - n.start
    if not hist.any():
        return 0
    major, minor = (np.asarray(p) for p in key_profiles())
    best, best_shift = -2.0, 0
    for tonic in range(12):
        for profile, target in ((major, 0), (minor, 9)):  # C major / A minor share no sharps or flats
            score = float(np.corrcoef(hist, np.roll(profile, tonic))[0, 1])
            if score > best:
                best, best_shift = score, (target - tonic) % 12
    return best_shift - 12 if best_shift > 5 else best_shift


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


def _split_at_silences(steps: list[tuple[int, int, int, int]], gap: int) -> list[list[tuple[int, int, int, int]]]:
    """Grid notes (sorted by start) → groups separated by at least `gap` silent steps."""
    groups: list[list[tuple[int, int, int, int]]] = []
    reach = None  # the latest end so far in the current group
    for note in steps:
        if reach is None or note[0] - reach >= gap:
            groups.append([])
            reach = note[1]
        groups[-1].append(note)
        reach = max(reach, note[1])
    return groups


def _grid_piece(group: list[tuple[int, int, int, int]], spq: int) -> tuple[Piece, int]:
    """Grid notes → a piece starting at 0 and its length in steps."""
    first = min(s for s, _, _, _ in group)
    length = max(e for _, e, _, _ in group) - first
    notes = [Note(p, (s - first) / spq, (e - first) / spq, v) for s, e, p, v in group]
    return Piece(notes, length / spq), length


def melody_pieces(tracks: list[Track], ex: Extraction, counts: Counter) -> list[Piece]:
    """Each non-drum track → one line (monophony rule) → fragments split at long rests, long enough,
    moved by octaves into the tokenizer's range."""
    spq, tok = ex.steps_per_quarter, ex.tokenizer
    gap = max(1, round(ex.split_silence_quarters * spq))
    pieces = []
    for track in tracks:
        if not track.notes:
            continue
        counts["tracks read"] += 1
        line = make_monophonic(to_steps(track.notes, spq), ex.monophony)
        for group in _split_at_silences(line, gap):
            counts["fragments"] += 1
            piece, length = _grid_piece(group, spq)
            if length < ex.min_melody_steps:
                counts[f"fragments shorter than {ex.min_melody_steps} steps"] += 1
                continue
            fitted = fit_octaves(piece, tok.min_pitch, tok.max_pitch)
            if fitted is None:
                counts[f"fragments wider than the range {tok.min_pitch}..{tok.max_pitch}"] += 1
                continue
            pieces.append(fitted)
    return pieces


def _in_range(notes: list[Note], ex: Extraction, counts: Counter) -> list[Note]:
    kept = [n for n in notes if ex.tokenizer.in_range(n.pitch)]
    if len(kept) < len(notes):
        counts["notes outside the pitch range dropped"] += len(notes) - len(kept)
    return kept


def roll_pieces(tracks: list[Track], ex: Extraction, counts: Counter) -> list[Piece]:
    """All non-drum tracks together → segments split at long silences, at least min_melody_steps long."""
    spq = ex.steps_per_quarter
    counts["tracks read"] += sum(1 for t in tracks if t.notes)
    notes = _in_range([n for t in tracks for n in t.notes], ex, counts)
    steps = sorted(to_steps(notes, spq))
    pieces = []
    for group in _split_at_silences(steps, max(1, round(ex.split_silence_quarters * spq))):
        counts["fragments"] += 1
        piece, length = _grid_piece(group, spq)
        if length < ex.min_melody_steps:
            counts[f"fragments shorter than {ex.min_melody_steps} steps"] += 1
            continue
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


EXTRACTORS = {"melody": melody_pieces, "polyphonic": roll_pieces, "events": performance_pieces}


def tokenize_tracks(name: str, tracks: list[Track], ex: Extraction) -> FileResult:
    """Tracks of one file → token documents (every transposition asked for), or the reason there are none."""
    result = FileResult(name)
    pitched = [t for t in tracks if not t.is_drum and t.notes]
    drums = [t for t in tracks if t.is_drum and t.notes]
    result.counts["drum tracks skipped"] += len(drums)
    if not pitched:
        result.reason = "drum tracks only" if drums else "no notes"
        return result
    if ex.part and ex.kind == "melody":
        chosen = [t for t in pitched if t.name.lower().startswith(ex.part)]
        pitched = chosen or pitched[:1]
    shift = key_shift([n for t in pitched for n in t.notes]) if ex.transpose == "c" else 0
    if shift:
        pitched = [Track([Note(n.pitch + shift, n.start, n.end, n.velocity) for n in t.notes], False, t.name) for t in pitched]
    pieces = EXTRACTORS[ex.kind](pitched, ex, result.counts)
    tok = ex.tokenizer
    for piece in pieces:
        docs = {}
        for k in ex.shifts():
            moved = piece.transposed(k) if k else piece
            span = moved.pitch_range()
            if span is None or (tok.in_range(span[0]) and tok.in_range(span[1])):
                docs[k] = tok.encode(moved)
            else:
                result.counts["transposed copies out of range skipped"] += 1
        result.docs.append(docs)
    result.counts["pieces kept"] += len(pieces)
    if not pieces:
        result.reason = f"nothing at least {ex.min_melody_steps} steps long" if ex.kind != "events" else "no notes in the pitch range"
    return result


def process_midi_file(item: tuple[str, str], ex: Extraction) -> FileResult:
    """(name, path) → FileResult; never raises, so one bad file in thousands is only counted (worker entry)."""
    name, path = item
    try:
        if Path(path).stat().st_size == 0:
            return FileResult(name, "empty file (0 bytes)")
        try:
            pm = read_midi(Path(path))
        except Exception:
            return FileResult(name, "not readable as MIDI (corrupt or truncated)")
        return tokenize_tracks(name, midi_tracks(pm, ex.unit), ex)
    except Exception as err:  # anything else odd about one file must not stop a whole folder
        return FileResult(name, f"failed ({type(err).__name__})")


def process_score_file(item: tuple[str, str], ex: Extraction) -> FileResult:
    """(name, path) of a MusicXML/ABC/Humdrum file → FileResult (worker entry; never raises)."""
    name, path = item
    try:
        if Path(path).stat().st_size == 0:
            return FileResult(name, "empty file (0 bytes)")
        try:
            scores = read_scores(Path(path))
        except Exception:
            return FileResult(name, "not readable as a score (music21 could not parse it)")
        merged = FileResult(name)
        for score in scores:
            one = tokenize_tracks(name, score_tracks(score, ex.unit), ex)
            merged.docs += one.docs
            merged.counts += one.counts
            merged.reason = merged.reason or one.reason
        if merged.docs:
            merged.reason = None
        return merged
    except Exception as err:
        return FileResult(name, f"failed ({type(err).__name__})")
