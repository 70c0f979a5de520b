"""The Storage SCP: what a PACS or scanner talks to (C-ECHO, C-STORE), with allow-list and TLS.

One job: turn a C-STORE request into a durable, indexed spool file *before* answering 0x0000,
or answer a precise failure status. Nothing here decodes pixels or decides what to analyse:
listeners registered with ``on_stored`` are told about every stored instance (pynetdicom-style
event hook) and the node flow reacts.

Speed: the dataset bytes are kept as received (never decoded); only the top-level header up
to (0020,0013) is parsed to get the UIDs. See docs/node-receive.md for the ingest benchmark.

Statuses answered (PS3.4 B.2.3):

* 0x0000 stored (or an identical re-send: idempotent)
* 0xA700 out of resources: free disk below ``storage.min_free_bytes``
* 0xA900 data set does not match SOP class: DICOMDIR content, or header UIDs that differ
  from the command's Affected SOP Class/Instance UID
* 0xC000 cannot understand: unparsable data set, invalid UIDs (``../../x``), missing keys
* 0x0122 SOP class not supported: Media Storage Directory Storage (a DICOMDIR)
* 0x0110 processing failure: unexpected I/O error (logged with a traceback)
"""

from __future__ import annotations

import functools
import socket
import socketserver
import io
import logging
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from pydicom.dataset import Dataset

from .store import digest
from .config import NodeConfig
from .header import DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE, STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH
from .header import StoreRefused, check_complete, parse_header
from .store.index import Index, InstanceInfo, InstanceRecord, StoreOutcome
from .store.journal import Entry, Journal, JournalStalled
from .pseudonym import Pseudonymizer
from .observe.logs import withhold_values_in_warnings
from .receive import fastpath, processes
from .receive.admission import Admission, LazyHandshakeContext
from .receive.fast_store import FastStore
from .receive.guard import Limits
from .receive.release import ReleaseHints
from .store.spool import Spool, SpoolFull
from .uids import InvalidUID, validate_uid

LOG = logging.getLogger("dicomnode.scp")

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1427.1"  # ich-node implementation UID root
IMPLEMENTATION_VERSION = "ICHNODE_010"

# Accepted as-is; compressed pixel data is decoded later by the pipeline (pylibjpeg/gdcm).
TRANSFER_SYNTAXES = [
    EXPLICIT_LE,
    IMPLICIT_LE,
    DEFLATED_LE,
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]

STATUS_SUCCESS = 0x0000
STATUS_REFUSED_SOP_CLASS = 0x0122
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_OUT_OF_RESOURCES = 0xA700


@dataclass(frozen=True)
class StoredInstance:
    """What ``on_stored`` listeners receive after an instance is durable and indexed."""

    sop_uid: str
    sop_class: str
    study_uid: str
    series_uid: str
    patient_hash: str
    modality: str | None
    path: Path  # absolute path of the spool file
    outcome: StoreOutcome
    calling_ae: str
    size: int
    received_at: float


@dataclass
class ReceiveStats:
    """Counters for metrics and ``status``; updated under a lock by the handler threads."""

    stored: int = 0
    duplicates: int = 0
    replaced: int = 0
    failures: dict[int, int] = field(default_factory=dict)
    associations_rejected: int = 0
    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> dict[str, int]:
        """The counters as plain numbers (failures as ``failed_0xNNNN``)."""
        with self._lock:
            out = {"stored": self.stored, "duplicates": self.duplicates, "replaced": self.replaced,
                   "associations_rejected": self.associations_rejected, "bytes": self.bytes}
            out.update({f"failed_0x{k:04X}": v for k, v in self.failures.items()})
        return out

    def count(self, outcome: StoreOutcome | None = None, status: int | None = None, size: int = 0) -> None:
        with self._lock:
            if status is not None:
                self.failures[status] = self.failures.get(status, 0) + 1
            elif outcome is StoreOutcome.DUPLICATE:
                self.duplicates += 1
            else:
                self.stored += 1
                self.bytes += size
                if outcome is StoreOutcome.REPLACED:
                    self.replaced += 1


# ------------------------------------------------------------------------------------------
# header parsing


