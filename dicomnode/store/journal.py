"""Write-ahead journal: a received data set is durable after ONE write, before the C-STORE answer.

Why: making each spool file durable on its own (write → fsync → rename → fsync dir) costs two
filesystem journal commits per image, ≈ 1 ms on the dev VM — more than everything else the node
does per CT slice (benchmarks/durable_write.py). Here the bytes go once, with ``O_DSYNC``, into a
pre-written journal file (an overwrite: no metadata change, ≈ 0.2 ms); the spool file and the index
row follow right after the answer, without their own fsync. A checkpoint (``syncfs`` of
the data directory's filesystem) later makes them durable in bulk and moves the journal's
watermark; after a crash :meth:`Journal.open` returns the entries past the watermark and the
receiver re-materialises them (``Receiver.replay``). That is how databases make commits cheap.

Layout: one file of ``size`` bytes in two halves, records written back to back through each half
(their format and the crash scan: :mod:`dicomnode.store.journal_records`). When a record does not fit,
the writer moves to the other half, which must be covered by a checkpoint first; a background thread
checkpoints the half just left as soon as the writer leaves it, so the writer normally never waits.
Data sets larger than a half are not journaled (``append`` returns None; the caller makes that file
durable the classic way).

Two ways in: :meth:`Journal.append` writes a whole data set with one O_DSYNC write;
:meth:`Journal.stream` takes it fragment by fragment *as the peer sends it*: each fragment goes to the
page cache and its write-out starts at once (``sync_file_range``), and ``commit`` writes a small
commit record and waits for one ``fdatasync``. The disk then works while the network does: a minimal
receiver written this way reaches storescp's rate on the dev VM where one O_DSYNC write per data set
does not (docs/node-receive.md, session 17); the node itself, whose receiving thread has no network wait
to hide the writes behind, measured slower with it (session 18), so ``storage.journal_write`` defaults
to ``dataset``. A stream that would hold a half the writer needs is abandoned (its data set is still in
memory: the caller appends it whole instead).

An entry whose spool file or index row could not be written after its answer stays in flight (no
checkpoint passes it) and is read back with :meth:`Journal.read` to be stored again (the receiver
retries it). Should the writer need its half before that succeeds, it waits at most ``stall_s`` and
then raises :class:`JournalStalled`: the receiver answers "out of resources" (the peer sends again
later) instead of hanging, and nothing acknowledged is lost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import logging
import mmap
import os
import threading
import time
from pathlib import Path
from typing import Sequence

import xxhash

from ichutil.files import atomic_write_text, fsync_dir

from . import journal_records as records
from .journal_records import ALIGN, MAGIC, RECORD_ALIGN, VERSION, Entry  # noqa: F401 - the journal's public names

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "journal.checkpoint"


class JournalStalled(OSError):
    """The writer needs a half that still holds entries not yet stored elsewhere."""


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def _syncfs(fd: int) -> None:
    """Flush every dirty page of the filesystem holding ``fd`` (Linux syncfs; else a global sync)."""
    fn = getattr(_libc(), "syncfs", None)
    if fn is None or fn(fd) != 0:
        os.sync()


@functools.lru_cache(maxsize=1)
def _sync_file_range():
    fn = getattr(_libc(), "sync_file_range", None)
    if fn is not None:
        fn.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    return fn


def _start_writeback(fd: int, at: int, n: int) -> None:
    """Start writing these pages to the disk now, without waiting (Linux ``sync_file_range`` with
    SYNC_FILE_RANGE_WRITE); a hint only: the commit's ``fdatasync`` is what makes them durable."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, at, n, 2)


