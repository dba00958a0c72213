"""Hostile input: mutated MIDI files, random token ids and hostile text never crash; bad files are skipped and counted."""

from __future__ import annotations

import functools
import random
import signal
import struct
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import mido
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generate.data import load_corpus
from generate.errors import UserError
from generate.tokenizers import CharTokenizer
from tests.conftest import compose_config

MIDI_CASES = 600  # each read by all three music tokenizers: 1,809 file cases with the 3 seeds
SEED = 4


@contextmanager
def deadline(seconds: int, what: str):
    """Fail (rather than hang the suite) if `what` takes longer than `seconds`."""

    def expired(signum, frame):
        raise TimeoutError(f"{what} took over {seconds} s: a hang on hostile input")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- MIDI mutations


def seed_songs(folder: Path) -> list[bytes]:
    from tests.music_helpers import song

    out = []
    for i in range(3):
        path = folder / f"seed{i}.mid"
        song(100 + i, bars=4).write(str(path))
        out.append(path.read_bytes())
        path.unlink()
    return out


def midi_file(data: bytes) -> mido.MidiFile:
    import io

    return mido.MidiFile(file=io.BytesIO(data))


def to_bytes(mid: mido.MidiFile) -> bytes:
    import io

    buffer = io.BytesIO()
    mid.save(file=buffer)
    return buffer.getvalue()


def first_track_chunk(data: bytes) -> int:
    at = data.find(b"MTrk")
    return at if at >= 0 else min(14, len(data))


# Byte-level damage: what a bad download, a bad disk or a bad writer does.
def truncated(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 2, 8, 64))):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwritten(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = rng.randrange(len(out))
    out[start : start + rng.randrange(1, 64)] = rng.randbytes(rng.randrange(1, 64))
    return bytes(out)


def absurd_division(data: bytes, rng: random.Random) -> bytes:
    # 0 ticks per quarter, 1, the 15-bit maximum, or SMPTE timing (negative frames per second).
    value = rng.choice((b"\x00\x00", b"\x00\x01", b"\x7f\xff", b"\xe8\x28", b"\xe2\x50", b"\xff\xff"))
    return data[:12] + value + data[14:]


def lying_header(data: bytes, rng: random.Random) -> bytes:
    fmt = rng.choice((0, 1, 2, 3, 0xFFFF))
    tracks = rng.choice((0, 1, 2, 200, 0xFFFF))
    return data[:8] + struct.pack(">HH", fmt, tracks) + data[12:]


def lying_chunk_length(data: bytes, rng: random.Random) -> bytes:
    at = first_track_chunk(data) + 4
    length = rng.choice((0, 1, 7, 0x7FFFFFFF, 0xFFFFFFFF, struct.unpack(">I", data[at : at + 4])[0] + 100))
    return data[:at] + struct.pack(">I", length) + data[at + 4 :]


def garbage_after_header(data: bytes, rng: random.Random) -> bytes:
    return data[:14] + b"MTrk" + rng.randbytes(rng.randrange(0, 400))


def spliced(data: bytes, rng: random.Random) -> bytes:
    a, b = sorted(rng.sample(range(len(data)), 2))
    return data[:a] + data[b:] + data[a:b]


# Structural oddities: valid enough to parse, hostile in what they say.
def huge_delta_time(data: bytes, rng: random.Random) -> bytes:
    mid = midi_file(data)
    track = rng.choice([t for t in mid.tracks if t])
    i = rng.randrange(len(track))
    track[i] = track[i].copy(time=rng.choice((0x0FFFFFFF, 10_000_000, 2_000_000, 123_456)))
    return to_bytes(mid)


def tempo_storm(data: bytes, rng: random.Random) -> bytes:
    mid = midi_file(data)
    storm = [mido.MetaMessage("set_tempo", tempo=rng.choice((1, 2, 0xFFFFFF, rng.randrange(1, 0xFFFFFF))), time=rng.choice((0, 0, 1)))
             for _ in range(rng.choice((100, 2000)))]
    mid.tracks[0][0:0] = storm
    return to_bytes(mid)


def zero_length_notes(data: bytes, rng: random.Random) -> bytes:
    mid = midi_file(data)
    track = mido.MidiTrack()
    for _ in range(rng.randrange(1, 300)):
        pitch = rng.randrange(128)
        track.append(mido.Message("note_on", note=pitch, velocity=rng.randrange(128), time=rng.choice((0, 0, 1, 480))))
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=0))  # ends where it starts
    if rng.random() < 0.5:
        track.append(mido.Message("note_off", note=60, velocity=0, time=5))  # an end with no start
        track.append(mido.Message("note_on", note=61, velocity=100, time=0))  # a start with no end
    mid.tracks.append(track)
    return to_bytes(mid)


