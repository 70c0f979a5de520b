"""C-STORE data path that skips pynetdicom's per-PDU machinery (PS3.7 9.3.1, PS3.8 9.3.5).

Why: on a CT slice pynetdicom spends ≈ 1.5–2 ms of CPU per image turning P-DATA-TF PDUs into PDU
objects, state-machine events, DIMSE fragments and pydicom datasets, and encoding the response
through pydicom again — more than the durable write itself (benchmarks/ingest.py prints receiver
CPU per image). Here the P-DATA of a C-STORE request is read straight from the PDU bytes and the
response is encoded by hand; the data set goes to ``Receiver.answer`` (validate → durable in the
write-ahead journal → status) before the response leaves; its spool file and index row are written
right after, in this thread, while the peer prepares its next image — before this association
reads another PDU, so a release is answered only once everything it sent is indexed. (A helper
thread for that part was tried: on two cores it cost more CPU in thread switches than it overlapped.)

Scope, deliberately narrow: association negotiation, release, abort, TLS, C-ECHO and everything
unusual stay with pynetdicom. A PDU is taken here only when the association is established and idle
in pynetdicom's eyes and the PDU opens a complete C-STORE-RQ command (one PDV, data set present) on
an accepted presentation context whose abstract syntax is the command's Affected SOP Class;
otherwise :meth:`FastStore.take` returns False and pynetdicom decodes the PDU as usual. Once a
C-STORE is taken, its data fragments must follow on the same context; anything else is a protocol
violation and the association is aborted (as pynetdicom would).

Memory: a data set is held as its PDU fragments until it is complete — up to ``memory_limit`` bytes;
past that the fragments so far and every later one go to a :class:`Sink` (``Receiver.open_stream``:
a spool temp file), so one association holds at most ``memory_limit`` + one PDU.
"""

from __future__ import annotations

import struct
from typing import Callable, Protocol

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101

# Answer = (status, error comment) for one stored data set; Receiver.answer has this shape:
# answer(sop_class, sop_uid, transfer_syntax, fragments, calling_ae, later, journal=stream). Work it
# appends to ``later`` runs after the response has left (see Receiver.store); ``journal`` is the
# data set's JournalStream (or None), already holding every fragment.
Answer = Callable[..., "tuple[int, str]"]
STREAM_OVER = 32 << 20  # default memory_limit: a CT slice is 0.5 MB, an enhanced multi-frame CT can be GBs


class JournalStream(Protocol):
    """Where each fragment is journaled as it arrives (``dicomnode.store.journal.JournalStream``)."""

    def write(self, chunk: memoryview) -> None: ...

    def abandon(self) -> None: ...


class Sink(Protocol):
    """Where a data set too large for memory goes as it arrives (see ``Receiver.open_stream``)."""

    def write(self, chunk: memoryview) -> None: ...

    def finish(self) -> tuple[int, str]: ...  # (status, error comment) to answer

    def discard(self) -> None: ...


# open_stream(sop_class, sop_uid, transfer_syntax, calling_ae, fragments so far) -> Sink
OpenStream = Callable[[str, str, str, str, list], Sink]


class ProtocolViolation(Exception):
    """Fragments of a C-STORE taken here arrived out of order: the association must be aborted."""


