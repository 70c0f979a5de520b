"""Write-ahead journal: what comes back after a crash, torn entries, wrap-around, and the receiver's replay."""

from __future__ import annotations

import os
import sqlite3
import threading

import pydicom
import pytest

from dicomnode.store.digest import digest
from dicomnode.store.index import Index
from dicomnode.store.journal import ALIGN, Journal
from dicomnode.scp import Receiver
from dicomnode.config import NodeConfig
from dicomnode.store.spool import Spool

CT = "1.2.840.10008.5.1.4.1.1.2"
TS = "1.2.840.10008.1.2.1"


def put(j: Journal, i: int, size: int = 3000) -> tuple[int, bytes]:
    data = bytes([i % 251]) * size
    seq = j.append(CT, f"1.2.3.{i}", TS, "PACS", 1000.0 + i, [data[:1000], data[1000:]])
    j.done(seq)
    return seq, data


def crash(j: Journal) -> None:
    """Stop ``j`` as a kill -9 would: the checkpointer stops where it is, no final checkpoint; its files closed."""
    j._stop.set()
    j._want_checkpoint.set()
    j._thread.join(10)
    os.close(j._fd)
    os.close(j._bfd)


def test_entries_after_the_last_checkpoint_come_back_after_a_crash(tmp_path):
    path = tmp_path / "j" / "receive.wal"
    j = Journal(path, 1 << 20)
    assert j.open() == []
    put(j, 1)
    j.checkpoint()
    _, d2 = put(j, 2)
    _, d3 = put(j, 3)
    # crash: no close(); a new process opens the same file
    again = Journal(path, 1 << 20)
    entries = again.open()
    assert [(e.sop_uid, e.data) for e in entries] == [("1.2.3.2", d2), ("1.2.3.3", d3)]
    assert entries[0].sop_class == CT and entries[0].transfer_syntax == TS and entries[0].calling_ae == "PACS"
    assert entries[0].received_at == 1002.0
    with pytest.raises(RuntimeError, match="checkpoint"):
        put(again, 4)  # would overwrite what has not been stored again yet
    again.checkpoint()
    put(again, 4)
    again.close()
    assert Journal(path, 1 << 20).open() == []  # a clean stop leaves nothing to replay


def test_a_torn_entry_is_ignored_and_does_not_hide_the_entries_after_it(tmp_path):
    """Two associations reserve places in one order and write in another: when the machine stops, the
    earlier place may be a hole (never written) or torn while a later entry was written and
    acknowledged. That later entry must come back (the scan used to stop at the first bad entry)."""
    path = tmp_path / "receive.wal"
    j = Journal(path, 1 << 20)
    j.open()
    seqs = [put(j, i)[0] for i in range(4)]
    raw = bytearray(path.read_bytes())
    raw[ALIGN + 100] ^= 0xFF  # inside the second entry's data (each 3 kB entry takes one 4 KiB block)
    raw[2 * ALIGN:3 * ALIGN] = bytes(ALIGN)  # the third: a hole
    path.write_bytes(bytes(raw))
    entries = Journal(path, 1 << 20).open()
    assert [e.seq for e in entries] == [seqs[0], seqs[3]]


def test_an_entry_written_by_a_version_1_journal_is_still_replayed(tmp_path):
    import hashlib
    import json
    import struct
    import zlib

    path = tmp_path / "receive.wal"
    j = Journal(path, 1 << 20)
    j.open()
    j.close()
    meta = json.dumps([CT, "1.2.3.9", TS, "PACS", 1009.0]).encode()
    data = b"an older node's entry" * 50
    v1 = struct.pack("<4sHHQIII32s", b"ICHJ", 1, 0, 1, len(meta), len(data), zlib.crc32(meta),
                     hashlib.sha256(data).digest())
    raw = bytearray(path.read_bytes())
    raw[:len(v1) + len(meta) + len(data)] = v1 + meta + data
    path.write_bytes(bytes(raw))
    (tmp_path / "journal.checkpoint").write_text("0")
    [entry] = Journal(path, 1 << 20).open()
    assert (entry.seq, entry.sop_uid, entry.data, entry.received_at) == (1, "1.2.3.9", data, 1009.0)
    raw[len(v1) + len(meta) + 3] ^= 0xFF  # torn: its SHA-256 no longer matches
    path.write_bytes(bytes(raw))
    assert Journal(path, 1 << 20).open() == []


