"""The symusic MIDI reader: every skip reason from a hand-made file, the old reader's quirks, equivalence with pretty_midi."""

from __future__ import annotations

import random
import struct
import warnings
from pathlib import Path

import mido
import pretty_midi
import pytest

from generate.errors import UserError
from generate.music.midifile import MidiContent, MidiSkip, MidiTrack, SkipReason, read_midi_file
from generate.music.notes import QUARTER, SECOND
from generate.music.read import midi_tracks, read_midi, read_primer

MUSIC21_MIDI = sorted(Path(__import__("music21").__file__).parent.glob("**/*.mid"))
NOTE_TRACK = bytes([0x00, 0x90, 60, 90, 0x83, 0x60, 0x80, 60, 0, 0x00, 0xFF, 0x2F, 0x00])  # one quarter at 480 tpq


def header(fmt: int = 1, tracks: int = 1, division: int = 480) -> bytes:
    return b"MThd" + struct.pack(">IHHH", 6, fmt, tracks, division)


def chunk(body: bytes) -> bytes:
    return b"MTrk" + struct.pack(">I", len(body)) + body


def notes(content: MidiContent, track: MidiTrack, in_seconds: bool = False) -> list[tuple]:
    """(pitch, start, end, velocity) of a track's notes, in quarters or seconds."""
    starts, ends = content.times(track, in_seconds)
    return list(zip(track.pitches.tolist(), starts.tolist(), ends.tolist(), track.velocities.tolist()))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def song(seed: int, path: Path, qpm: float = 100.0) -> Path:
    """pretty_midi: a melody with chords, a bass line and a drum track."""
    rng = random.Random(seed)
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=qpm)
    beat = 60.0 / qpm
    lead = pretty_midi.Instrument(program=0, name="lead")
    bass = pretty_midi.Instrument(program=32, name="bass")
    drums = pretty_midi.Instrument(program=0, is_drum=True, name="drums")
    t = 0.0
    while t < 32:
        length = rng.choice((0.5, 1.0, 1.5))
        pitch = rng.randrange(60, 80)
        lead.notes.append(pretty_midi.Note(90, pitch, t * beat, (t + length) * beat))
        if rng.random() < 0.3:
            lead.notes.append(pretty_midi.Note(70, pitch - 4, t * beat, (t + length) * beat))
        t += length
    for bar in range(8):
        bass.notes.append(pretty_midi.Note(80, 36 + bar % 3, bar * 4 * beat, (bar * 4 + 3.5) * beat))
    for q in range(32):
        drums.notes.append(pretty_midi.Note(100, 36 if q % 2 == 0 else 38, q * beat, (q + 0.25) * beat))
    pm.instruments += [lead, bass, drums]
    pm.write(str(path))
    return path


def tempo_changes(path: Path) -> Path:
    """mido: a conductor track with tempo, metre and key changes, instruments (one with a program change) and drums."""
    mid = mido.MidiFile(type=1, ticks_per_beat=384)
    conductor = mido.MidiTrack(
        [
            mido.MetaMessage("set_tempo", tempo=500_000, time=0),
            mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0),
            mido.MetaMessage("key_signature", key="Eb", time=0),
            mido.MetaMessage("set_tempo", tempo=400_000, time=384 * 3),
            mido.MetaMessage("key_signature", key="F#m", time=384 * 2),
            mido.MetaMessage("set_tempo", tempo=750_000, time=384 * 2 + 7),
            mido.MetaMessage("time_signature", numerator=6, denominator=8, time=100),
        ]
    )
    mid.tracks.append(conductor)
    for channel, program, pitches in ((0, 40, (60, 64, 67)), (1, 0, (48, 43)), (9, 0, (36, 42))):
        track = mido.MidiTrack([mido.MetaMessage("track_name", name=f"ch{channel}", time=0)])
        track.append(mido.Message("program_change", channel=channel, program=program, time=0))
        for i in range(40):
            pitch = pitches[i % len(pitches)]
            track.append(mido.Message("note_on", channel=channel, note=pitch, velocity=50 + i, time=0 if i else 5))
            track.append(mido.Message("note_off", channel=channel, note=pitch, velocity=0, time=190 + 3 * channel))
            if i == 20 and channel == 0:  # the same track and channel switch to another instrument
                track.append(mido.Message("program_change", channel=channel, program=41, time=0))
        mid.tracks.append(track)
    mid.save(str(path))
    return path


