"""What the C-STORE fuzz harness (benchmarks/fuzz_store.py) found the receiver acknowledging, issue 13.

The receiver reads a data set's header up to (0020,0013) and keeps the rest as received. Data sets that
are broken after that point are answered 0x0000 and stored; the analysis reads them later and fails
(the harness's node logs: ``RecursionError``, ``Error -5 while decompressing data``), after the
sender has been told they are stored. Now the receiver walks the whole top-level structure before it answers (``header.check_complete``)
and refuses them with 0xC000. The first test is the control: the intact slice is stored.
"""

from __future__ import annotations

import io
import struct
import zlib

import pydicom
import pytest

from dicomnode.config import NodeConfig
from dicomnode.store.index import Index
from dicomnode.scp import Receiver
from dicomnode.store.spool import Spool

EXPLICIT, DEFLATED = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"
PIXEL_DATA_OW = struct.pack("<HH2sH", 0x7FE0, 0x0010, b"OW", 0)  # explicit VR long header, then a 4-byte length


@pytest.fixture
def slice_(ct_data):
    path = [p for p in sorted((ct_data / "philips-phantom-5mm").iterdir()) if p.name != "DIRFILE"][0]
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    fp.seek(132)
    meta = pydicom.filereader._read_file_meta_info(fp)
    assert str(meta.TransferSyntaxUID) == EXPLICIT
    return str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), raw[fp.tell():]


@pytest.fixture
def receiver(tmp_path):
    return Receiver(NodeConfig(), Index(tmp_path / "index.sqlite3"), Spool(tmp_path / "spool"))


def deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(raw) + c.flush()


def test_control_the_intact_slice_is_stored(receiver, slice_):
    sop_class, sop_uid, body = slice_
    assert receiver.answer(sop_class, sop_uid, EXPLICIT, body, "FUZZ") == (0x0000, "")
    assert receiver.answer(sop_class, sop_uid + "1", DEFLATED, deflate(_with_uid(body, sop_uid, sop_uid + "1")),
                           "FUZZ") == (0x0000, "")


def test_a_data_set_cut_inside_its_pixel_data_is_refused(receiver, slice_):
    sop_class, sop_uid, body = slice_
    status, comment = receiver.answer(sop_class, sop_uid, EXPLICIT, body[:-100_000], "FUZZ")
    assert status == 0xC000, (hex(status), comment)


def test_a_deflated_stream_cut_short_is_refused(receiver, slice_):
    sop_class, sop_uid, body = slice_
    wire = deflate(body)
    status, comment = receiver.answer(sop_class, sop_uid, DEFLATED, wire[:len(wire) // 2], "FUZZ")
    assert status == 0xC000, (hex(status), comment)


def test_a_sequence_never_closed_after_the_header_is_refused(receiver, slice_):
    sop_class, sop_uid, body = slice_
    at = body.index(PIXEL_DATA_OW)
    sequence = struct.pack("<HH2sHI", 0x0040, 0x0275, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                                            0xFFFFFFFF)
    status, comment = receiver.answer(sop_class, sop_uid, EXPLICIT, body[:at] + sequence + body[at:], "FUZZ")
    assert status == 0xC000, (hex(status), comment)


def _with_uid(body: bytes, old: str, new: str) -> bytes:
    """``body`` with its SOPInstanceUID element replaced (explicit VR, short length)."""
    enc_old, enc_new = old.encode(), new.encode()
    enc_old += b"\0" * (len(enc_old) % 2)
    enc_new += b"\0" * (len(enc_new) % 2)
    head = struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", len(enc_old)) + enc_old
    assert body.count(head) == 1
    return body.replace(head, struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", len(enc_new)) + enc_new)


def streamed(receiver, sop_class: str, sop_uid: str, ts: str, data: bytes, head: int = 64 << 10) -> tuple[int, str]:
    """Through the sink a data set too large for memory goes to (fast_store streams past stream_over_mb)."""
    sink = receiver.open_stream(sop_class, sop_uid, ts, "FUZZ", [memoryview(data)[:head]])
    for at in range(head, len(data), 256 << 10):
        sink.write(memoryview(data)[at:at + (256 << 10)])
    return sink.finish()


def test_control_an_intact_slice_streams_and_is_stored(receiver, slice_):
    sop_class, sop_uid, body = slice_
    assert streamed(receiver, sop_class, sop_uid, EXPLICIT, body) == (0x0000, "")


def test_a_streamed_data_set_cut_inside_its_pixel_data_is_refused(receiver, slice_):
    sop_class, sop_uid, body = slice_
    status, comment = streamed(receiver, sop_class, sop_uid, EXPLICIT, body[:-100_000])
    assert status == 0xC000, (hex(status), comment)