def test_too_big_for_a_half_is_not_journaled(tmp_path):
    j = Journal(tmp_path / "receive.wal", 4 * ALIGN)
    j.open()
    data = bytes(3 * ALIGN)
    assert j.append(CT, "1.2.3", TS, "", 0.0, [data]) is None
    assert j.stats["bypassed"] == 1


def test_wrapping_waits_for_checkpoints_and_keeps_only_recent_entries(tmp_path):
    """64 kB halves, 3 kB entries: hundreds of appends from two threads wrap many times; after a
    crash only entries newer than the last checkpoint come back, newest intact."""
    path = tmp_path / "receive.wal"
    j = Journal(path, 32 * ALIGN, checkpoint_every_s=60)
    j.open()
    last: dict[str, int] = {}

    def writer(base: int) -> None:
        for i in range(base, base + 150):
            seq, _ = put(j, i)
            last[f"1.2.3.{i}"] = seq

    threads = [threading.Thread(target=writer, args=(b,)) for b in (0, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert j.stats["checkpoints"] >= 10 and j.stats["journaled"] == 300
    crash(j)
    entries = Journal(path, 32 * ALIGN).open()
    assert entries and all(e.seq > j._checkpointed for e in entries)
    assert max(e.seq for e in entries) == max(last.values())
    for e in entries:
        assert e.data == bytes([int(e.sop_uid.rsplit(".", 1)[1]) % 251]) * 3000


# -- the receiver's replay ------------------------------------------------------------------------


def dataset(ct_data, k: int = 0, **changes):
    src = [p for p in sorted((ct_data / "philips-phantom-5mm").iterdir()) if p.name != "DIRFILE"][k]
    ds = pydicom.dcmread(src)
    for key, value in changes.items():
        setattr(ds, key, value)
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buf, ds)
    return ds, buf.getvalue()


def receiver(root, journal: Journal | None):
    return Receiver(NodeConfig(), Index(root / "index.sqlite3"), Spool(root / "spool"), journal)


def test_replay_restores_what_a_power_loss_took_and_never_rolls_back(tmp_path, ct_data):
    j = Journal(tmp_path / "journal" / "receive.wal", 1 << 24, checkpoint_every_s=3600)  # no checkpoint here
    j.open()
    rx = receiver(tmp_path, j)
    stored = {}
    for k in range(3):
        ds, body = dataset(ct_data, k)
        stored[ds.SOPInstanceUID] = rx.store(str(ds.SOPClassUID), ds.SOPInstanceUID, TS, body, "PACS")
    first_uid = next(iter(stored))
    ds, changed = dataset(ct_data, 0, WindowCenter="41")  # the same instance sent again, changed
    rx.store(str(ds.SOPClassUID), first_uid, TS, changed, "PACS")
    # a process crash loses nothing (page cache): replay finds every file intact, rewrites none
    rx2 = receiver(tmp_path, Journal(j.path, 1 << 24, checkpoint_every_s=3600))
    assert rx2.replay(rx2.journal.open()) == 0
    # a power loss loses unflushed work: spool files torn, one index row gone
    for item in stored.values():
        item.path.write_bytes(b"")
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.execute("DELETE FROM instances WHERE sop_uid = ?", (list(stored)[2],))
    rx3 = receiver(tmp_path, again := Journal(j.path, 1 << 24, checkpoint_every_s=3600))
    assert rx3.replay(again.open()) == 3
    rx2 = rx3
    for uid, item in stored.items():
        info = rx2.index.instance(uid)
        expected = changed if uid == first_uid else dataset(ct_data, list(stored).index(uid))[1]
        assert info is not None and info.digest == digest([expected])
        assert item.path.read_bytes().endswith(expected)
    again.checkpoint()
    again.close()


def test_journaled_store_can_defer_its_spool_file_and_index_row_until_after_the_answer(tmp_path, ct_data):
    j = Journal(tmp_path / "journal" / "receive.wal", 1 << 24, checkpoint_every_s=3600)
    j.open()
    rx = receiver(tmp_path, j)
    seen = []
    rx.on_stored(seen.append)
    ds, body = dataset(ct_data, 0)
    later: list = []
    assert rx.store(str(ds.SOPClassUID), ds.SOPInstanceUID, TS, body, "PACS", later=later) is None
    assert len(later) == 1 and rx.index.instance(ds.SOPInstanceUID) is None and seen == []
    # durable already: a crash now would bring it back from the journal
    assert [e.sop_uid for e in Journal(j.path, 1 << 24)._scan()] == [ds.SOPInstanceUID]
    later[0]()
    assert rx.index.instance(ds.SOPInstanceUID).digest == digest([body])
    assert [item.sop_uid for item in seen] == [ds.SOPInstanceUID]
    # no journal: nothing is deferred (the spool file's own fsyncs make it durable before the answer)
    plain = receiver(tmp_path / "plain", None)
    later = []
    assert plain.store(str(ds.SOPClassUID), ds.SOPInstanceUID, TS, body, "PACS", later=later) is not None
    assert later == []
    j.close()


def test_a_spool_failure_after_the_answer_keeps_the_entry_for_the_next_start(tmp_path, ct_data, monkeypatch):
    j = Journal(tmp_path / "journal" / "receive.wal", 1 << 24, checkpoint_every_s=3600)
    j.open()
    rx = receiver(tmp_path, j)
    ds, body = dataset(ct_data, 0)
    later: list = []
    rx.store(str(ds.SOPClassUID), ds.SOPInstanceUID, TS, body, "PACS", later=later)
    monkeypatch.setattr(rx.spool, "write", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone")))
    later[0]()  # logged as critical, not raised: the peer has its answer already
    assert rx.index.instance(ds.SOPInstanceUID) is None
    assert j.checkpoint() == 0  # the watermark does not pass the entry ...
    monkeypatch.undo()
    again = Journal(j.path, 1 << 24)
    rx2 = receiver(tmp_path, again)
    assert rx2.replay(again.open()) == 1  # ... so the next start stores it
    assert rx2.index.instance(ds.SOPInstanceUID) is not None


def test_the_writer_refuses_instead_of_hanging_when_an_entry_never_lands(tmp_path):
    import time

    from dicomnode.store.journal import JournalStalled

    j = Journal(tmp_path / "j" / "receive.wal", 8 * ALIGN, stall_s=0.3)  # halves of 4 pages
    j.open()
    stuck = j.append(CT, "1.2.3.1", TS, "PACS", 1.0, [b"x" * 100])  # answered, never written elsewhere
    for i in range(2, 9):  # fills both halves
        put(j, i, size=100)
    t0 = time.monotonic()
    with pytest.raises(JournalStalled):
        put(j, 9, size=100)
    assert time.monotonic() - t0 < 3 and j.stats["stalls"] == 1
    assert j.read(stuck).data == b"x" * 100  # still there to be stored again
    j.done(stuck)
    put(j, 10, size=100)  # and once it has landed, writing goes on
    j.close()


def test_a_failure_after_the_answer_is_retried_from_the_journal_and_ingest_goes_on(tmp_path, ct_data, monkeypatch):
    """One index write fails after its answer; then more than the journal's size arrives: every instance lands."""
    j = Journal(tmp_path / "journal" / "receive.wal", 4 << 20, stall_s=20)  # 2 MB halves: ≈ 3 slices each
    j.open()
    rx = receiver(tmp_path, j)
    calls = []
    record = rx.index.record_instance

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise sqlite3.OperationalError("database is locked")
        return record(*a, **k)

    monkeypatch.setattr(rx.index, "record_instance", flaky)
    sent = []
    for i in range(20):  # ≈ 10 MB through a 4 MB journal
        ds, body = dataset(ct_data, i)
        later: list = []
        status, _ = rx.answer(str(ds.SOPClassUID), ds.SOPInstanceUID, TS, body, "PACS", later)
        assert status == 0
        for work in later:
            work()
        sent.append((ds.SOPInstanceUID, body))
    deadline = __import__("time").monotonic() + 10
    while rx._owed and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.05)
    for uid, body in sent:
        info = rx.index.instance(uid)
        assert info is not None and digest([body]) == info.digest and rx._intact(info)
    assert j.stats["stalls"] == 0 and rx.stats.failures == {0x0110: 1}
    rx.close()
    j.close()


# -- streams: a data set journaled fragment by fragment as it arrives -------------------------------


def stream_in(j: Journal, i: int, parts: list[bytes], commit: bool = True) -> int | None:
    stream = j.stream()
    for part in parts:
        stream.write(part)
    if not commit:
        return None
    return stream.commit(CT, f"1.2.3.{i}", TS, "PACS", 1000.0 + i, sum(map(len, parts)))


def test_a_committed_stream_comes_back_after_a_crash_and_an_open_one_does_not(tmp_path):
    path = tmp_path / "receive.wal"
    j = Journal(path, 1 << 20, checkpoint_every_s=3600)
    j.open()
    parts = [b"a" * 700, b"b" * 16000, b"", b"c" * 3]
    committed = stream_in(j, 1, parts)
    assert committed is not None and j.stats["streamed"] == 1
    assert j.read(committed).data == b"".join(parts)  # to store it again after a failure
    stream_in(j, 2, [b"never acknowledged"], commit=False)
    _, appended = put(j, 3)
    entries = Journal(path, 1 << 20).open()  # the crash: no close
    assert [(e.sop_uid, e.data) for e in entries] == [("1.2.3.1", b"".join(parts)), ("1.2.3.3", appended)]
    assert entries[0].calling_ae == "PACS" and entries[0].received_at == 1001.0


def test_a_commit_record_takes_exactly_the_place_reserved_for_it():
    from dicomnode.store import journal_records as records

    meta = records.metadata(CT, "1.2.3", TS, "PACS", 1.0)
    for n in (1, 2, 40):
        places = [(i * 70000, 65000) for i in range(n)]
        assert len(records.commit_record(7, meta, 2**55, places, 123)) == records.commit_size(len(meta), n)


def test_a_stream_that_does_not_hold_the_whole_data_set_is_not_committed(tmp_path):
    j = Journal(tmp_path / "receive.wal", 1 << 20)
    j.open()
    stream = j.stream()
    stream.write(b"x" * 100)
    assert stream.commit(CT, "1.2.3", TS, "PACS", 1.0, 101) is None  # the caller appends it whole
    too_big = j.stream()
    too_big.write(bytes(j.size // 4 + 1))
    assert not too_big.open and too_big.commit(CT, "1.2.4", TS, "PACS", 1.0, j.size // 4 + 1) is None
    assert j.checkpoint() == j._seq  # abandoned streams hold no checkpoint back
    j.close()


def test_a_torn_fragment_voids_its_data_set(tmp_path):
    path = tmp_path / "receive.wal"
    j = Journal(path, 1 << 20, checkpoint_every_s=3600)
    j.open()
    stream_in(j, 1, [b"x" * 5000, b"y" * 5000])
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"y" * 100) + 7] ^= 0x01  # a page of the second fragment never reached the disk whole
    path.write_bytes(bytes(raw))
    assert Journal(path, 1 << 20).open() == []


def test_an_open_stream_never_stalls_the_writer_it_is_abandoned(tmp_path):
    """A peer that starts a data set and then sends nothing must not hold half the journal: when the
    writer needs that half, the stream is dropped (its data set is still in memory and will be
    appended whole) instead of every other association waiting for it."""
    j = Journal(tmp_path / "receive.wal", 8 * ALIGN, stall_s=0.5)  # halves of 4 pages
    j.open()
    slow = j.stream()
    slow.write(b"first fragment")
    for i in range(20):  # wraps both halves several times
        put(j, i, size=100)
    assert j.stats["stalls"] == 0 and j.stats["streams_abandoned"] == 1
    assert slow.commit(CT, "1.2.3.99", TS, "PACS", 1.0, len(b"first fragment")) is None
    j.close()


def test_streams_and_appends_from_many_threads_wrap_and_come_back_intact(tmp_path):
    """Three threads stream (fragments interleaved with each other's in the file), one appends; 64 kB
    halves wrap many times. After a crash, every data set past the watermark comes back byte for byte."""
    path = tmp_path / "receive.wal"
    j = Journal(path, 32 * ALIGN, checkpoint_every_s=60)
    j.open()
    expect: dict[str, bytes] = {}
    errors: list = []

    def streamer(base: int) -> None:
        try:
            for i in range(base, base + 120):
                data = bytes([i % 251]) * (500 + 37 * (i % 50))
                parts = [data[k:k + 700] for k in range(0, len(data), 700)]
                seq = stream_in(j, i, parts)
                if seq is None:
                    seq = j.append(CT, f"1.2.3.{i}", TS, "PACS", 1000.0 + i, parts)
                expect[f"1.2.3.{i}"] = data
                j.done(seq)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def appender() -> None:
        for i in range(5000, 5120):
            _, expect[f"1.2.3.{i}"] = put(j, i, size=1500)

    threads = [threading.Thread(target=streamer, args=(b,)) for b in (0, 1000, 2000)]
    threads.append(threading.Thread(target=appender))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert j.stats["streamed"] > 100 and j.stats["checkpoints"] >= 10
    crash(j)
    entries = Journal(path, 32 * ALIGN).open()
    assert entries and all(e.seq > j._checkpointed for e in entries)
    assert max(e.seq for e in entries) >= j._seq - 3
    for e in entries:
        assert e.data == expect[e.sop_uid]