def pretty_notes(path: Path) -> tuple[set, list[tuple]]:
    """pretty_midi's instruments and notes, in quarters (as generate.music.midi_tracks gets them) and seconds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = pretty_midi.PrettyMIDI(str(path))
    notes = []
    for inst in pm.instruments:
        for n in inst.notes:
            quarters = (pm.time_to_tick(n.start) / pm.resolution, pm.time_to_tick(n.end) / pm.resolution)
            notes.append((inst.is_drum, n.pitch, *quarters, n.start, n.end, n.velocity))
    return {(int(i.program), i.is_drum) for i in pm.instruments}, sorted(notes)


def our_notes(path: Path) -> tuple[set, list[tuple]]:
    content = read_midi_file(path)
    found = []
    for track in content.tracks:
        for q, s in zip(notes(content, track), notes(content, track, True), strict=True):
            found.append((track.is_drum, q[0], q[1], q[2], s[1], s[2], q[3]))
    return {(t.program, t.is_drum) for t in content.tracks}, sorted(found)


def quirks(path: Path) -> tuple[bool, int]:
    """(tempo events outside track 0, note-ons on a pitch already sounding): where pretty_midi reads differently."""
    mid = mido.MidiFile(str(path))
    late_tempo = any(m.type == "set_tempo" for t in mid.tracks[1:] for m in t)
    overlaps = 0
    for track in mid.tracks:
        sounding: set = set()
        for m in track:
            key = (getattr(m, "channel", None), getattr(m, "note", None))
            if m.type == "note_on" and m.velocity:
                overlaps += key in sounding
                sounding.add(key)
            elif m.type in ("note_on", "note_off"):
                sounding.discard(key)
    return late_tempo, overlaps


def assert_same_notes(path: Path) -> int:
    """Same instruments and notes as pretty_midi: pitch, velocity, quarters within 1e-9, seconds within 1e-6.

    Where pretty_midi is known to read otherwise (see NOTES.md) only that part is let through: with tempo events
    outside track 0 the seconds are checked against mido's playback times instead; with a note-on on a pitch
    already sounding (pretty_midi ends every such note at the first note-off, symusic pairs them first-in
    first-out) only that many notes' ends may differ.
    """
    (ours_inst, ours), (theirs_inst, theirs) = our_notes(path), pretty_notes(path)
    late_tempo, overlaps = quirks(path)
    assert len(ours) == len(theirs)
    assert ours_inst == theirs_inst  # (which notes go to which of them can differ at a program change: NOTES.md)
    assert [(a[:3], a[6]) for a in ours] == [(b[:3], b[6]) for b in theirs]  # drum flag, pitch, start, velocity
    differ = 0
    for a, b in zip(ours, theirs, strict=True):
        assert a[2] == pytest.approx(b[2], abs=1e-9)
        if late_tempo:
            continue
        assert a[4] == pytest.approx(b[4], abs=1e-6)
        differ += abs(a[3] - b[3]) > 1e-9 or abs(a[5] - b[5]) > 1e-6
    assert differ <= overlaps
    if late_tempo:
        onsets, now = set(), 0.0
        for m in mido.MidiFile(str(path)):  # mido's playback honours tempo events in every track
            now += m.time
            if m.type == "note_on" and m.velocity:
                onsets.add(round(now, 5))
        assert {round(a[4], 5) for a in ours} <= onsets
    return len(ours)


# ---------------------------------------------------------------- skip reasons


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", SkipReason.EMPTY),
        (b"this is not a MIDI file at all" * 10, SkipReason.NOT_MIDI),
        (bytes(random.Random(1).randbytes(500)), SkipReason.NOT_MIDI),
        (b"RIFF" + header() + chunk(NOTE_TRACK), SkipReason.NOT_MIDI),
        (b"MThd\x00\x00", SkipReason.TRUNCATED),
        (header(), SkipReason.TRUNCATED),  # promises a track, ends after the header
        ((header() + chunk(NOTE_TRACK))[:25], SkipReason.TRUNCATED),
        (header() + b"MTrk" + struct.pack(">I", 0xFFFFFFFF) + NOTE_TRACK, SkipReason.TRUNCATED),
        (header(division=0xFF28) + chunk(NOTE_TRACK), SkipReason.SMPTE_TIMING),  # SMPTE at 1 frame/s: no such rate
        (header(division=0xEE28) + chunk(NOTE_TRACK), SkipReason.SMPTE_TIMING),  # 18 frames/s
        (header(division=0xE800) + chunk(NOTE_TRACK), SkipReason.CORRUPT),  # 24 frames/s, 0 ticks a frame
        (header(tracks=0), SkipReason.NO_TRACKS),
        (header(tracks=0) + chunk(NOTE_TRACK), SkipReason.NO_TRACKS),  # symusic reads only as many as the header says
        (header(division=0) + chunk(NOTE_TRACK), SkipReason.CORRUPT),
        (b"MThd" + struct.pack(">IHHH", 2, 1, 1, 480) + chunk(NOTE_TRACK), SkipReason.CORRUPT),  # header length 2
        (header() + chunk(bytes([0x00, 0xF4, 0x01, 0x02]) + b"\x00" * 30), SkipReason.CORRUPT),  # undefined status
    ],
)
def test_each_skip_reason(tmp_path: Path, data: bytes, reason: SkipReason) -> None:
    with pytest.raises(MidiSkip) as caught:
        read_midi_file(write(tmp_path / "bad.mid", data))
    assert caught.value.reason is reason


TEMPO_THEN_NOTE = bytes([0x00, 0xFF, 0x51, 0x03, 0x0F, 0x42, 0x40]) + NOTE_TRACK  # a 60-qpm tempo event, then the note


@pytest.mark.parametrize(
    ("division", "ticks_per_second"),
    [(0xE828, 24 * 40), (0xE728, 25 * 40), (0xE350, 30000 / 1001 * 80), (0xE250, 30 * 80)],
)
def test_smpte_timed_files_are_read_as_time(tmp_path: Path, division: int, ticks_per_second: float) -> None:
    """SMPTE division (frames a second, ticks a frame) counts time, not beats: the note is 480 ticks long
    whatever the tempo event says, and quarters are read as half seconds (as scores are)."""
    content = read_midi_file(write(tmp_path / "smpte.mid", header(division=division) + chunk(TEMPO_THEN_NOTE)))
    (pitch, start, end, velocity), = notes(content, content.tracks[0], in_seconds=True)
    assert (pitch, start, velocity) == (60, 0.0, 90)
    assert end == pytest.approx(480 / ticks_per_second)
    assert notes(content, content.tracks[0])[0][2] == pytest.approx(480 / ticks_per_second * 2)  # quarters
    assert content.tempos == [(0.0, 120.0)]
    assert midi_tracks(content, SECOND)[0].notes[0].end == pytest.approx(480 / ticks_per_second)


def test_truncations_of_a_real_file_are_skipped_never_crash(tmp_path: Path) -> None:
    data = song(3, tmp_path / "song.mid").read_bytes()
    reasons = set()
    for cut in range(0, len(data), 7):
        try:
            read_midi_file(write(tmp_path / "cut.mid", data[:cut]))
        except MidiSkip as skip:
            reasons.add(skip.reason)
    assert reasons <= {SkipReason.EMPTY, SkipReason.TRUNCATED, SkipReason.CORRUPT}
    assert SkipReason.TRUNCATED in reasons


def test_mido_and_pretty_midi_written_files_read(tmp_path: Path) -> None:
    pretty_midi.PrettyMIDI().write(str(tmp_path / "nothing.mid"))  # a tempo track only: read, no instruments
    assert read_midi_file(tmp_path / "nothing.mid").tracks == []
    mido.MidiFile(type=1).save(str(tmp_path / "zero.mid"))  # mido writes a header with 0 tracks
    with pytest.raises(MidiSkip) as caught:
        read_midi_file(tmp_path / "zero.mid")
    assert caught.value.reason is SkipReason.NO_TRACKS


def test_a_longer_header_is_read_as_the_spec_says(tmp_path: Path) -> None:
    data = b"MThd" + struct.pack(">IHHHH", 8, 1, 1, 480, 0) + chunk(NOTE_TRACK)
    content = read_midi_file(write(tmp_path / "long_header.mid", data))
    assert notes(content, content.tracks[0]) == [(60, 0.0, 1.0, 90)]


# ---------------------------------------------------------------- what the old reader already did


def test_a_file_with_an_empty_track_is_still_read(tmp_path: Path) -> None:
    path = write(tmp_path / "empty_track.mid", header(tracks=2) + chunk(b"") + chunk(NOTE_TRACK))
    content = read_midi_file(path)
    (track,) = content.tracks
    assert notes(content, track) == [(60, 0.0, 1.0, 90)]
    assert notes(content, track, True) == [(60, 0.0, 0.5, 90)]
    # What the tokenizers get: tracks of Notes in quarters or in seconds.
    (quarters,) = midi_tracks(read_midi(path), QUARTER)
    (seconds,) = midi_tracks(read_midi(path), SECOND)
    assert [(n.pitch, n.start, n.end) for n in quarters.notes] == [(60, 0.0, 1.0)]
    assert [(n.pitch, n.start, n.end) for n in seconds.notes] == [(60, 0.0, 0.5)]


def test_drum_tracks_are_flagged(tmp_path: Path) -> None:
    tracks = read_midi_file(song(1, tmp_path / "song.mid")).tracks
    assert [(t.name, t.program, t.is_drum) for t in tracks] == [
        ("lead", 0, False),
        ("bass", 32, False),
        ("drums", 0, True),
    ]


def test_a_long_file_at_a_fine_resolution_reads(tmp_path: Path) -> None:
    # 1,200 quarters at music21's 10080 ticks per quarter: past pretty_midi's MAX_TICK (1e7) without re-timing
    mid = mido.MidiFile(type=0, ticks_per_beat=10080)
    track = mido.MidiTrack()
    for i in range(1200):
        track.append(mido.Message("note_on", note=60 + i % 12, velocity=80, time=0))
        track.append(mido.Message("note_off", note=60 + i % 12, velocity=0, time=10080))
    mid.tracks.append(track)
    mid.save(str(tmp_path / "long.mid"))
    content = read_midi_file(tmp_path / "long.mid")
    (read,) = [notes(content, t) for t in content.tracks]
    assert len(read) == 1200 and read[-1] == (60 + 1199 % 12, 1199.0, 1200.0, 80)
    assert content.duration_seconds() == pytest.approx(600.0)


def test_times_past_32_bits_are_corrupt_not_negative(tmp_path: Path) -> None:
    huge = bytes([0xFF, 0xFF, 0xFF, 0x7F, 0xFF, 0x01, 0x00]) * 10  # ten 0x0FFFFFFF deltas, each on an empty text
    with pytest.raises(MidiSkip) as caught:
        read_midi_file(write(tmp_path / "overflow.mid", header() + chunk(huge + NOTE_TRACK)))
    assert caught.value.reason is SkipReason.CORRUPT


# ---------------------------------------------------------------- metadata and equivalence with pretty_midi


def test_tempos_and_signatures(tmp_path: Path) -> None:
    content = read_midi_file(tempo_changes(tmp_path / "tempi.mid"))
    assert content.ticks_per_quarter == 384
    assert content.tempos == [(0.0, 120.0), (3.0, 150.0), (7.0 + 7 / 384, 80.0)]
    assert content.time_signatures == [(0.0, 3, 4), (7.0 + 107 / 384, 6, 8)]
    assert content.key_signatures == [(0.0, -3, "major"), (5.0, 3, "minor")]
    assert {(t.program, t.is_drum) for t in content.tracks} == {(40, False), (41, False), (0, False), (0, True)}


def test_no_tempo_means_120_qpm(tmp_path: Path) -> None:
    content = read_midi_file(write(tmp_path / "no_tempo.mid", header() + chunk(NOTE_TRACK)))
    assert content.tempos == [(0.0, 120.0)]
    assert notes(content, content.tracks[0], True) == [(60, 0.0, 0.5, 90)]


def test_same_notes_as_pretty_midi_with_tempo_changes_and_drums(tmp_path: Path) -> None:
    assert assert_same_notes(tempo_changes(tmp_path / "tempi.mid")) == 120
    for seed in range(3):
        assert assert_same_notes(song(seed, tmp_path / f"song{seed}.mid", qpm=80 + 20 * seed)) > 70


def test_same_notes_as_pretty_midi_for_a_music21_chorale(tmp_path: Path) -> None:
    music21 = pytest.importorskip("music21")
    path = tmp_path / "bwv66_6.mid"
    music21.corpus.parse("bach/bwv66.6").write("midi", fp=str(path))
    assert read_midi_file(path).ticks_per_quarter == 10080
    assert assert_same_notes(path) > 100


@pytest.mark.parametrize("path", MUSIC21_MIDI, ids=[p.name for p in MUSIC21_MIDI])
def test_same_notes_as_pretty_midi_for_music21s_test_files(path: Path) -> None:
    assert_same_notes(path)


# ---------------------------------------------------------------- primers


def test_primer_errors_are_one_line(tmp_path: Path) -> None:
    for data, says in ((b"", "empty file"), (b"hello", "not a MIDI file"), (header(), "truncated")):
        with pytest.raises(UserError, match=says) as caught:
            read_primer(write(tmp_path / "primer.mid", data), QUARTER)
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="not found"):
        read_primer(tmp_path / "missing.mid", QUARTER)
    with pytest.raises(UserError, match="no pitched notes"):
        read_primer(_drums_only(tmp_path), QUARTER)
    primer, length = read_primer(write(tmp_path / "p.mid", header() + chunk(b"\x00" + NOTE_TRACK[1:])), QUARTER)
    assert [(n.pitch, n.start, n.end) for n in primer] == [(60, 0.0, 1.0)] and length == 1.0


def _drums_only(tmp_path: Path) -> Path:
    pm = pretty_midi.PrettyMIDI()
    drums = pretty_midi.Instrument(0, is_drum=True)
    drums.notes.append(pretty_midi.Note(100, 36, 0.0, 0.25))
    pm.instruments.append(drums)
    pm.write(str(tmp_path / "drums.mid"))
    return tmp_path / "drums.mid"