def type_2(data: bytes, rng: random.Random) -> bytes:
    mid = midi_file(data)
    out = mido.MidiFile(type=2, ticks_per_beat=mid.ticks_per_beat)
    out.tracks = list(mid.tracks) * rng.choice((1, 2))
    return to_bytes(out)


def extreme_notes(data: bytes, rng: random.Random) -> bytes:
    mid = midi_file(data)
    choice = rng.choice(("pitch", "long", "dense", "channel9"))
    for track in mid.tracks:
        for i, msg in enumerate(track):
            if msg.type not in ("note_on", "note_off"):
                continue
            if choice == "pitch":
                track[i] = msg.copy(note=rng.choice((0, 127)))
            elif choice == "long" and msg.type == "note_off":
                track[i] = msg.copy(time=msg.time + 5_000_000)
            elif choice == "channel9":
                track[i] = msg.copy(channel=9)  # everything on the drum channel
    if choice == "dense":
        chord = mido.MidiTrack()
        for pitch in range(128):
            chord.append(mido.Message("note_on", note=pitch, velocity=100, time=0))
        for pitch in range(128):
            chord.append(mido.Message("note_off", note=pitch, velocity=0, time=rng.choice((0, 1, 960))))
        mid.tracks.append(chord)
    return to_bytes(mid)


def odd_meta(data: bytes, rng: random.Random) -> bytes:
    # A meta event with a huge or absurd length and contents (time signature, key, text).
    at = first_track_chunk(data) + 8
    meta_type = rng.choice((0x58, 0x59, 0x51, 0x01, 0x2F, 0x7F))
    length = rng.choice((b"\x00", b"\x01", b"\x7f", b"\x8f\xff\xff\x7f"))
    event = b"\x00\xff" + bytes([meta_type]) + length + rng.randbytes(rng.randrange(0, 8))
    return data[:at] + event + data[at:]


def tiny(data: bytes, rng: random.Random) -> bytes:
    return rng.choice((b"", b"MThd", data[:14], b"MThd\x00\x00\x00\x06\x00\x00\x00\x00\x01\xe0", b"RIFF" + data))


MUTATORS: list[Callable[[bytes, random.Random], bytes]] = [
    truncated, bit_flips, overwritten, absurd_division, lying_header, lying_chunk_length, garbage_after_header,
    spliced, huge_delta_time, tempo_storm, zero_length_notes, type_2, extreme_notes, odd_meta, tiny,
]


def write_cases(folder: Path, seeds: list[bytes], count: int) -> Counter:
    """`count` mutated files (every mutator in turn, reproducibly), plus the seeds themselves."""
    folder.mkdir(parents=True)
    kinds: Counter = Counter()
    for i in range(count):
        rng = random.Random(SEED * 1_000_003 + i)
        mutate = MUTATORS[i % len(MUTATORS)]
        data = mutate(rng.choice(seeds), rng)
        if rng.random() < 0.3 and len(data) > 1:  # damage on damage
            data = rng.choice(MUTATORS[:5])(data, rng)
        (folder / f"case{i:04d}_{mutate.__name__}.mid").write_bytes(data)
        kinds[mutate.__name__] += 1
    for i, data in enumerate(seeds):
        (folder / f"good{i}.mid").write_bytes(data)
    return kinds


OUTCOMES: defaultdict[str, Counter] = defaultdict(Counter)  # what happened to every case, for the summary


@pytest.fixture(scope="module", autouse=True)
def summary():
    """Print every case's outcome at the end (shown with `pytest -s`)."""
    yield
    for what, outcomes in OUTCOMES.items():
        print(f"\nfuzz {what}: {sum(outcomes.values())} cases: {dict(outcomes.most_common())}")