def parse_command(raw: bytes | memoryview) -> dict[int, bytes] | None:
    """Implicit VR little endian command set (group 0000) → {element: value}; None if malformed."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 8 > end:
            return None
        group, elem, n = struct.unpack_from("<HHI", raw, pos)
        if group != 0 or pos + 8 + n > end:
            return None
        out[elem] = bytes(raw[pos + 8:pos + 8 + n])
        pos += 8 + n
    return out


def _us(value: bytes | None) -> int | None:
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def _uid(value: bytes | None) -> str:
    return value.rstrip(b"\0 ").decode("ascii", "replace") if value else ""


def _element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, elem, len(value)) + value


def store_response(context_id: int, message_id: int, sop_class: str | bytes, sop_uid: str | bytes, status: int,
                   comment: str = "") -> bytes:
    """A whole P-DATA-TF PDU carrying the C-STORE-RSP command (one last command fragment).

    UIDs are echoed as the request carried them (bytes), whatever they hold: a request with a
    non-ASCII UID still gets its failure status, not an abort.
    """

    def ui(uid: str | bytes) -> bytes:
        b = uid if isinstance(uid, bytes) else uid.encode("ascii", "replace")
        b = b.rstrip(b"\0 ")[:64]
        return b + b"\0" if len(b) % 2 else b

    els = _element(0x0002, ui(sop_class)) + _element(0x0100, struct.pack("<H", C_STORE_RSP))
    els += _element(0x0120, struct.pack("<H", message_id)) + _element(0x0800, struct.pack("<H", NO_DATA_SET))
    els += _element(0x0900, struct.pack("<H", status))
    if status != 0 and comment:
        text = comment[:64].encode("ascii", "replace")
        els += _element(0x0902, text + b" " if len(text) % 2 else text)
    els += _element(0x1000, ui(sop_uid))
    command = _element(0x0000, struct.pack("<I", len(els))) + els
    pdv = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


class FastStore:
    """One association's C-STORE in progress on the fast path (lives in its DUL thread)."""

    def __init__(self, answer: Answer, calling_ae: Callable[[], str], open_stream: OpenStream | None = None,
                 memory_limit: int = STREAM_OVER,
                 journal_stream: "Callable[[], JournalStream | None] | None" = None) -> None:
        self.answer = answer
        self.calling_ae = calling_ae  # asked when a data set is complete (negotiation is over by then)
        self.open_stream = open_stream
        self.memory_limit = memory_limit
        self.journal_stream = journal_stream  # Journal.stream: fragments journaled as they arrive
        self._contexts: dict[int, object] | None = None  # accepted contexts by id, once established
        self.sink: Sink | None = None
        self._reset()

    def _reset(self) -> None:
        self.context_id: int | None = None
        self.transfer_syntax = ""
        self.command: dict[int, bytes] = {}
        self.fragments: list[memoryview] = []
        self.held = 0  # bytes in self.fragments
        self.sink = None
        self.journal: JournalStream | None = None

    @property
    def busy(self) -> bool:
        return self.context_id is not None

    def abandon(self) -> None:
        """A non-P-DATA PDU arrived (release, abort): whatever was half-received is dropped."""
        if self.sink is not None:
            self.sink.discard()
        if self.journal is not None:
            self.journal.abandon()
        self._reset()

    def _context(self, assoc, context_id: int):
        if self._contexts is None:  # negotiation is over once a P-DATA arrives
            self._contexts = {cx.context_id: cx for cx in assoc.accepted_contexts}
        return self._contexts.get(context_id)

    def take(self, dul, body: bytearray) -> bool:
        """Handle this P-DATA-TF PDU body (after the 6-byte header) if it belongs here.

        Returns False, consuming nothing, when pynetdicom should decode it instead.
        Raises :class:`ProtocolViolation` for fragments that break a C-STORE taken here.
        """
        items = _pdv_items(body)
        if items is None:
            if self.busy:
                raise ProtocolViolation("malformed P-DATA-TF inside a C-STORE")
            return False
        if not self.busy:
            ctx, mch, start, end = items[0]
            if not (mch & 0x01 and mch & 0x02) or not _idle(dul):
                return False
            command = parse_command(memoryview(body)[start:end])
            if command is None or _us(command.get(0x0100)) != C_STORE_RQ:
                return False
            if _us(command.get(0x0800)) in (None, NO_DATA_SET) or _us(command.get(0x0110)) is None:
                return False
            context = self._context(dul.assoc, ctx)
            if context is None or str(context.abstract_syntax) != _uid(command.get(0x0002)):
                return False
            if any(c != ctx or m & 0x01 for c, m, _, _ in items[1:]):
                return False
            self.context_id, self.command = ctx, command
            self.transfer_syntax = str(context.transfer_syntax[0])
            self.journal = self.journal_stream() if self.journal_stream is not None else None
            items = items[1:]
        view = memoryview(body)
        for ctx, mch, start, end in items:
            if ctx != self.context_id or mch & 0x01:
                raise ProtocolViolation(f"unexpected PDV (context {ctx}, header 0x{mch:02X}) inside a C-STORE")
            fragment = view[start:end]
            if self.sink is not None:
                self.sink.write(fragment)
            else:
                self.fragments.append(fragment)
                self.held += len(fragment)
                if self.journal is not None:  # the disk works while the peer still sends
                    self.journal.write(fragment)
                if self.held > self.memory_limit and self.open_stream is not None:
                    self._start_stream()
            if mch & 0x02:
                self._finish(dul)
        return True

    def _start_stream(self) -> None:
        """Too large to hold: what arrived so far, and the rest as it comes, goes to a sink."""
        command = self.command
        self.sink = self.open_stream(_uid(command.get(0x0002)), _uid(command.get(0x1000)), self.transfer_syntax,
                                     self.calling_ae(), self.fragments)
        self.fragments, self.held = [], 0
        if self.journal is not None:  # a streamed data set is made durable by its spool file's fsyncs
            self.journal.abandon()
            self.journal = None

    def _finish(self, dul) -> None:
        command, context_id, data, sink = self.command, self.context_id, self.fragments, self.sink  # not joined
        sop_class, sop_uid = _uid(command.get(0x0002)), _uid(command.get(0x1000))
        transfer_syntax, journal = self.transfer_syntax, self.journal
        self._reset()
        later: list = []
        if sink is not None:
            status, comment = sink.finish()
        else:
            status, comment = self.answer(sop_class, sop_uid, transfer_syntax, data, self.calling_ae(), later,
                                          journal=journal)
        if journal is not None:  # refused, or journaled whole after all: its fragments are void
            journal.abandon()
        dul.socket.send(store_response(context_id, _us(command.get(0x0110)) or 0, command.get(0x0002, b""),
                                       command.get(0x1000, b""), status, comment))
        for work in later:  # a journaled data set's spool file and index row, while the peer sends the next one
            work()


def _pdv_items(body: bytearray) -> list[tuple[int, int, int, int]] | None:
    """(context id, message control header, value start, value end) of each PDV item; None if malformed."""
    items, pos, end = [], 0, len(body)
    while pos < end:
        if pos + 6 > end:
            return None
        n, ctx, mch = struct.unpack_from(">IBB", body, pos)
        if n < 2 or pos + 4 + n > end:
            return None
        items.append((ctx, mch, pos + 6, pos + 4 + n))
        pos += 4 + n
    return items or None


def _idle(dul) -> bool:
    """Established, nothing of pynetdicom's own in flight (no queued event, PDU or half message)."""
    assoc = dul.assoc
    return (assoc.is_established and not assoc._sent_release and dul.state_machine.current_state == "Sta6"
            and dul.event_queue.empty() and dul._recv_pdu.empty() and assoc.dimse.message is None)
