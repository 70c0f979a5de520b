"""The write-ahead journal's records on disk: how they are encoded, found after a crash, and checked.

Two ways a data set is in the journal (:mod:`dicomnode.store.journal` writes both):

* an **entry** (versions 1–3): header + metadata + the whole data set, written at once
  (``Journal.append``; 4 KiB aligned);
* a **streamed** data set (version 4): one *fragment* record per P-DATA fragment, written as the
  fragment arrives and tagged with its stream's id, and a *commit* record written last (the entry's
  sequence number — handed out at commit —, metadata, the stream id, where the fragments are, XXH3-64
  of the whole data set) (``JournalStream``). Fragments without a commit, or whose bytes do not add up
  to the commit's checksum, were never acknowledged and are ignored.

Finding records (:func:`scan`): the file is searched for the magic at any offset, not walked from the
start of each half. Records of concurrent associations are reserved in one order and written in
another, so a hole (a record reserved but not yet written when the machine stopped) must not hide
the records after it: an entry acknowledged after the hole would be lost. Freshness is the sequence
number alone: every record at or below the checkpoint watermark is ignored. A record whose checks
pass is stepped over whole, so a data set's own bytes are never read as records.

Header (36 bytes, all versions from 2): magic, version, kind, seq, a, b, CRC-32, check:

| version / kind | a | b | CRC-32 covers | check |
|---|---|---|---|---|
| 2 entry | metadata length | data length | metadata | XXH3-64 of the data |
| 3 entry | metadata length | data length | seq, a, b + metadata | XXH3-64 of the data |
| 4 fragment (seq: the stream id) | fragment index | fragment length | kind, seq, a, b | 0 |
| 4 commit | metadata length | table length | kind, seq, a, b + metadata + table | XXH3-64 of the data |

(version 1: the same up to the CRC, then the SHA-256 of the data; read only, so a journal left by an
unclean stop of an older node is replayed after an upgrade.) The data set's checksum is on the
acknowledgement path: XXH3 costs 0.01 ms per CT slice where CRC-32 costs 0.12 ms and SHA-256 0.3 ms. The
commit's table holds
the stream id, then (offset, length) of each fragment, in order. Stream ids count up from a random
start at each open, so a stale fragment of an earlier run never matches a new commit's table.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Sequence

import xxhash

from .digest import digest

MAGIC = b"ICHJ"
VERSION = 3  # entries (Journal.append); 3: the CRC-32 also covers the header's seq and lengths
STREAM_VERSION = 4  # fragments and commits (JournalStream)
ALIGN = 4096  # entries start on and fill whole 4 KiB blocks: one O_DSYNC write touches only its own
RECORD_ALIGN = 64  # fragments and commits: written through the page cache, packed
FRAGMENT, COMMIT = 1, 2

HEADER = struct.Struct("<4sHHQIIIQ")  # magic, version, kind (0 in entries), seq, a, b, crc32, check
_HEADER_V1 = struct.Struct("<4sHHQIII32s")  # … crc32(meta), sha256(data): read only
_COVERED = struct.Struct("<QII")  # seq, meta length, data length: what version 3's CRC covers besides the metadata
_COVERED4 = struct.Struct("<HQII")  # kind, seq, a, b
_TABLE = struct.Struct("<QI")  # a fragment's offset and length, in a commit's table
_ID = struct.Struct("<Q")  # the stream id, first in a commit's table


@dataclass(frozen=True)
class Entry:
    """One journaled data set, as needed to store it again."""

    seq: int
    sop_class: str
    sop_uid: str
    transfer_syntax: str
    calling_ae: str
    received_at: float
    data: bytes

    @property
    def digest(self) -> str:
        """dicomnode.store.digest of ``data`` (as the index keeps it)."""
        return digest([self.data])


def metadata(sop_class: str, sop_uid: str, transfer_syntax: str, calling_ae: str, received_at: float) -> bytes:
    return json.dumps([sop_class, sop_uid, transfer_syntax, calling_ae, received_at]).encode()


def entry_span(meta_len: int, data_len: int, header_size: int = HEADER.size) -> int:
    return -(-(header_size + meta_len + data_len) // ALIGN) * ALIGN


def record_span(payload_len: int) -> int:
    return -(-(HEADER.size + payload_len) // RECORD_ALIGN) * RECORD_ALIGN


def entry_header(seq: int, meta: bytes, chunks: Sequence[bytes | memoryview]) -> bytes:
    """A version 3 entry's header for ``meta`` + the data set ``chunks``."""
    check = xxhash.xxh3_64()
    size = 0
    for c in chunks:
        check.update(c)
        size += len(c)
    crc = zlib.crc32(meta, zlib.crc32(_COVERED.pack(seq, len(meta), size)))
    return HEADER.pack(MAGIC, VERSION, 0, seq, len(meta), size, crc, check.intdigest())


def fragment_header(seq: int, index: int, length: int) -> bytes:
    crc = zlib.crc32(_COVERED4.pack(FRAGMENT, seq, index, length))
    return HEADER.pack(MAGIC, STREAM_VERSION, FRAGMENT, seq, index, length, crc, 0)


def commit_size(meta_len: int, fragments: int) -> int:
    """Bytes of the commit record of a stream of ``fragments`` (its place is reserved before its seq is known)."""
    return HEADER.size + meta_len + _ID.size + fragments * _TABLE.size