# polyphonic is the slowest (~19 s): it runs in CI and `python -m pytest`, not under -m "not slow"
@pytest.mark.parametrize("tokenizer", ["melody", pytest.param("polyphonic", marks=pytest.mark.slow), "events"])
def test_mutated_midi_never_crashes_and_every_bad_file_is_counted(tmp_path_factory, tokenizer: str) -> None:
    root = tmp_path_factory.getbasetemp() / "midi_fuzz"
    folder = root / "files"
    if not folder.exists():  # one folder of cases, read by every tokenizer
        write_cases(folder, seed_songs(tmp_path_factory.mktemp("seeds")), MIDI_CASES)
    total = MIDI_CASES + 3
    cfg = compose_config("config", [
        "dataset=midi", f"dataset.path={folder}", f"dataset.tokenizer={tokenizer}",
        f"dataset.cache_dir={root / 'cache'}", "dataset.num_workers=1",  # in-process: any exception would escape here
    ])
    if tokenizer != "melody":  # the default melody range; the others take every MIDI pitch
        cfg.dataset.min_pitch, cfg.dataset.max_pitch = 0, 127
    with deadline(120, f"loading {total} fuzzed MIDI files"):
        corpus = load_corpus(cfg.dataset, verbose=False)

    stats = corpus.stats
    skipped: dict[str, int] = stats["skipped"]
    OUTCOMES[f"MIDI files, {tokenizer} tokens"].update({"used": stats["files_used"], **{f"skipped: {r}": n for r, n in skipped.items()}})
    assert stats["files"] == total
    assert stats["files_used"] + sum(skipped.values()) == total  # every file is used or counted
    assert stats["files_used"] >= 3 and all(isinstance(r, str) and r for r in skipped)
    assert not [r for r in skipped if r.startswith("failed")], f"the loader hit an internal error: {skipped}"
    vocab = corpus.tokenizer.vocab_size
    for docs in corpus.splits.values():
        assert all(0 <= t < vocab for doc in docs for t in doc)


# ---------------------------------------------------------------- token ids → music


def music_tokenizers():
    from generate.tokenizers.events import EventTokenizer
    from generate.tokenizers.melody import MelodyTokenizer
    from generate.tokenizers.polyphonic import PolyphonicTokenizer

    return [MelodyTokenizer(48, 84, 4), PolyphonicTokenizer(21, 108, 4), EventTokenizer(21, 108)]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["melody", "polyphonic", "events"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=st.data())
def test_any_token_ids_decode_without_raising(index: int, data) -> None:
    tokenizer = music_tokenizers()[index]
    ids = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=400))
    piece = tokenizer.decode(ids)
    assert all(tokenizer.in_range(n.pitch) and n.end > n.start >= 0 for n in piece.notes)
    # What the sampler writes can be tokenized again (a generated piece used as a primer).
    assert all(0 <= t < tokenizer.vocab_size for t in tokenizer.encode(piece))
    OUTCOMES[f"decode {tokenizer.kind}"]["decoded"] += 1


# ---------------------------------------------------------------- hostile text


@functools.cache
def text_dataset(path: str):
    return compose_config("config", ["dataset=text", f"dataset.path={path}", f"dataset.cache_dir={Path(path).parent / 'cache'}"]).dataset


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
@given(
    body=st.one_of(
        st.binary(min_size=0, max_size=600),  # anything, mostly invalid UTF-8
        st.text(min_size=0, max_size=600).map(lambda s: s.encode("utf-8")),  # valid UTF-8, any code point
        st.text(alphabet="\x00ab\n", max_size=600).map(str.encode),  # NUL bytes
    )
)
def test_hostile_text_loads_or_is_refused_with_a_user_error(tmp_path_factory, body: bytes) -> None:
    folder = tmp_path_factory.getbasetemp() / "text_fuzz"
    path = folder / "corpus.txt"
    folder.mkdir(exist_ok=True)
    path.write_bytes(body)  # a new content is a new cache key: every example is tokenized afresh
    try:
        corpus = load_corpus(text_dataset(str(path)), verbose=False)
    except UserError as err:
        assert "\n" not in str(err) and ("UTF-8" in str(err) or "empty" in str(err))
        OUTCOMES["text"]["refused: " + ("not UTF-8" if "UTF-8" in str(err) else "empty")] += 1
        return
    OUTCOMES["text"]["loaded"] += 1
    text = body.decode("utf-8")  # it loaded, so it was UTF-8
    assert isinstance(corpus.tokenizer, CharTokenizer)
    ids = [t for split in ("test", "train", "val") for doc in corpus.splits[split] for t in doc]  # stream order
    assert corpus.tokenizer.decode(ids) == text


def test_a_huge_single_line_with_nul_bytes_trains(tmp_path: Path) -> None:
    import torch

    from generate.cli import run_train as train
    from tests.conftest import train_overrides

    path = tmp_path / "one_line.txt"
    path.write_bytes(b"ab\x00cd\xc3\xa9 " * 40_000)  # 360 KB, no newline at all, NUL bytes, non-ASCII
    overrides = train_overrides(tmp_path, "dataset=text", f"dataset.path={path}", "train.max_steps=2", "train.eval_every=2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: more threads only spin against other processes
    try:
        summary = train(compose_config("config", [*overrides, "dataset.val_fraction=0.01", "train.eval_batch_size=64"]))
    finally:
        torch.set_num_threads(threads)
    assert summary.step == 2 and summary.best_val < 10
