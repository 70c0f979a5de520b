"""Speed fixes to pynetdicom 3.0's receive path, applied once per process by ``dicomnode.scp``.

Why: out of the box a pynetdicom Storage SCP reaches ≈ 0.3× of dcmtk storescp on big CT slices,
mostly from 1 ms polling sleeps, 4 KiB socket reads and two thread hand-offs per C-STORE. These
patches touch pynetdicom internals (``AssociationSocket.recv``, the DUL and Association reactors, an
acceptor's DIMSE message queue); pyproject pins pynetdicom < 3.1 because of that. Behaviour is
otherwise unchanged; requestor (SCU) associations keep pynetdicom's own reactor. Measured in
docs/node-receive.md (benchmarks/ingest.py).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import queue
import select
import ssl
import struct
import threading
import time

from .fast_store import ProtocolViolation

_LOG = logging.getLogger("pynetdicom.dul")

_WAIT_MAX_S = 0.005  # longest a pynetdicom polling loop now waits when nothing happens


class _EventDrivenTime:
    """Stand-in for the ``time`` module inside ``pynetdicom.dul`` and ``pynetdicom.association``.

    Both run polling loops that ``time.sleep(0.001)`` between checks, which costs a few
    milliseconds of latency per C-STORE (≈0.3× of storescp). Here a sleep from a DUL thread
    waits in ``select`` on the socket and a wake-up pipe (written when a PDU is queued for
    sending); a sleep from an Association thread waits on its DIMSE message queue. Both wake
    as soon as there is work and at most after 5 ms, so every loop still re-checks its state.
    """

    def __getattr__(self, name: str):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        wait = getattr(threading.current_thread(), "_ichnode_wait", None)
        if wait is None or seconds <= 0:
            time.sleep(seconds)
        else:
            wait()


def _dul_wait(dul) -> None:
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    rfd = dul._ichnode_wake[0]
    if sock is None:
        time.sleep(0.001)
        return
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        if dul.to_provider_queue.qsize() or dul.event_queue.qsize():
            return
        ready, _, _ = select.select([sock, rfd], [], [], _WAIT_MAX_S)
    except (OSError, ValueError):
        time.sleep(0.001)
        return
    if rfd in ready:
        try:
            while os.read(rfd, 4096):
                pass
        except BlockingIOError:
            pass


def _assoc_wait(assoc) -> None:
    try:
        q = assoc.dimse.msg_queue
    except AttributeError:
        time.sleep(0.001)
        return
    with q.not_empty:
        if not q._qsize():
            q.not_empty.wait(_WAIT_MAX_S)


class _InlineStoreQueue(queue.Queue):
    """An acceptor's DIMSE message queue that serves C-STORE requests on the spot.

    pynetdicom assembles a message in the DUL thread, queues it, wakes the Association thread to
    run the handler, which queues the response and wakes the DUL thread to send it: two thread
    hand-offs per image, each a scheduler wake-up (milliseconds on a busy host). A C-STORE peer
    waits for each response anyway, so serving the request in the DUL thread loses nothing.
    Anything unusual (other messages, unknown context, release in progress) takes the normal path.
    """

    def __init__(self, assoc) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        from pynetdicom.dimse_primitives import C_STORE

        context_id, msg = item
        a = self._assoc
        if (isinstance(msg, C_STORE) and msg.is_valid_request and context_id in a._accepted_cx
                and not a._sent_release and a.is_established):
            a._serve_request(msg, context_id)
            return
        super().put(item, block, timeout)


FAST_STORE_ATTR = "_ichnode_fast_store"  # AE attribute: callable(assoc) -> fast_store.FastStore
_PDU_TYPES = frozenset(range(0x01, 0x08))


_INLINE_PDUS = 64  # most PDUs one reactor turn reads in a row on the fast path (then housekeeping)
_INLINE_WAIT_S = 0.002  # how long it waits for the next one before handing back to the reactor


def _read_pdu_data(self) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data`` with the fast C-STORE path in front.

    Same events as the original on every error (Evt17 transport closed, Evt19 invalid PDU). While
    the fast path takes PDUs, the next one is read here too if it arrives within ``_INLINE_WAIT_S``
    (up to ``_INLINE_PDUS`` in a row): a reactor turn costs ≈ 40 µs of Python and a CT slice comes
    in 5–6 PDUs. Anything else — a PDU the fast path does not take, a quiet socket, a local abort —
    goes back to pynetdicom's loop as before.
    """
    fast = getattr(self, "_ichnode_fast", None)
    for _ in range(_INLINE_PDUS):
        if not _read_one_pdu(self, fast) or self._kill_thread or self.assoc.is_aborted:
            return
        sock = self.socket.socket
        if sock is None:
            return
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            try:
                if not select.select([sock], [], [], _INLINE_WAIT_S)[0]:
                    return
            except (OSError, ValueError):
                return  # the reactor's own check reports the closed transport
        self._idle_timer.restart()