@functools.lru_cache(maxsize=256)
def _meta_group(sop_class: str, transfer_syntax: str, calling_ae: str) -> tuple[bytes, bytes]:
    """The encoded File Meta group split around the SOP Instance UID value (cached: same for a series)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    marker = "9" * 64
    meta = Dataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = marker
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if calling_ae:
        meta.SourceApplicationEntityTitle = calling_ae
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_file_meta_info(buf, meta, enforce_standard=True)
    head, _, tail = buf.getvalue().partition(marker.encode())
    return head, tail


def file_meta_bytes(sop_class: str, sop_uid: str, transfer_syntax: str, calling_ae: str) -> bytes:
    """Preamble, 'DICM' and the File Meta Information group for a received data set."""
    head, tail = _meta_group(sop_class, transfer_syntax, calling_ae)
    uid = sop_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\x00"
    # head ends with the (0002,0003) element header (tag, VR, 2-byte length) and the group length
    # at offset 8 of the group counts the 64-byte placeholder: patch both for the real UID.
    delta = len(uid) - 64
    head = bytearray(head)
    head[-2:] = struct.pack("<H", len(uid))
    (group_len,) = struct.unpack_from("<I", head, 8)
    struct.pack_into("<I", head, 8, group_len + delta)
    return b"\x00" * 128 + b"DICM" + bytes(head) + uid + tail


def _dataset_bytes(raw: bytes) -> memoryview | None:
    """The data set in one of our spool files (after its (0002,0000)-led meta group)."""
    if raw[132:138] != b"\x02\x00\x00\x00UL":
        return None
    (group_len,) = struct.unpack_from("<I", raw, 140)
    return memoryview(raw)[144 + group_len:]


# ------------------------------------------------------------------------------------------
# the receiver


Listener = Callable[[StoredInstance], None]
Data = bytes | memoryview | Sequence[bytes | memoryview]  # a data set, whole or as its P-DATA fragments


class Receiver:
    """Stores C-STORE data sets: validate → disk guard → spool (fsync+rename) → index → listeners.

    Independent of the network so it can be unit-tested; :func:`start_scp` binds it to pynetdicom.
    """

    def __init__(self, config: NodeConfig, index: Index, spool: Spool, journal: Journal | None = None,
                 pseudonym: Pseudonymizer | None = None) -> None:
        self.config = config
        self.index = index
        self.spool = spool
        self.journal = journal
        self.pseudonym = pseudonym or Pseudonymizer.ephemeral()  # the node passes its site key (start_scp)
        self.stats = ReceiveStats()
        self._listeners: list[Listener] = []
        # Same SOP Instance UID from two associations at once: serialise check → write → index.
        self._stripes = [threading.Lock() for _ in range(64)]
        self._owed: set[int] = set()  # journal entries answered but not yet written (retried)
        self._owed_lock = threading.Lock()
        self._retrier: threading.Thread | None = None
        self._closing = threading.Event()
        self.admission: Admission | None = None  # set by start_scp (per-peer limit at EVT_REQUESTED)

    def on_stored(self, listener: Listener) -> Listener:
        """Register ``listener(StoredInstance)``; called after the index commit — before the ack, or
        right after it for a journaled data set on the fast C-STORE path (``store(later=...)``).

        Keep listeners fast (enqueue, don't analyse); exceptions are logged and do not fail the store.
        """
        self._listeners.append(listener)
        return listener

    def store(self, sop_class: str, sop_uid: str, transfer_syntax: str, data: Data, calling_ae: str = "", *,
              received_at: float | None = None, rewrite: bool = False,
              later: list[Callable[[], object]] | None = None) -> StoredInstance | None:
        """Store one data set as received (``data``: its bytes, or its P-DATA fragments in order);
        raises :class:`StoreRefused` with the status to answer.

        Durable when it returns: through the write-ahead journal when the receiver has one, else by
        the spool file's own fsyncs. With a journal and a ``later`` list, the rest — de-duplication,
        spool file, index row, listeners — is not done here but appended to ``later``
        as one call (returns None): the caller answers the peer first and runs it right after, while
        the peer prepares its next image. ``rewrite`` (journal replay) writes the file again even when
        the index already knows these bytes, and makes it durable directly."""
        chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        size = sum(len(c) for c in chunks)
        hdr = self.check(sop_class, sop_uid, transfer_syntax, chunks)
        check_complete(chunks, transfer_syntax)  # (a streamed data set is checked on its spool file: _Stream)
        sop_class, sop_uid = hdr.sop_class, hdr.sop_uid
        now = time.time() if received_at is None else received_at
        rel = self.spool.relpath(hdr.study_uid, hdr.series_uid, sop_uid)
        meta = file_meta_bytes(sop_class, sop_uid, transfer_syntax, calling_ae)
        dataset_digest = digest.digest(chunks)
        journal = None if rewrite else self.journal
        seq = None
        if journal is not None:
            if not self.spool.has_room(len(meta) + size):
                raise StoreRefused(STATUS_OUT_OF_RESOURCES, "node disk is full (free space below threshold)")
            try:
                seq = journal.append(sop_class, sop_uid, transfer_syntax, calling_ae, now, chunks)
            except JournalStalled as exc:
                LOG.critical("C-STORE refused: %s", exc)
                raise StoreRefused(STATUS_OUT_OF_RESOURCES, "node storage failing; send again later") from None

        def materialise(answered: bool = False) -> StoredInstance:
            try:
                with self._stripes[hash(sop_uid) % len(self._stripes)]:  # same UID from two associations
                    known = None if rewrite else self.index.lookup_digest(sop_uid)
                    if known is not None and digest.matches(known, chunks):
                        outcome = StoreOutcome.DUPLICATE
                    else:
                        # journaled: durable already, the file's own fsyncs wait for the journal checkpoint
                        written = self.spool.write(rel, [meta, *chunks], digest=dataset_digest, durable=seq is None)
                        outcome = self.index.record_instance(InstanceRecord(
                            sop_uid=sop_uid, sop_class=sop_class, transfer_syntax=transfer_syntax,
                            study_uid=hdr.study_uid, series_uid=hdr.series_uid, patient_hash=hdr.patient_hash,
                            modality=hdr.modality, path=rel, digest=dataset_digest, size=written.size,
                            instance_number=hdr.instance_number, calling_ae=calling_ae,
                        ), now=now)
            except BaseException as exc:
                # not answered yet: a failure the peer hears of (it sends again), the entry need not
                # survive; answered already: it stays in flight, so no checkpoint passes it
                if not answered and journal is not None:
                    journal.done(seq)
                if isinstance(exc, SpoolFull):
                    raise StoreRefused(STATUS_OUT_OF_RESOURCES, "node disk is full (free space below threshold)") from None
                raise
            if journal is not None:
                journal.done(seq)
            return self._stored(hdr, sop_uid, sop_class, rel, outcome, calling_ae, size, now)

        if later is not None and seq is not None:
            later.append(lambda: self._after_answer(seq, lambda: materialise(answered=True)))
            return None
        return materialise()

    def _after_answer(self, seq: int, materialise: Callable[[], StoredInstance]) -> None:
        """A journaled instance's spool file and index row, after its answer. A failure here cannot be
        reported to the peer any more: the entry stays in the journal and is stored again from it by a
        retry thread (and at the next start, should the node stop first)."""
        try:
            materialise()
        except Exception:  # noqa: BLE001
            self.stats.count(status=STATUS_PROCESSING_FAILURE)
            LOG.critical("instance acknowledged and journaled, but writing its spool file or index row failed; "
                         "retrying from the journal", exc_info=True)
            self._retry_later(seq)

    def _retry_later(self, seq: int) -> None:
        with self._owed_lock:
            self._owed.add(seq)
            if self._retrier is None or not self._retrier.is_alive():
                self._retrier = threading.Thread(target=self._retry_owed, name="journal-retry", daemon=True)
                self._retrier.start()

    def _retry_owed(self) -> None:
        """Store journaled-but-unwritten instances again (0.2 s, then backing off to 30 s) until none is owed."""
        delay = 0.2
        while not self._closing.wait(delay):
            with self._owed_lock:
                owed = sorted(self._owed)
                if not owed:
                    self._retrier = None
                    return
            for seq in owed:
                try:
                    e = self.journal.read(seq)
                    self.store(e.sop_class, e.sop_uid, e.transfer_syntax, e.data, e.calling_ae,
                               received_at=e.received_at, rewrite=True)
                except StoreRefused as exc:  # cannot be stored at all: nothing to wait for
                    LOG.error("journal entry %d cannot be stored (0x%04X: %s)", seq, exc.status, exc.comment)
                except Exception as exc:  # noqa: BLE001 - still failing: later
                    LOG.error("journal entry %d: storing it again failed (%s); next try in %.0f s", seq, exc,
                              min(delay * 2, 30))
                    continue
                else:
                    LOG.warning("journal entry %d stored on retry", seq)
                self.journal.done(seq)
                with self._owed_lock:
                    self._owed.discard(seq)
            delay = min(delay * 2, 30.0)

    def close(self) -> None:
        """Stop retrying; what is still owed stays in the journal for the next start."""
        self._closing.set()
        if self._retrier is not None:
            self._retrier.join(5)

    def open_stream(self, sop_class: str, sop_uid: str, transfer_syntax: str, calling_ae: str,
                    head: list) -> "_Stream":
        """A sink for a data set too large to hold in memory (fast_store.Sink): ``head`` is what arrived
        so far (large enough to hold its header); the rest is written to a spool temp file as it comes."""
        return _Stream(self, sop_class, sop_uid, transfer_syntax, calling_ae, head)

    def check(self, sop_class: str, sop_uid: str, transfer_syntax: str, chunks: list):
        """The data set's header, once its command and header agree (else :class:`StoreRefused`)."""
        if sop_class == MEDIA_STORAGE_DIRECTORY:
            raise StoreRefused(STATUS_REFUSED_SOP_CLASS, "DICOMDIR (Media Storage Directory) is not stored")
        try:
            sop_class = validate_uid(sop_class, "AffectedSOPClassUID")
            sop_uid = validate_uid(sop_uid, "AffectedSOPInstanceUID")
        except InvalidUID as exc:
            raise StoreRefused(STATUS_CANNOT_UNDERSTAND, f"invalid {exc.field}: {exc.why}") from None
        if not any(len(c) for c in chunks):
            raise StoreRefused(STATUS_CANNOT_UNDERSTAND, "empty data set")
        hdr = parse_header(chunks, transfer_syntax, self.pseudonym)
        if hdr.sop_uid != sop_uid:
            raise StoreRefused(STATUS_DATASET_MISMATCH, "SOPInstanceUID differs from AffectedSOPInstanceUID")
        if hdr.sop_class != sop_class:
            raise StoreRefused(STATUS_DATASET_MISMATCH, "SOPClassUID differs from AffectedSOPClassUID")
        return hdr

    def _refused(self, exc: StoreRefused, calling_ae: str) -> tuple[int, str]:
        self.stats.count(status=exc.status)
        LOG.warning("C-STORE from %s refused 0x%04X: %s", calling_ae, exc.status, exc.comment)
        return exc.status, exc.comment

    def _stored(self, hdr, sop_uid: str, sop_class: str, rel: str, outcome: StoreOutcome, calling_ae: str, size: int,
                now: float) -> StoredInstance:
        """Count it and tell the listeners."""
        item = StoredInstance(sop_uid, sop_class, hdr.study_uid, hdr.series_uid, hdr.patient_hash, hdr.modality,
                              self.spool.abspath(rel), outcome, calling_ae, size, now)
        self.stats.count(outcome, size=size)
        LOG.debug("stored %s series=%s patient=%s (%s)", sop_uid, hdr.series_uid, hdr.patient_hash, outcome.value)
        for listener in self._listeners:
            try:
                listener(item)
            except Exception:
                LOG.exception("on_stored listener %r failed (instance stays stored)", listener)
        return item

    def replay(self, entries: Iterable[Entry]) -> int:
        """After a crash: store again what the journal holds past its last checkpoint, unless the
        spool already has it intact. Only the latest entry of each SOP Instance UID counts, and never
        over a newer version stored since. Returns how many instances were written again."""
        latest: dict[str, Entry] = {}
        for e in entries:
            latest[e.sop_uid] = e
        redone = 0
        for e in latest.values():
            known = self.index.instance(e.sop_uid)
            if known is not None and self._intact(known) and (known.received_at > e.received_at
                                                              or digest.matches(known.digest, [e.data])):
                continue
            try:
                self.store(e.sop_class, e.sop_uid, e.transfer_syntax, e.data, e.calling_ae, received_at=e.received_at,
                           rewrite=True)
                redone += 1
            except StoreRefused as exc:
                LOG.warning("journal replay: instance not stored again (0x%04X: %s)", exc.status, exc.comment)
        if redone:
            LOG.warning("journal replay: %d instance(s) written again after an unclean stop", redone)
        return redone

    def _intact(self, known: InstanceInfo) -> bool:
        """The spool file the index points to holds exactly the bytes the index recorded."""
        try:
            raw = self.spool.abspath(known.path).read_bytes()
        except (OSError, ValueError):
            return False
        data = _dataset_bytes(raw) if len(raw) == known.size and raw[128:132] == b"DICM" else None
        return data is not None and digest.matches(known.digest, [data])

    # -- pynetdicom handlers -------------------------------------------------------------------

    def answer(self, sop_class: str, sop_uid: str, transfer_syntax: str, data: Data,
               calling_ae: str = "", later: list[Callable[[], object]] | None = None) -> tuple[int, str]:
        """:meth:`store`, as the (status, error comment) to answer; never raises. ``later``: see store."""
        try:
            self.store(sop_class, sop_uid, transfer_syntax, data, calling_ae, later=later)
        except StoreRefused as exc:
            return self._refused(exc, calling_ae)
        except Exception:
            self.stats.count(status=STATUS_PROCESSING_FAILURE)
            LOG.exception("C-STORE from %s failed", calling_ae)
            return STATUS_PROCESSING_FAILURE, "processing failure on the node"
        return STATUS_SUCCESS, ""

    def handle_store(self, event) -> int | Dataset:
        """pynetdicom's EVT_C_STORE (C-STOREs the fast path did not take, see dicomnode.fast_store)."""
        req = event.request
        data = req.DataSet.getbuffer() if isinstance(req.DataSet, io.BytesIO) else b""
        try:
            status, comment = self.answer(str(req.AffectedSOPClassUID or ""), str(req.AffectedSOPInstanceUID or ""),
                                          str(event.context.transfer_syntax), data, _calling_ae(event.assoc))
        finally:
            data = None  # release the buffer export before pynetdicom reuses the BytesIO
        return STATUS_SUCCESS if status == STATUS_SUCCESS else _status(status, comment)

    def handle_requested(self, event) -> None:
        """Calling-AE allow-list (optionally with IP): reject before any data is exchanged."""
        assoc = event.assoc
        calling = _calling_ae(assoc)
        address = assoc.requestor.address
        if self.config.security.caller_allowed(calling, address):
            if self.admission is not None and self.admission.over_peer_limit(assoc):
                with self.stats._lock:
                    self.stats.associations_rejected += 1
                LOG.warning("association from %r at %s rejected: more than %d from that address", calling, address,
                            self.admission.max_per_peer)
                assoc.acse.send_reject(0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local limit exceeded
                assoc.is_rejected = True
                assoc.kill()
            return
        with self.stats._lock:
            self.stats.associations_rejected += 1
        LOG.warning("association from %r at %s rejected: calling AE not allowed", calling, address)
        assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE not recognised
        assoc.is_rejected = True
        assoc.kill()


class _Stream:
    """A data set too large to hold in memory, written to a spool temp file as it arrives
    (``Receiver.open_stream``; fast_store.Sink). Not journaled: made durable by its own fsyncs
    before the answer. A data set refused early (bad UIDs, no room) is read to its end and dropped."""

    _ROOM_EVERY = 64 << 20  # free space is checked again after this many bytes

    def __init__(self, r: Receiver, sop_class: str, sop_uid: str, transfer_syntax: str, calling_ae: str,
                 head: list) -> None:
        self.r, self.transfer_syntax, self.calling_ae = r, transfer_syntax, calling_ae
        self.received_at = time.time()
        self.refused: StoreRefused | None = None
        self.part = None
        self.digest = digest.Digester()
        self.size = 0
        self._room_at = 0
        try:
            self.hdr = r.check(sop_class, sop_uid, transfer_syntax, head)
            self.rel = r.spool.relpath(self.hdr.study_uid, self.hdr.series_uid, self.hdr.sop_uid)
            self.part = r.spool.open_partial(self.rel)
            meta = file_meta_bytes(self.hdr.sop_class, self.hdr.sop_uid, transfer_syntax, calling_ae)
            self.part.write(meta)
            self.meta_len = len(meta)
        except StoreRefused as exc:
            self.refused = exc
        except OSError:
            self._fail("cannot open a spool file")
        for c in head:
            self.write(c)

    def _fail(self, why: str, status: int = STATUS_PROCESSING_FAILURE) -> None:
        LOG.error("streamed C-STORE from %s: %s", self.calling_ae, why, exc_info=status == STATUS_PROCESSING_FAILURE)
        self.refused = StoreRefused(status, why)
        self.discard()

    def write(self, chunk) -> None:
        if self.refused is not None:
            return
        self.size += len(chunk)
        if self.size >= self._room_at:
            self._room_at = self.size + self._ROOM_EVERY
            if not self.r.spool.has_room(self._ROOM_EVERY):
                self._fail("node disk is full (free space below threshold)", STATUS_OUT_OF_RESOURCES)
                return
        self.digest.update(chunk)
        try:
            self.part.write(chunk)
        except OSError:
            self._fail("writing the spool file failed")

    def finish(self) -> tuple[int, str]:
        r, hdr = self.r, getattr(self, "hdr", None)
        if self.refused is None:
            self.refused = self._check_structure()
        if self.refused is not None:
            self.discard()
            return r._refused(self.refused, self.calling_ae)
        dataset_digest = self.digest.hexdigest()
        try:
            with r._stripes[hash(hdr.sop_uid) % len(r._stripes)]:
                known = r.index.lookup_digest(hdr.sop_uid)
                if known is not None and known == dataset_digest:
                    self.discard()
                    outcome = StoreOutcome.DUPLICATE
                else:
                    self.part.commit(durable=True)
                    outcome = r.index.record_instance(InstanceRecord(
                        sop_uid=hdr.sop_uid, sop_class=hdr.sop_class, transfer_syntax=self.transfer_syntax,
                        study_uid=hdr.study_uid, series_uid=hdr.series_uid, patient_hash=hdr.patient_hash,
                        modality=hdr.modality, path=self.rel, digest=dataset_digest, size=self.part.size,
                        instance_number=hdr.instance_number, calling_ae=self.calling_ae,
                    ), now=self.received_at)
        except Exception:  # noqa: BLE001 - answered as a failure; the peer sends again
            self.discard()
            r.stats.count(status=STATUS_PROCESSING_FAILURE)
            LOG.exception("streamed C-STORE from %s failed", self.calling_ae)
            return STATUS_PROCESSING_FAILURE, "processing failure on the node"
        r._stored(hdr, hdr.sop_uid, hdr.sop_class, self.rel, outcome, self.calling_ae, self.size, self.received_at)
        return STATUS_SUCCESS, ""

    def discard(self) -> None:
        if self.part is not None:
            self.part.discard()

    def _check_structure(self) -> StoreRefused | None:
        """``check_complete`` on the written file (mapped, not read into memory)."""
        import mmap

        try:
            with open(self.part.tmp, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError:
            LOG.exception("streamed C-STORE from %s: cannot read back its spool file", self.calling_ae)
            return StoreRefused(STATUS_PROCESSING_FAILURE, "processing failure on the node")
        refused = None
        view = memoryview(mapped)[self.meta_len:]
        try:
            check_complete(view, self.transfer_syntax)
        except StoreRefused as exc:
            refused = StoreRefused(exc.status, exc.comment)
        finally:
            view.release()
            mapped.close()
        return refused


def _calling_ae(assoc) -> str:
    try:
        ae = assoc.requestor.primitive.calling_ae_title
    except AttributeError:
        ae = assoc.requestor.ae_title
    return (ae.decode("ascii", "replace") if isinstance(ae, bytes) else str(ae or "")).strip()


def _status(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


def reconcile(index: Index, spool: Spool, pseudonym: Pseudonymizer) -> int:
    """Index every spool file the index does not know; returns how many were added.

    With ``synchronous=NORMAL`` a power loss may roll back the last index commits of instances
    that were already acknowledged; their files are complete under their final names (written
    → fsync → rename → fsync dir before the ack), so re-reading them restores the index. Called
    by :func:`start_scp` before it listens.
    """
    from pydicom.filereader import _read_file_meta_info

    known = index.indexed_paths()
    added = 0
    for p in spool.root.rglob("*.dcm"):
        rel = p.relative_to(spool.root).as_posix()
        if rel in known:
            continue
        try:
            raw = p.read_bytes()
            fp = io.BytesIO(raw)
            fp.seek(132)
            meta = _read_file_meta_info(fp)
            stream = memoryview(raw)[fp.tell():]
            ts = str(meta.TransferSyntaxUID)
            hdr = parse_header(stream, ts, pseudonym)
            if spool.relpath(hdr.study_uid, hdr.series_uid, hdr.sop_uid) != rel:
                raise StoreRefused(STATUS_DATASET_MISMATCH, "UIDs do not match the file's spool path")
            index.record_instance(InstanceRecord(
                sop_uid=hdr.sop_uid, sop_class=hdr.sop_class, transfer_syntax=ts, study_uid=hdr.study_uid,
                series_uid=hdr.series_uid, patient_hash=hdr.patient_hash, modality=hdr.modality, path=rel,
                digest=digest.digest([stream]), size=len(raw), instance_number=hdr.instance_number,
                calling_ae=str(meta.get("SourceApplicationEntityTitle") or "").strip() or None,
            ), now=p.stat().st_mtime)
            added += 1
        except Exception as exc:  # noqa: BLE001 - report and keep going; the file stays for inspection
            LOG.warning("spool file %s not re-indexed: %s", rel, exc)
    if added:
        LOG.warning("re-indexed %d spool file(s) the index had lost (power loss?)", added)
    return added


# ------------------------------------------------------------------------------------------
# network


def build_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """Server TLS context from ``security.tls`` (None when TLS is off)."""
    tls = config.security.tls
    if not tls.enabled:
        return None
    ctx = LazyHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca is not None:
        ctx.load_verify_locations(cafile=str(tls.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return ctx


def _server_class(reuse_port: bool):
    from pynetdicom.transport import ThreadedAssociationServer

    class Server(ThreadedAssociationServer):
        """pynetdicom's threaded server, bound with ``SO_REUSEPORT`` when several receiver processes
        share the port (the kernel spreads connections over them), and stopped with the standard
        library's shutdown (the AE does not list it among its own servers)."""

        def server_bind(self) -> None:
            if reuse_port:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

        def shutdown(self) -> None:
            socketserver.BaseServer.shutdown(self)
            self.server_close()

    return Server


class ReceiveServer:
    """A running Storage SCP. ``port`` is the bound port (useful with port 0); ``stop()`` ends it."""

    def __init__(self, ae, server, receiver: Receiver) -> None:
        self.ae = ae
        self.server = server
        self.receiver = receiver
        self.children: list = []  # receiver processes 1 … node.receivers - 1 (dicomnode.receive.processes)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def stats(self) -> ReceiveStats:
        return self.receiver.stats

    def on_stored(self, listener: Listener) -> Listener:
        return self.receiver.on_stored(listener)

    def totals(self) -> dict[str, int]:
        """This process's counters plus what the child receivers last published."""
        out = self.stats.snapshot()
        for other in processes.children_stats(self.receiver.config.node.data_dir) if self.children else []:
            for key, value in other.items():
                out[key] = out.get(key, 0) + int(value)
        return out

    def stop(self) -> None:
        processes.stop_children(self.children)
        self.server.shutdown()
        for assoc in list(self.ae.active_associations):
            assoc.abort()
        self.receiver.close()
        if self.receiver.journal is not None:
            self.receiver.journal.close()  # a last checkpoint: a clean stop leaves nothing to replay

    def __enter__(self) -> "ReceiveServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _register_directory_storage() -> None:
    """Route C-STORE of Media Storage Directory to our handler (pynetdicom knows no service for it)."""
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import register_uid, uid_to_service_class

    if uid_to_service_class(MEDIA_STORAGE_DIRECTORY) is not StorageServiceClass:
        register_uid(MEDIA_STORAGE_DIRECTORY, "MediaStorageDirectoryStorageRefused", StorageServiceClass)


def build_ae(config: NodeConfig):
    """The pynetdicom ApplicationEntity with our contexts and limits (no handlers bound)."""
    from pynetdicom import AE, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=config.node.ae_title)
    ae.maximum_pdu_size = config.node.max_pdu
    ae.maximum_associations = config.node.max_associations
    ae.acse_timeout = config.node.acse_timeout_s
    ae.dimse_timeout = config.node.dimse_timeout_s
    ae.network_timeout = config.node.network_timeout_s
    ae.require_called_aet = config.security.require_called_ae
    ae.add_supported_context(Verification)
    # Every storage SOP class a PACS may push with a CT study (CT, Enhanced CT, SC, SR, SEG, PR,
    # RT, ...): accepted and stored; only CT is analysed later. The acceptor has no 128 limit.
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
    # Accepted only to answer a proper failure status (0x0122) instead of a bare context rejection.
    _register_directory_storage()
    ae.add_supported_context(MEDIA_STORAGE_DIRECTORY, TRANSFER_SYNTAXES)
    return ae


def start_scp(config: NodeConfig, index: Index, spool: Spool, on_stored: Listener | None = None,
              pseudonym: Pseudonymizer | None = None, instance: int = 0,
              on_released: Callable[[], None] | None = None) -> ReceiveServer:
    """Start the Storage SCP in background threads and return at once (``server.stop()`` ends it).

    ``pseudonym``: default, the site key under ``node.data_dir`` (created on the first start).
    ``instance``: which of ``node.receivers`` processes this is (its own journal; the port is shared
    with ``SO_REUSEPORT`` when there are several). ``on_released``: called when a released association
    marked series complete (:mod:`dicomnode.receive.release`; the node wakes its sweep)."""
    from pynetdicom import evt

    fastpath.memoise_uid_validator()
    if not config.logging.phi:
        # pynetdicom's DEBUG output dumps whole PDUs; keep it out of node logs.
        logging.getLogger("pynetdicom").setLevel(max(logging.getLogger("pynetdicom").level, logging.WARNING))
        withhold_values_in_warnings()
    journal = None
    if config.storage.journal_mb:
        name = "receive.wal" if instance == 0 else f"receive-{instance}.wal"
        journal = Journal(Path(config.node.data_dir) / "journal" / name, config.storage.journal_mb << 20,
                          sync_paths=[spool.root, Path(config.node.index_path).parent])
        pending = journal.open()
    pseudonym = pseudonym or Pseudonymizer.for_data_dir(config.node.data_dir)
    receiver = Receiver(config, index, spool, journal, pseudonym)
    if journal is not None:
        receiver.replay(pending)  # after an unclean stop: what was acknowledged but not yet flushed
        journal.checkpoint()
    if instance == 0:  # one scan of the spool is enough
        reconcile(index, spool, pseudonym)
    if on_stored is not None:
        receiver.on_stored(on_stored)
    ae = build_ae(config)
    receiver.admission = admission = _admission(config, ae, receiver)
    handlers = [
        (evt.EVT_C_STORE, receiver.handle_store),
        (evt.EVT_REQUESTED, receiver.handle_requested),
        (evt.EVT_CONN_OPEN, admission.on_open),
    ]
    if config.selection.complete_on_release:
        hints = ReleaseHints(index.mark_released, lambda: ae.active_associations, _calling_ae, on_released)
        handlers += [(evt.EVT_ESTABLISHED, hints.on_established), (evt.EVT_RELEASED, hints.on_released)]
    server = ae.make_server((config.node.host, config.node.port), evt_handlers=handlers,
                            ssl_context=build_ssl_context(config), server_class=_server_class(config.node.receivers > 1),
                            contexts=fastpath.shared_contexts(ae.supported_contexts))
    srv = ReceiveServer(ae, server, receiver)
    if instance == 0:  # bound already: connections wait in the backlog until every receiver listens
        try:
            srv.children = processes.start_children(config, srv.port)
        except Exception:
            server.server_close()
            receiver.close()
            raise
    threading.Thread(target=server.serve_forever, name=f"scp-accept-{instance}", daemon=True).start()
    LOG.info("Storage SCP %s listening on %s:%d%s", config.node.ae_title, config.node.host, srv.port,
             " (TLS)" if config.security.tls.enabled else "")
    return srv


def _admission(config: NodeConfig, ae, receiver: Receiver) -> Admission:
    """Connection caps, limits and the fast C-STORE reader where it may run (dicomnode.receive)."""
    node = config.node
    stream_over = node.stream_over_mb << 20
    fast = node.fast_store and fastpath.available()

    def install_fast(assoc) -> bool:
        if fast:
            fastpath.install_waits(assoc)
        if not (fast and fastpath.allowed_on(assoc, receiver.handle_store)):
            return False
        fastpath.install(assoc, FastStore(receiver.answer, functools.partial(_calling_ae, assoc), receiver.open_stream,
                                          stream_over))
        return True

    return Admission(lambda: ae.active_associations, max_connections=node.max_associations,
                     max_per_peer=node.max_associations_per_peer, handshake_s=node.acse_timeout_s,
                     fast_limits=Limits(node.max_pdu, node.max_dataset_mb << 20, node.network_timeout_s),
                     stock_limits=Limits(node.max_pdu, min(stream_over, node.max_dataset_mb << 20),
                                         node.network_timeout_s),
                     install_fast=install_fast)


def main(argv: list[str] | None = None) -> None:
    """``python -m dicomnode.scp --data-dir D --port P``: the bare Storage SCP (benchmarks, tests).

    Runs until SIGTERM/SIGINT; the full node (queue, worker, senders) is ``ich-node serve``. With
    ``node.receivers`` > 1 this process is receiver 0 and starts the others on the same port.
    """
    import argparse
    import signal

    from .config import load_config

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--config", help="TOML file (ICH_NODE__* overrides apply)")
    p.add_argument("--config-json", help=argparse.SUPPRESS)  # a whole NodeConfig (how the node starts its receivers)
    p.add_argument("--data-dir")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--ae-title")
    p.add_argument("--instance", type=int, default=0, help=argparse.SUPPRESS)  # set for the receivers it starts
    args = p.parse_args(argv)
    cfg = NodeConfig.model_validate_json(Path(args.config_json).read_text()) if args.config_json else load_config(args.config)
    for key, value in (("data_dir", args.data_dir), ("host", args.host), ("port", args.port), ("ae_title", args.ae_title)):
        if value is not None:
            setattr(cfg.node, key, value)
    logging.basicConfig(level=cfg.logging.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    index = Index(cfg.node.index_path)
    spool = Spool(cfg.node.spool_dir, cfg.storage.min_free_bytes)
    pseudonym = Pseudonymizer.for_data_dir(cfg.node.data_dir)
    index.migrate_pseudonyms(spool.root, pseudonym)  # schema 2 → 3, before anything is received
    spool.remove_partials()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before "listening": a SIGTERM right after it stops cleanly
        signal.signal(sig, lambda *_: stop.set())
    server = start_scp(cfg, index, spool, pseudonym=pseudonym, instance=args.instance)
    print(f"listening {server.port}", flush=True)
    if args.instance:  # a child receiver: the node adds its counters up from a file
        publisher = processes.publish_stats(cfg.node.data_dir, args.instance, server.stats.snapshot, stop)
    stop.wait()
    server.stop()
    if args.instance:
        publisher.join(5)
    index.close()
    LOG.info("stopped: %s", server.stats)


if __name__ == "__main__":
    main()
