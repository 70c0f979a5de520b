"""Property-based fuzzing of the write-ahead journal's scan (``dicomnode.store.journal``), issue 13 part 5.

A journal of 16 blocks (two 32 KiB halves) takes up to 14 data sets of 0-9 kB — each appended whole,
streamed as three fragments and committed, or streamed and never committed — with checkpoints at
drawn points (so it wraps), then "crashes" (no close, no last checkpoint). Then the file is corrupted: bit
flips, byte writes, runs of 0x00/0xFF/random bytes (anywhere, or aimed at an entry header), a
truncation, or a garbage ``journal.checkpoint`` file; and reopened.

Properties:

* without corruption, :meth:`Journal.open` returns exactly the entries written after the last
  checkpoint, in sequence order, byte for byte;
* whatever the corruption, ``open()`` never raises and returns only entries whose data set and
  metadata are exactly as written, in strictly increasing sequence order.

Found by these properties and fixed (issue 13): an entry's sequence number was not covered by any
checksum (version 3 entries: the CRC-32 covers it); a journal of unexpected size was re-created without
being read (kept aside and read now); a corrupt checkpoint file stopped appends; racing checkpoints
could write an older watermark over a newer one.

``HYPOTHESIS_PROFILE=explore`` runs 20× the examples (random); ``CI`` set: derandomized (tests/conftest.py).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dicomnode.store.journal import ALIGN, CHECKPOINT_FILE, Journal

_SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1
CT = "1.2.840.10008.5.1.4.1.1.2"
TS = "1.2.840.10008.1.2.1"
SIZE = 16 * ALIGN


@pytest.fixture(scope="module", autouse=True)
def _no_syncfs():
    """A checkpoint's syncfs flushes the whole filesystem (seconds on a busy host); these tests crash the
    process, not the machine, so the page cache is as good as the disk."""
    from dicomnode.store import journal as journal_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(journal_module, "_syncfs", lambda fd: None)
        yield


def payload(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


def write_then_crash(path: Path, plan: list[tuple]) -> tuple[dict[str, tuple], int]:
    """Journal ``plan`` [(data size, checkpoint after it[, how])]; stop like a kill -9 would. How:
    ``append`` (one write), ``stream`` (fragments as they would arrive, then a commit; appended whole if
    the stream was abandoned, as the receiver does), ``open`` (fragments, no commit: never acknowledged).

    Returns ({sop_uid: (seq, sop_class, ts, calling AE, received_at, data)}, checkpoint watermark)."""
    j = Journal(path, SIZE, checkpoint_every_s=3600)
    assert j.open() == []
    written: dict[str, tuple] = {}
    for i, (size, checkpoint, *how) in enumerate(plan):
        how = how[0] if how else "append"
        data = payload(i, size)
        uid = f"1.2.826.0.1.3680043.10.1427.{i}"
        parts = [data[:size // 3], data[size // 3:size // 2], data[size // 2:]]
        seq = None
        if how != "append":
            stream = j.stream()
            for part in parts:
                stream.write(part)
            if how == "open":
                continue
            seq = stream.commit(CT, uid, TS, f"AE{i}", 1000.0 + i, size)
        if seq is None:
            seq = j.append(CT, uid, TS, f"AE{i}", 1000.0 + i, parts)
        if seq is not None:
            written[uid] = (seq, CT, TS, f"AE{i}", 1000.0 + i, data)
            j.done(seq)
        if checkpoint:
            j.checkpoint()
    j._stop.set()  # the crash: the checkpointer stops, no close() and no last checkpoint
    j._want_checkpoint.set()
    j._thread.join(10)
    os.close(j._fd)
    os.close(j._bfd)  # every example leaks nothing: fd numbers past 1024 break select() in later tests
    return written, j._checkpointed


def reopen(path: Path) -> list:
    j = Journal(path, SIZE, checkpoint_every_s=3600)
    try:
        return j.open()
    finally:
        if j._fd >= 0:
            j._stop.set()
            j._want_checkpoint.set()
            j._thread.join(10)
            os.close(j._fd)
            os.close(j._bfd)


def as_written(e) -> tuple:
    return e.seq, e.sop_class, e.transfer_syntax, e.calling_ae, e.received_at, e.data


PLAN = st.lists(st.tuples(st.integers(0, 9000), st.booleans(), st.sampled_from(["append", "stream", "open"])),
                max_size=14)
_WHERE = st.one_of(st.integers(0, SIZE - 1),                                # anywhere
                   st.tuples(st.integers(0, 15), st.integers(0, 47)).map(lambda b: b[0] * ALIGN + b[1]))  # a header
CORRUPTION = st.one_of(
    st.tuples(st.just("flip"), _WHERE, st.integers(0, 7)),
    st.tuples(st.just("set"), _WHERE, st.integers(0, 255)),
    st.tuples(st.just("fill"), _WHERE, st.sampled_from([0x00, 0xFF]), st.integers(1, 600)),
    st.tuples(st.just("random"), _WHERE, st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, SIZE - 1)),
    st.tuples(st.just("checkpoint file"), st.text(max_size=24)),
)


def corrupt(path: Path, ops: list[tuple]) -> None:
    raw = bytearray(path.read_bytes())
    rng = random.Random(len(ops))
    for op in ops:
        kind, where = op[0], op[1]
        if kind == "checkpoint file":
            path.with_name(CHECKPOINT_FILE).write_text(where)
            continue
        if not raw:
            break
        where %= len(raw)
        if kind == "flip":
            raw[where] ^= 1 << op[2]
        elif kind == "set":
            raw[where] = op[2]
        elif kind == "fill":
            n = min(op[3], len(raw) - where)
            raw[where:where + n] = bytes([op[2]]) * n
        elif kind == "random":
            n = min(op[2], len(raw) - where)
            raw[where:where + n] = rng.randbytes(n)
        elif kind == "truncate":
            del raw[where:]
    path.write_bytes(bytes(raw))


@settings(max_examples=120 * _SCALE)
@given(plan=PLAN)
def test_after_a_crash_exactly_the_entries_past_the_checkpoint_come_back(plan):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "receive.wal"
        written, watermark = write_then_crash(path, plan)
        on_disk = int(path.with_name(CHECKPOINT_FILE).read_text()) if path.with_name(CHECKPOINT_FILE).exists() else 0
        got = [as_written(e) for e in reopen(path)]
        after = sorted((w for w in written.values() if w[0] > watermark), key=lambda w: w[0])
        if on_disk == watermark:
            assert got == after
        else:  # a background checkpoint wrote its file just before the crash, not yet its memory
            assert on_disk > watermark  # never older: racing checkpoints do not write an older one
            assert got == sorted(w for w in written.values() if w[0] > on_disk)


@settings(max_examples=250 * _SCALE)
@given(plan=PLAN, ops=st.lists(CORRUPTION, min_size=1, max_size=5))
def test_a_corrupted_journal_opens_and_gives_back_only_intact_entries_in_order(plan, ops):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "receive.wal"
        written, _ = write_then_crash(path, plan)
        corrupt(path, ops)
        got = reopen(path)  # never raises
        seqs = [e.seq for e in got]
        assert seqs == sorted(set(seqs)), "not in strictly increasing sequence order"
        for e in got:
            assert e.sop_uid in written, e.sop_uid
            seq, sop_class, ts, calling, received_at, data = written[e.sop_uid]
            assert (e.sop_class, e.transfer_syntax, e.calling_ae, e.received_at) == (sop_class, ts, calling, received_at)
            assert e.data == data, f"entry {e.sop_uid}: data set changed"


# -- found by the properties above, fixed in dicomnode/journal.py (issue 13) -------------------------


FIRST_SEQ_AT = 8  # the first entry's header: magic (4), version (2), reserved (2), then seq (8)


@settings(max_examples=40 * _SCALE)
@given(plan=st.lists(st.tuples(st.integers(0, 3000), st.just(False)), min_size=2, max_size=6),
       byte=st.integers(0, 7), value=st.integers(1, 255))
@example(plan=[(100, False), (100, False)], byte=7, value=0xFF)
def test_a_returned_entry_carries_the_seq_it_was_written_with(plan, byte, value):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "receive.wal"
        written, _ = write_then_crash(path, plan)
        raw = bytearray(path.read_bytes())
        raw[FIRST_SEQ_AT + byte] ^= value
        path.write_bytes(bytes(raw))
        got = reopen(path)
        assert all(e.seq == written[e.sop_uid][0] for e in got), [(e.sop_uid, e.seq) for e in got]


def test_appends_go_on_after_an_entry_header_reads_back_as_0xff(tmp_path):
    path = tmp_path / "receive.wal"
    write_then_crash(path, [(100, False), (100, False)])
    raw = bytearray(path.read_bytes())
    raw[FIRST_SEQ_AT:FIRST_SEQ_AT + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    j = Journal(path, SIZE, checkpoint_every_s=3600)
    j.open()  # the caller replays what it returned, then checkpoints
    j.checkpoint()
    try:
        seq = j.append(CT, "1.2.3.4", TS, "AE", 2000.0, [b"a data set"])
        j.done(seq)
    finally:
        j.close()


def test_appends_go_on_after_a_corrupt_checkpoint_file(tmp_path):
    path = tmp_path / "receive.wal"
    write_then_crash(path, [(100, False)])
    path.with_name(CHECKPOINT_FILE).write_text("9" * 20)
    j = Journal(path, SIZE, checkpoint_every_s=3600)
    j.open()
    j.checkpoint()
    try:
        j.done(j.append(CT, "1.2.3.4", TS, "AE", 2000.0, [b"a data set"]))
    finally:
        j.close()


def test_a_journal_cut_short_still_gives_back_the_entries_before_the_cut(tmp_path):
    path = tmp_path / "receive.wal"
    written, _ = write_then_crash(path, [(1000, False), (1000, False), (1000, False)])
    raw = path.read_bytes()
    path.write_bytes(raw[:4 * ALIGN])  # the tail of the file is lost; the three entries lie before it
    assert [e.sop_uid for e in reopen(path)] == list(written)


def test_the_checkpoint_file_never_goes_back(tmp_path, monkeypatch):
    import threading

    from dicomnode.store import journal as journal_module

    j = Journal(tmp_path / "receive.wal", SIZE, checkpoint_every_s=3600)
    j.open()
    j.done(j.append(CT, "1.2.3.1", TS, "AE", 1.0, [b"first"]))
    release, first_in = threading.Event(), threading.Event()
    real_syncfs = journal_module._syncfs

    def slow_first_syncfs(fd):  # the first checkpoint is slow to flush (a busy disk)
        if threading.current_thread().name == "slow-checkpoint":
            first_in.set()
            release.wait(10)
        real_syncfs(fd)

    monkeypatch.setattr(journal_module, "_syncfs", slow_first_syncfs)
    slow = threading.Thread(target=j.checkpoint, name="slow-checkpoint")
    slow.start()
    assert first_in.wait(10)  # it has taken its watermark (1) and is flushing
    j.done(j.append(CT, "1.2.3.2", TS, "AE", 2.0, [b"second"]))
    assert j.checkpoint() == 2  # a second checkpoint passes it and writes 2
    release.set()
    slow.join(10)  # the first one finishes and writes its 1 over the 2
    try:
        assert (tmp_path / CHECKPOINT_FILE).read_text().strip() == str(j._checkpointed) == "2"
    finally:
        j.close()
