"""The Receiver: a C-STORE data set → validated, journalled, spooled, indexed, listeners told — before
the answer. Independent of the network (unit-testable); ``server.start_scp`` binds it to pynetdicom."""

from __future__ import annotations

import io
import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from pydicom.dataset import Dataset

from ..store import digest
from ..config import NodeConfig
from .header import STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH
from .header import StoreRefused, check_complete, parse_header
from ..store.index import Index, InstanceInfo, InstanceRecord, StoreOutcome
from ..store.journal import Entry, Journal, JournalStalled, JournalStream
from ..pseudonym import Pseudonymizer
from .admission import Admission
from ..store.spool import Spool, SpoolFull
from ..uids import InvalidUID, validate_uid
from .filemeta import file_meta_bytes

LOG = logging.getLogger("dicomnode.scp")  # one name for everything the Storage SCP logs (operators filter on it)


MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

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


def _dataset_bytes(raw: bytes) -> memoryview | None:
    """The data set in one of our spool files (after its (0002,0000)-led meta group)."""
    if raw[132:138] != b"\x02\x00\x00\x00UL":
        return None
    (group_len,) = struct.unpack_from("<I", raw, 140)
    return memoryview(raw)[144 + group_len:]


# ------------------------------------------------------------------------------------------

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
              later: list[Callable[[], object]] | None = None,
              journal_stream: JournalStream | None = None) -> StoredInstance | None:
        """Store one data set as received (``data``: its bytes, or its P-DATA fragments in order);
        raises :class:`StoreRefused` with the status to answer.

        Durable when it returns: through the write-ahead journal when the receiver has one, else by
        the spool file's own fsyncs. With a journal and a ``later`` list, the rest — de-duplication,
        spool file, index row, listeners — is not done here but appended to ``later``
        as one call (returns None): the caller answers the peer first and runs it right after, while
        the peer prepares its next image. ``rewrite`` (journal replay) writes the file again even when
        the index already knows these bytes, and makes it durable directly. ``journal_stream``: the
        journal already holds the data set's fragments (fast path): a commit makes it durable."""
        chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        size = sum(len(c) for c in chunks)
        hdr = self.check(sop_class, sop_uid, transfer_syntax, chunks)
        check_complete(chunks, transfer_syntax, hdr.checked)  # (a streamed data set: on its spool file, _Stream)
        sop_class, sop_uid = hdr.sop_class, hdr.sop_uid
        now = time.time() if received_at is None else received_at
        rel = self.spool.relpath(hdr.study_uid, hdr.series_uid, sop_uid)
        meta = file_meta_bytes(sop_class, sop_uid, transfer_syntax, calling_ae)
        journal = None if rewrite else self.journal
        seq = None
        if journal is not None:
            if not self.spool.has_room(len(meta) + size):
                raise StoreRefused(STATUS_OUT_OF_RESOURCES, "node disk is full (free space below threshold)")
            try:
                if journal_stream is not None:
                    seq = journal_stream.commit(sop_class, sop_uid, transfer_syntax, calling_ae, now, size)
                if seq is None:  # no stream, or it was abandoned
                    seq = journal.append(sop_class, sop_uid, transfer_syntax, calling_ae, now, chunks)
            except JournalStalled as exc:
                LOG.critical("C-STORE refused: %s", exc)
                raise StoreRefused(STATUS_OUT_OF_RESOURCES, "node storage failing; send again later") from None

        def materialise(answered: bool = False) -> StoredInstance:
            try:
                dataset_digest = digest.digest(chunks)  # not needed for the answer: after it, when journaled
                with self._stripes[hash(sop_uid) % len(self._stripes)]:  # same UID from two associations
                    known = None if rewrite else self.index.lookup_digest(sop_uid)
                    if known is not None and digest.matches(known, chunks, computed=dataset_digest):
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
               calling_ae: str = "", later: list[Callable[[], object]] | None = None,
               journal: JournalStream | None = None) -> tuple[int, str]:
        """:meth:`store`, as the (status, error comment) to answer; never raises. ``later``, ``journal``:
        see store (``journal_stream``)."""
        try:
            self.store(sop_class, sop_uid, transfer_syntax, data, calling_ae, later=later, journal_stream=journal)
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