def _read_one_pdu(self, fast) -> bool:
    """Read one PDU; True when the fast path took it (the caller may read the next one at once)."""
    try:
        head = self.socket.recv(6)
        pdu_type, _, length = struct.unpack(">BBL", head)
    except (OSError, TimeoutError, struct.error):
        self.event_queue.put("Evt17")
        return False
    if pdu_type not in _PDU_TYPES:
        _LOG.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        self.event_queue.put("Evt19")
        return False
    try:
        body = self.socket.recv(length)
    except (OSError, TimeoutError):
        self.event_queue.put("Evt17")
        return False
    if len(body) != length:
        _LOG.error(f"The received PDU is shorter than expected ({len(body) + 6} of {length + 6} bytes received)")
        self.event_queue.put("Evt17")
        return False
    if fast is not None:
        if pdu_type != 0x04:
            fast.abandon()
        else:
            try:
                if fast.take(self, body):
                    return True
            except ProtocolViolation as exc:
                _LOG.error("aborting association: %s", exc)
                fast.abandon()
                self.event_queue.put("Evt19")
                return False
    head += body
    try:
        pdu, event = self._decode_pdu(head)
        self.event_queue.put(event)
    except Exception as exc:  # noqa: BLE001 - as pynetdicom: an undecodable PDU is Evt19
        _LOG.error("Unable to decode the received PDU data")
        _LOG.exception(exc)
        self.event_queue.put("Evt19")
        return False
    self._recv_pdu.put(pdu)
    return False


def _copy_contexts(obj, memo=None):
    """What pynetdicom's acceptor deep-copies for every association: the AE's presentation contexts.

    With every storage SOP class × 13 transfer syntaxes that deepcopy re-validates thousands of
    pydicom UIDs, ≈ 30 ms per association (a fifth of sending a 140-slice series). UIDs are
    immutable strings, so a copy of each context with its own transfer syntax list is as good.
    """
    from pynetdicom.presentation import PresentationContext

    if isinstance(obj, list) and all(isinstance(c, PresentationContext) for c in obj):
        out = []
        for c in obj:
            n = copy.copy(c)
            n._transfer_syntax = list(c._transfer_syntax)
            out.append(n)
        return out
    return copy.deepcopy(obj, memo)


def apply() -> None:
    """Speed fixes for receiving big data sets; pynetdicom's behaviour is otherwise unchanged.

    1. pynetdicom reads a PDU 4 KiB at a time into a growing bytearray (hundreds of calls and
       copies per CT slice): read it with ``recv_into`` into one preallocated buffer instead.
    2. Its 1 ms polling sleeps become event-driven waits (see :class:`_EventDrivenTime`).
    3. C-STORE requests are served in the DUL thread (see :class:`_InlineStoreQueue`).
    4. On an AE carrying ``FAST_STORE_ATTR`` (``assoc -> FastStore``), the P-DATA of C-STORE
       requests bypasses pynetdicom's decoding altogether (see :mod:`dicomnode.fast_store`).
    5. Each new association copies the AE's presentation contexts without ``deepcopy`` (see
       :func:`_copy_contexts`), and the UID validator pynetdicom runs on every proposed UID
       (``_config.VALIDATORS["UI"]``, a documented hook; pure, imports per call) is memoised:
       an association proposes the same few hundred UIDs each time.
    Applied once per process; written against pynetdicom 3.0 (pinned <3.1 in pyproject).
    """
    import pynetdicom._config as p_config
    import pynetdicom.association as p_assoc
    import pynetdicom.dul as p_dul
    import pynetdicom.transport as p_transport
    from pynetdicom.transport import AssociationSocket

    if getattr(AssociationSocket.recv, "_ichnode", False):
        return

    def recv(self, nr_bytes: int) -> bytearray:
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        try:
            while got < nr_bytes:
                n = self.socket.recv_into(view[got:], nr_bytes - got)
                if not n:
                    break
                got += n
        finally:
            view.release()
        if got < nr_bytes:
            del buf[got:]
        return buf

    recv._ichnode = True  # type: ignore[attr-defined]
    AssociationSocket.recv = recv

    DUL = p_dul.DULServiceProvider
    orig_run, orig_send = DUL.run_reactor, DUL.send_pdu

    def run_reactor(self) -> None:
        factory = getattr(getattr(self.assoc, "ae", None), FAST_STORE_ATTR, None)
        self._ichnode_fast = factory(self.assoc) if factory is not None and self.assoc.is_acceptor else None
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._ichnode_wake = (r, w)
        self._ichnode_wait = lambda: _dul_wait(self)
        try:
            orig_run(self)
        finally:
            self._ichnode_wait = None
            self._ichnode_wake = (-1, -1)
            os.close(r)
            os.close(w)

    def send_pdu(self, primitive) -> None:
        orig_send(self, primitive)
        w = getattr(self, "_ichnode_wake", (-1, -1))[1]
        if w >= 0:
            try:
                os.write(w, b"x")
            except (BlockingIOError, OSError):
                pass

    DUL.run_reactor, DUL.send_pdu = run_reactor, send_pdu
    DUL._read_pdu_data = _read_pdu_data

    orig_assoc_run = p_assoc.Association.run_reactor

    def assoc_run_reactor(self) -> None:
        # Only acceptors: a requestor's user thread waits for the reactor to pause at each
        # send_*(), which an up-to-5 ms wait would slow down.
        self._ichnode_wait = (lambda: _assoc_wait(self)) if self.is_acceptor else None
        if self.is_acceptor:
            self.dimse.msg_queue = _InlineStoreQueue(self)
        try:
            orig_assoc_run(self)
        finally:
            self._ichnode_wait = None

    p_assoc.Association.run_reactor = assoc_run_reactor
    p_dul.time = p_assoc.time = _EventDrivenTime()
    p_transport.deepcopy = _copy_contexts
    ui = p_config.VALIDATORS["UI"]
    if not hasattr(ui, "cache_info"):
        p_config.VALIDATORS["UI"] = functools.lru_cache(maxsize=4096)(ui)
