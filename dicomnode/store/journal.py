"""Write-ahead journal: a received data set is durable after ONE write, before the C-STORE answer.

Why: making each spool file durable on its own (write → fsync → rename → fsync dir) costs two
filesystem journal commits per image, ≈ 1 ms on the dev VM — more than everything else the node
does per CT slice (benchmarks/durable_write.py). Here the bytes go once, with ``O_DSYNC``, into a
pre-written journal file (an overwrite: no metadata change, ≈ 0.2 ms); the spool file and the index
row follow right after the answer, without their own fsync. A checkpoint (``syncfs`` of
the data directory's filesystem) later makes them durable in bulk and moves the journal's
watermark; after a crash :meth:`Journal.open` returns the entries past the watermark and the
receiver re-materialises them (``Receiver.replay``). That is how databases make commits cheap.

Layout: one file of ``size`` bytes in two halves. Entries are written back to back from the start
of a half (4 KiB aligned). When an entry does not fit, the writer moves to the other half, which
must be covered by a checkpoint first; a background thread checkpoints the half just left as soon
as the writer leaves it, so the writer normally never waits. Entries larger than a half are not
journaled (``append`` returns None; the caller makes that file durable the classic way).

An entry whose spool file or index row could not be written after its answer stays in flight (no
checkpoint passes it) and is read back with :meth:`Journal.read` to be stored again (the receiver
retries it). Should the writer need its half before that succeeds, it waits at most ``stall_s`` and
then raises :class:`JournalStalled`: the receiver answers "out of resources" (the peer sends again
later) instead of hanging, and nothing acknowledged is lost.

Entry: header (magic, version, seq, lengths, CRC-32 of the metadata, XXH3-64 of the data set) + the
small metadata JSON + the data set bytes. A torn or stale entry fails its magic, sequence or checksum
check and is ignored (its sender got no answer and sends again). The data set's checksum is on the
acknowledgement path: XXH3 costs 0.01 ms per CT slice where CRC-32 costs 0.12 ms and SHA-256 0.3 ms.
Version 1 entries (SHA-256 of the data set) are still read, so a journal left by an unclean stop of
an older node is replayed after an upgrade.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import xxhash

from ichutil.files import atomic_write_text, fsync_dir

from .digest import digest

log = logging.getLogger(__name__)

MAGIC = b"ICHJ"
VERSION = 3  # 3: the CRC-32 also covers the header's seq and lengths (2: metadata only; both still read)
ALIGN = 4096
_HEADER = struct.Struct("<4sHHQIIIQ")  # magic, version, reserved, seq, meta length, data length, crc32(meta), xxh3_64(data)
_HEADER_V1 = struct.Struct("<4sHHQIII32s")  # … crc32(meta), sha256(data): read only
_HEADERS = {1: _HEADER_V1, 2: _HEADER, 3: _HEADER}
_COVERED = struct.Struct("<QII")  # seq, meta length, data length: what version 3's CRC covers besides the metadata
CHECKPOINT_FILE = "journal.checkpoint"


class JournalStalled(OSError):
    """The writer needs a half that still holds entries not yet stored elsewhere."""


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
    span: int = 0  # bytes it takes in the journal file

    @property
    def digest(self) -> str:
        """dicomnode.store.digest of ``data`` (as the index keeps it)."""
        return digest([self.data])


@functools.lru_cache(maxsize=1)
def _libc_syncfs():
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name, use_errno=True), "syncfs", None) if name else None


def _syncfs(fd: int) -> None:
    """Flush every dirty page of the filesystem holding ``fd`` (Linux syncfs; else a global sync)."""
    fn = _libc_syncfs()
    if fn is None or fn(fd) != 0:
        os.sync()


class Journal:
    """The data directory's write-ahead journal (see the module docstring). Thread-safe."""

    def __init__(self, path: str | Path, size: int = 256 << 20, checkpoint_every_s: float = 30.0,
                 sync_paths: list[Path] | None = None, stall_s: float = 10.0) -> None:
        self.path = Path(path)
        self.sync_paths = [Path(p) for p in sync_paths or []]  # where the spool and index live (syncfs each)
        self.size = size - size % (2 * ALIGN)
        self.checkpoint_every_s = checkpoint_every_s
        self.stall_s = stall_s
        self._fd = -1
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._seq = 0              # last sequence number handed out
        self._checkpointed = 0     # every entry <= this is durable outside the journal
        self._half = 0             # half being written
        self._pos = 0              # next offset within the journal file
        self._half_last = [0, 0]   # highest seq written into each half
        self._inflight: dict[int, int] = {}  # seq -> offset of entries not yet stored elsewhere
        self._recovered = 0
        self._write_lock = threading.Lock()
        self._written = 0  # the watermark last written to the checkpoint file
        self._want_checkpoint = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"journaled": 0, "bypassed": 0, "checkpoints": 0, "waits": 0, "stalls": 0}

    # -- life cycle ----------------------------------------------------------------------------
    def open(self) -> list[Entry]:
        """Create (pre-written, fsynced) or reopen the journal; returns the entries written after
        the last checkpoint, oldest first. The caller stores them again and calls :meth:`checkpoint`
        before the first :meth:`append` (which would overwrite them)."""
        if self._fd >= 0:
            raise RuntimeError("journal already open")
        if self.size < 2 * ALIGN:
            raise ValueError(f"journal size {self.size} too small (at least {2 * ALIGN} bytes)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size != self.size:
            # cut short, or journal_mb changed after an unclean stop: keep it aside and read it below;
            # it is removed once its entries are stored again (see checkpoint)
            os.replace(self.path, self.path.with_name(f"{self.path.name}.previous-{time.time_ns()}"))
            fsync_dir(self.path.parent)
            self._prewrite(keep_checkpoint=True)
        elif not self.path.is_file():
            self._prewrite()
        self._checkpointed = self._read_checkpoint()
        entries = self._scan()
        for old in self._previous():
            known = {e.seq for e in entries}
            entries += [e for e in _scan_any(old, self._checkpointed) if e.seq not in known]
        entries.sort(key=lambda e: e.seq)
        self._seq = max([self._checkpointed] + [e.seq for e in entries])
        self._recovered = self._seq  # appends wait for a checkpoint past this (the caller's replay)
        self._written = self._checkpointed
        self._fd = os.open(self.path, os.O_RDWR | os.O_DSYNC)
        self._half, self._pos = 0, 0
        self._thread = threading.Thread(target=self._checkpointer, name="journal-checkpoint", daemon=True)
        self._thread.start()
        return [e for e in entries if e.seq > self._checkpointed]

    def close(self) -> None:
        """Checkpoint (everything stored is then durable) and release the file."""
        if self._fd < 0:
            return
        self._stop.set()
        self._want_checkpoint.set()
        if self._thread is not None:
            self._thread.join(30)
        self.checkpoint()
        os.close(self._fd)
        self._fd = -1

    # -- writing -------------------------------------------------------------------------------
    def append(self, sop_class: str, sop_uid: str, transfer_syntax: str, calling_ae: str, received_at: float,
               chunks: Sequence[bytes | memoryview]) -> int | None:
        """Durably journal one data set (``chunks`` joined, e.g. as its P-DATA fragments arrived);
        returns its sequence number (pass it to :meth:`done` once the spool file and index row
        exist), or None when it is too big to journal."""
        meta = json.dumps([sop_class, sop_uid, transfer_syntax, calling_ae, received_at]).encode()
        size = sum(len(c) for c in chunks)
        total = _HEADER.size + len(meta) + size
        span = -(-total // ALIGN) * ALIGN
        half_size = self.size // 2
        if span > half_size:
            self.stats["bypassed"] += 1
            return None
        with self._cond:
            if self._checkpointed < self._recovered:
                raise RuntimeError("journal: store the entries open() returned and checkpoint() before appending")
            if self._pos + span > (self._half + 1) * half_size:
                self._switch_half()
            self._seq += 1
            seq, at = self._seq, self._pos
            self._pos += span
            self._half_last[self._half] = seq
            self._inflight[seq] = at
        check = xxhash.xxh3_64()
        for c in chunks:
            check.update(c)
        crc = zlib.crc32(meta, zlib.crc32(_COVERED.pack(seq, len(meta), size)))
        header = _HEADER.pack(MAGIC, VERSION, 0, seq, len(meta), size, crc, check.intdigest())
        try:
            os.pwritev(self._fd, [header, meta, *chunks], at)
        except BaseException:
            self.done(seq)
            raise
        self.stats["journaled"] += 1
        return seq

    def done(self, seq: int | None) -> None:
        """The entry's spool file and index row are written (or it was abandoned)."""
        if seq is None:
            return
        with self._cond:
            self._inflight.pop(seq, None)

    def read(self, seq: int) -> Entry:
        """An entry still in flight, read back and checked (to store it again after a failure)."""
        with self._cond:
            at = self._inflight.get(seq)
        if at is None:
            raise KeyError(f"journal entry {seq} is not in flight")
        with open(self.path, "rb") as f:
            f.seek(at)
            entry = _read_entry(f, at, at + self.size // 2, 0, 0)
        if not isinstance(entry, Entry) or entry.seq != seq:
            raise OSError(f"journal entry {seq} fails its checks")
        return entry

    def _switch_half(self) -> None:
        """Move to the other half once a checkpoint covers what it holds (lock held)."""
        other = 1 - self._half
        self._want_checkpoint.set()  # covers the half we leave; normally done long before we return
        deadline = time.monotonic() + self.stall_s
        while self._half_last[other] > self._checkpointed:
            if time.monotonic() > deadline:
                self.stats["stalls"] += 1
                raise JournalStalled(f"{len(self._inflight)} journal entries not yet stored elsewhere after "
                                     f"{self.stall_s:.0f} s (spool or index failing)")
            self.stats["waits"] += 1
            self._want_checkpoint.set()
            self._cond.wait(0.2)
        self._half, self._pos = other, other * (self.size // 2)

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> int:
        """Make everything stored so far durable (syncfs) and move the watermark; returns it."""
        with self._cond:
            upto = (min(self._inflight) - 1) if self._inflight else self._seq
        if upto <= self._checkpointed or self._fd < 0:
            return self._checkpointed
        _syncfs(self._fd)
        for p in self.sync_paths:  # usually the same filesystem: then nothing is left to flush
            fd = os.open(p, os.O_RDONLY)
            try:
                _syncfs(fd)
            finally:
                os.close(fd)
        with self._write_lock:  # checkpoints may race (background thread, receiver): never write an older one
            if upto > self._written:
                atomic_write_text(self.path.with_name(CHECKPOINT_FILE), str(upto))
                self._written = upto
            if upto >= self._recovered:
                for old in self._previous():  # its entries have been stored again and flushed
                    old.unlink(missing_ok=True)
        with self._cond:
            self._checkpointed = max(self._checkpointed, upto)
            self._cond.notify_all()
        self.stats["checkpoints"] += 1
        return upto

    def _checkpointer(self) -> None:
        while not self._stop.is_set():
            self._want_checkpoint.wait(self.checkpoint_every_s)
            self._want_checkpoint.clear()
            if self._stop.is_set():
                return
            try:
                self.checkpoint()
            except OSError:
                log.exception("journal checkpoint failed (will retry)")
                time.sleep(1.0)
                self._want_checkpoint.set()

    # -- reading -------------------------------------------------------------------------------
    def _previous(self) -> list[Path]:
        """Journal files of another size kept aside until their entries are stored again."""
        return sorted(self.path.parent.glob(f"{self.path.name}.previous-*"))

    def _prewrite(self, keep_checkpoint: bool = False) -> None:
        """Write the whole file once (zeros) so later O_DSYNC writes only overwrite data blocks."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        chunk = bytes(1 << 20)
        with open(tmp, "wb") as f:
            left = self.size
            while left:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        if not keep_checkpoint:
            self.path.with_name(CHECKPOINT_FILE).unlink(missing_ok=True)

    def _read_checkpoint(self) -> int:
        """The watermark; 0 (replay everything the journal holds: replay is idempotent) when unreadable."""
        try:
            value = int(self.path.with_name(CHECKPOINT_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0
        if not 0 <= value < 1 << 63:
            log.warning("journal checkpoint file holds %d: ignored, every entry in the journal is checked again", value)
            return 0
        return value

    def _scan(self) -> list[Entry]:
        """Valid entries of both halves, by sequence number (each half is read from its start until
        an entry fails its checks or its sequence stops increasing)."""
        out: list[Entry] = []
        half_size = self.size // 2
        with open(self.path, "rb") as f:
            for half in (0, 1):
                pos, end, last = half * half_size, (half + 1) * half_size, 0
                while True:
                    f.seek(pos)
                    entry = _read_entry(f, pos, end, last, self._checkpointed)
                    if entry is None:
                        break
                    if isinstance(entry, Entry):
                        out.append(entry)
                        last, pos = entry.seq, pos + entry.span
                    else:  # (seq, span) of an entry flushed long ago: only its order matters
                        last, pos = entry[0], pos + entry[1]
        return sorted(out, key=lambda e: e.seq)


def _scan_any(path: Path, checkpointed: int) -> list[Entry]:
    """Entries past ``checkpointed`` anywhere in a journal file of unknown layout (every 4 KiB boundary)."""
    out: list[Entry] = []
    end = path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos < end:
            f.seek(pos)
            entry = _read_entry(f, pos, end, 0, checkpointed)
            if isinstance(entry, Entry):
                out.append(entry)
                pos += entry.span
            else:
                pos += entry[1] if entry else ALIGN
    return out


def _read_entry(f, pos: int, end: int, last: int, checkpointed: int) -> "Entry | tuple[int, int] | None":
    """The entry at ``pos`` (file positioned there) if it is intact, newer than ``last`` and ends by
    ``end``; only (seq, span), without reading its data, when it is not newer than ``checkpointed``."""
    head = f.read(_HEADER_V1.size)
    if len(head) < _HEADER_V1.size:
        return None
    magic, version = struct.unpack_from("<4sH", head)
    fmt = _HEADERS.get(version)
    if magic != MAGIC or fmt is None:
        return None
    _, _, _, seq, mlen, dlen, crc, check = fmt.unpack_from(head)
    span = -(-(fmt.size + mlen + dlen) // ALIGN) * ALIGN
    if seq <= last or pos + span > end:
        return None
    if seq <= checkpointed:
        return seq, span
    f.seek(pos + fmt.size)
    payload = f.read(mlen + dlen)
    data = payload[mlen:]
    if version == 1:
        intact = hashlib.sha256(data).digest() == check
    else:
        intact = xxhash.xxh3_64_intdigest(data) == check
    covered = zlib.crc32(_COVERED.pack(seq, mlen, dlen)) if version >= 3 else 0
    if zlib.crc32(payload[:mlen], covered) != crc or not intact:
        return None
    try:
        sop_class, sop_uid, ts, calling, received_at = json.loads(payload[:mlen])
        return Entry(seq, sop_class, sop_uid, ts, calling, float(received_at), data, span)
    except (ValueError, TypeError):
        return None