class Journal:
    """The data directory's write-ahead journal (see the module docstring). Thread-safe."""

    def __init__(self, path: str | Path, size: int = 256 << 20, checkpoint_every_s: float = 30.0,
                 sync_paths: list[Path] | None = None, stall_s: float = 10.0) -> None:
        self.path = Path(path)
        self.sync_paths = [Path(p) for p in sync_paths or []]  # where the spool and index live (syncfs each)
        self.size = size - size % (2 * ALIGN)
        self.checkpoint_every_s = checkpoint_every_s
        self.stall_s = stall_s
        self._fd = -1   # O_DSYNC: entries (append)
        self._bfd = -1  # through the page cache: streams (fragments, commits), made durable by fdatasync
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._seq = 0              # last sequence number handed out
        self._checkpointed = 0     # every entry <= this is durable outside the journal
        self._half = 0             # half being written
        self._pos = 0              # next offset within the journal file
        self._half_last = [0, 0]   # highest seq with a record in each half
        self._inflight: dict[int, int] = {}  # seq -> offset of entries not yet stored elsewhere
        self._streams: dict[int, JournalStream] = {}  # open (uncommitted) streams by id
        self._stream_ids = itertools.count(1)
        self._recovered = 0
        self._write_lock = threading.Lock()
        self._written = 0  # the watermark last written to the checkpoint file
        self._want_checkpoint = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"journaled": 0, "bypassed": 0, "checkpoints": 0, "waits": 0, "stalls": 0,
                      "streamed": 0, "streams_abandoned": 0}

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
        entries, top = _scan_file(self.path, self._checkpointed)
        for old in self._previous():
            known = {e.seq for e in entries}
            more, old_top = _scan_file(old, self._checkpointed)
            entries += [e for e in more if e.seq not in known]
            top = max(top, old_top)
        entries.sort(key=lambda e: e.seq)
        self._seq = max([self._checkpointed, top] + [e.seq for e in entries])
        self._recovered = self._seq  # appends wait for a checkpoint past this (the caller's replay)
        self._written = self._checkpointed
        self._fd = os.open(self.path, os.O_RDWR | os.O_DSYNC)
        self._bfd = os.open(self.path, os.O_RDWR)
        self._stream_ids = itertools.count(int.from_bytes(os.urandom(6), "little") << 8)  # see journal_records; < 2**56
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
        os.close(self._bfd)
        self._fd = self._bfd = -1

    # -- writing -------------------------------------------------------------------------------
    def append(self, sop_class: str, sop_uid: str, transfer_syntax: str, calling_ae: str, received_at: float,
               chunks: Sequence[bytes | memoryview]) -> int | None:
        """Durably journal one data set (``chunks`` joined, e.g. as its P-DATA fragments arrived);
        returns its sequence number (pass it to :meth:`done` once the spool file and index row
        exist), or None when it is too big to journal."""
        meta = records.metadata(sop_class, sop_uid, transfer_syntax, calling_ae, received_at)
        span = records.entry_span(len(meta), sum(len(c) for c in chunks))
        if span > self.size // 2:
            self.stats["bypassed"] += 1
            return None
        with self._cond:
            self._check_recovered()
            at = self._reserve(span, ALIGN)
            self._seq += 1
            seq = self._seq
            self._mark(seq)
            self._inflight[seq] = at
        try:
            os.pwritev(self._fd, [records.entry_header(seq, meta, chunks), meta, *chunks], at)
        except BaseException:
            self.done(seq)
            raise
        self.stats["journaled"] += 1
        return seq

    def stream(self) -> "JournalStream | None":
        """A data set to be journaled fragment by fragment as it arrives (see :class:`JournalStream`);
        None when the journal is not taking writes (closed, or its replay not yet checkpointed)."""
        with self._cond:
            if self._bfd < 0 or self._checkpointed < self._recovered:
                return None
            stream = JournalStream(self, next(self._stream_ids))
            self._streams[stream.id] = stream
        return stream

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
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            entry = records.entry_at(buf, at)
        if entry is None or entry.seq != seq:
            raise OSError(f"journal entry {seq} fails its checks")
        return entry

    def _check_recovered(self) -> None:
        if self._checkpointed < self._recovered:
            raise RuntimeError("journal: store the entries open() returned and checkpoint() before appending")

    def _reserve(self, span: int, align: int) -> int:
        """Room for ``span`` bytes at the writer's position (lock held); may move to the other half."""
        at = -(-self._pos // align) * align
        if at + span > (self._half + 1) * (self.size // 2):
            self._switch_half()
            at = self._pos
        self._pos = at + span
        return at

    def _mark(self, seq: int, half: int | None = None) -> None:
        """A record of entry ``seq`` lies in ``half`` (default: the current one), so the writer does not
        reuse it before a checkpoint passes ``seq`` (lock held)."""
        half = self._half if half is None else half
        self._half_last[half] = max(self._half_last[half], seq)

    def _place(self, stream: "JournalStream", span: int) -> int:
        """Room for one of ``stream``'s fragments; may drop the stream (it then writes nothing)."""
        with self._cond:
            at = self._reserve(span, RECORD_ALIGN)
            stream.halves.add(self._half)
        return at

    def _admit(self, stream: "JournalStream", size: int) -> tuple[int, int] | None:
        """(sequence number, place) of ``stream``'s commit record of ``size`` bytes, once the stream can
        no longer be dropped; None when it was dropped first."""
        with self._cond:
            at = self._reserve(size, RECORD_ALIGN)  # may drop this stream
            if not stream.seal():
                return None
            self._seq += 1
            for half in stream.halves | {self._half}:  # neither half is reused before a checkpoint passes it
                self._mark(self._seq, half)
            self._inflight[self._seq] = at
            self._streams.pop(stream.id, None)
            return self._seq, at

    def _switch_half(self) -> None:
        """Move to the other half once a checkpoint covers what it holds (lock held)."""
        other = 1 - self._half
        for stream in [s for s in self._streams.values() if other in s.halves]:
            self._drop(stream, "the journal needs its half")  # it holds a half back: appended whole instead
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

    def _drop(self, stream: "JournalStream", why: str) -> None:
        """Abandon an open stream (lock held): it writes nothing more and never commits."""
        if stream.abandon_quietly():
            self._streams.pop(stream.id, None)
            self.stats["streams_abandoned"] += 1
            log.debug("journal stream %d abandoned: %s", stream.id, why)

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

    # -- files ---------------------------------------------------------------------------------
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
        """Intact entries newer than the watermark (what :meth:`open` would return), by sequence number."""
        return [e for e in _scan_file(self.path, self._checkpointed)[0] if e.seq > self._checkpointed]


class JournalStream:
    """One data set journaled as it arrives (:meth:`Journal.stream`): ``write`` each fragment, then
    ``commit`` (durable when it returns) or ``abandon``.

    Its sequence number is handed out at the commit, so an open stream never holds a checkpoint back;
    until then the journal may drop it (``Journal._switch_half``, when the writer needs the half its
    fragments lie in), under ``_lock`` so no fragment of a dropped stream lands after the writer has
    reclaimed that half. Never raises on the way in: a fragment that cannot be journaled (dropped, a
    failed write, a data set too big) abandons the stream and ``commit`` returns None — the caller
    still holds the data set and appends it whole. One thread writes a stream (its association's).
    """

    def __init__(self, journal: Journal, stream_id: int) -> None:
        self.journal = journal
        self.id = stream_id
        self.halves: set[int] = set()  # where its fragments lie (under the journal's lock)
        self._places: list[tuple[int, int]] = []
        self._check = xxhash.xxh3_64()
        self._size = 0
        self._lock = threading.Lock()
        self._dead = False
        self._committed = False

    @property
    def open(self) -> bool:
        return not (self._dead or self._committed)

    def write(self, chunk: bytes | memoryview) -> None:
        """Journal one fragment and start writing it out (page cache; made durable by ``commit``)."""
        j = self.journal
        n = len(chunk)
        if not self.open:
            return
        if self._size + n > j.size // 4:  # a stream may span both halves only if each keeps room for others
            self.abandon()
            return
        span = records.record_span(n)
        try:
            at = j._place(self, span)
            with self._lock:
                if self._dead:
                    return
                os.pwritev(j._bfd, [records.fragment_header(self.id, len(self._places), n), chunk], at)
                _start_writeback(j._bfd, at, span)
        except (OSError, ValueError) as exc:  # JournalStalled among them
            log.warning("journal stream %d: %s; the data set is journaled whole instead", self.id, exc)
            self.abandon()
            return
        self._places.append((at, n))
        self._check.update(chunk)
        self._size += n

    def commit(self, sop_class: str, sop_uid: str, transfer_syntax: str, calling_ae: str,
               received_at: float, size: int) -> int | None:
        """Write the commit record and wait until the data set is durable; returns its sequence
        number (pass it to ``Journal.done`` as for an entry), or None when the stream was abandoned
        or does not hold exactly ``size`` bytes (the caller appends the data set whole)."""
        j = self.journal
        if not self.open or size != self._size or not self._places:
            self.abandon()
            return None
        meta = records.metadata(sop_class, sop_uid, transfer_syntax, calling_ae, received_at)
        seq = None
        try:
            admitted = j._admit(self, records.commit_size(len(meta), len(self._places)))
            if admitted is None:
                return None
            seq, at = admitted
            os.pwrite(j._bfd, records.commit_record(seq, meta, self.id, self._places, self._check.intdigest()), at)
            os.fdatasync(j._bfd)
        except (OSError, ValueError) as exc:
            log.warning("journal stream %d: commit failed (%s); the data set is journaled whole instead", self.id, exc)
            j.done(seq)
            self.abandon()
            return None
        j.stats["streamed"] += 1
        return seq

    def abandon(self) -> None:
        """No commit will follow (refused, too big, the association ended)."""
        with self.journal._cond:
            self.journal._drop(self, "abandoned")

    def seal(self) -> bool:
        """Mark it committed unless it was dropped (the journal's lock held): from then on the journal
        keeps its halves for it; True when sealed."""
        with self._lock:
            if self._dead:
                return False
            self._committed = True
            return True

    def abandon_quietly(self) -> bool:
        """Mark it dead unless committed (the journal's lock held); True when it was open."""
        with self._lock:
            if self._dead or self._committed:
                return False
            self._dead = True
            return True


def _scan_file(path: Path, checkpointed: int) -> tuple[list[Entry], int]:
    """:func:`journal_records.scan` of one journal file (mapped, not read into memory)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return [], 0
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return records.scan(buf, checkpointed)
    except OSError:
        log.exception("journal %s cannot be read", path)
        return [], 0