def commit_record(seq: int, meta: bytes, stream_id: int, places: Sequence[tuple[int, int]], check: int) -> bytes:
    """The record that makes a streamed data set whole: ``places`` [(offset, length)] of its fragments."""
    table = _ID.pack(stream_id) + b"".join(_TABLE.pack(at, n) for at, n in places)
    crc = zlib.crc32(table, zlib.crc32(meta, zlib.crc32(_COVERED4.pack(COMMIT, seq, len(meta), len(table)))))
    return HEADER.pack(MAGIC, STREAM_VERSION, COMMIT, seq, len(meta), len(table), crc, check) + meta + table


# -- reading ---------------------------------------------------------------------------------------


def scan(buf, checkpointed: int) -> tuple[list[Entry], int]:
    """Intact data sets in ``buf`` (a journal file, mapped) newer than ``checkpointed``, by sequence
    number; and the highest sequence number of any intact record (the writer continues above it)."""
    entries: dict[int, Entry] = {}
    commits: list[int] = []
    top, pos, end = 0, 0, len(buf)
    while True:
        at = buf.find(MAGIC, pos)
        if at < 0 or at + HEADER.size > end:
            break
        found = _record(buf, at, checkpointed)
        if found is None:
            pos = at + 1
            continue
        seq, span, item = found
        if item != FRAGMENT:  # a fragment's seq is its stream's id
            top = max(top, seq)
        if isinstance(item, Entry):
            entries[seq] = item
        elif item == COMMIT and seq > checkpointed:
            commits.append(at)
        pos = at + span
    for at in commits:
        entry = entry_at(buf, at)
        if entry is not None:
            entries[entry.seq] = entry
    return [entries[s] for s in sorted(entries)], top


def entry_at(buf, at: int) -> Entry | None:
    """The data set whose entry or commit record starts at ``at``, if every check passes."""
    if at < 0 or at + HEADER.size > len(buf):
        return None
    found = _record(buf, at, 0)
    if found is None:
        return None
    seq, _, item = found
    if isinstance(item, Entry):
        return item
    if item != COMMIT:
        return None
    _, _, _, _, mlen, tlen, _, check = HEADER.unpack_from(buf, at)
    table = buf[at + HEADER.size + mlen:at + HEADER.size + mlen + tlen]
    (stream_id,) = _ID.unpack_from(table)
    parts = []
    for index, (place, length) in enumerate(_TABLE.iter_unpack(table[_ID.size:])):
        if buf[place:place + HEADER.size] != fragment_header(stream_id, index, length) \
                or place + HEADER.size + length > len(buf):
            return None
        parts.append(buf[place + HEADER.size:place + HEADER.size + length])
    data = b"".join(parts)
    if xxhash.xxh3_64_intdigest(data) != check:
        return None
    return _entry(seq, buf[at + HEADER.size:at + HEADER.size + mlen], data)


def _record(buf, at: int, checkpointed: int) -> "tuple[int, int, Entry | int | None] | None":
    """(seq, span to step over, what it is) of an intact record at ``at``:
    an :class:`Entry` (a fresh entry), FRAGMENT or COMMIT (version 4), None (an entry not newer than
    ``checkpointed``, its data not read). None when nothing intact starts there."""
    end = len(buf)
    _, version = struct.unpack_from("<4sH", buf, at)
    if version == STREAM_VERSION:
        _, _, kind, seq, a, b, crc, _ = HEADER.unpack_from(buf, at)
        covered = zlib.crc32(_COVERED4.pack(kind, seq, a, b))
        if kind == FRAGMENT:
            if crc != covered or at + HEADER.size + b > end:
                return None
            return seq, record_span(b), FRAGMENT
        if kind != COMMIT or at + HEADER.size + a + b > end:
            return None
        if zlib.crc32(buf[at + HEADER.size:at + HEADER.size + a + b], covered) != crc or b < _ID.size \
                or (b - _ID.size) % _TABLE.size:
            return None
        return seq, record_span(a + b), COMMIT
    fmt = {1: _HEADER_V1, 2: HEADER, 3: HEADER}.get(version)
    if fmt is None or at + fmt.size > end:
        return None
    _, _, _, seq, mlen, dlen, crc, check = fmt.unpack_from(buf, at)
    span = entry_span(mlen, dlen, fmt.size)
    if at + fmt.size + mlen + dlen > end:
        return None
    meta = buf[at + fmt.size:at + fmt.size + mlen]
    covered = zlib.crc32(_COVERED.pack(seq, mlen, dlen)) if version == 3 else 0
    if seq <= checkpointed:  # stale: only where it ends matters, and only a checked header says that
        return (seq, span, None) if version == 3 and zlib.crc32(meta, covered) == crc else None
    data = buf[at + fmt.size + mlen:at + fmt.size + mlen + dlen]
    intact = hashlib.sha256(data).digest() == check if version == 1 else xxhash.xxh3_64_intdigest(data) == check
    if zlib.crc32(meta, covered) != crc or not intact:
        return None
    entry = _entry(seq, meta, data)
    return (seq, span, entry) if entry is not None else None


def _entry(seq: int, meta: bytes, data: bytes) -> Entry | None:
    try:
        sop_class, sop_uid, ts, calling, received_at = json.loads(meta)
        return Entry(seq, str(sop_class), str(sop_uid), str(ts), str(calling), float(received_at), bytes(data))
    except (ValueError, TypeError):
        return None
