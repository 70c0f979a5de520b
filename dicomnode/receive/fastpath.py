"""The fast C-STORE reader, installed per association on pynetdicom's DUL — only where it is safe.

Why: out of the box pynetdicom reads a PDU 4 KiB at a time and turns every P-DATA-TF into PDU
objects, state-machine events and DIMSE fragments (≈ 0.3× of dcmtk storescp on CT slices). For an
established, idle association the reader here hands complete C-STORE requests to
:class:`~dicomnode.receive.fast_store.FastStore` straight from the PDU bytes and reads the next PDU
in the same turn when it is already arriving; every other PDU goes to pynetdicom exactly as its
own reader would pass it on.

How it stays honest about pynetdicom's internals:

* it is installed on one association at a time (``EVT_CONN_OPEN``, :func:`install`), as that DUL
  object's own ``_read_pdu_data``; no class attribute or module global of pynetdicom is replaced,
  so the node's own SCU associations, and any other AE in the process, run stock pynetdicom;
* it re-implements ``DULServiceProvider._read_pdu_data`` and relies on a few other internals
  (listed in :data:`FINGERPRINTS`, hashed from their source). :func:`mismatches` compares them with
  the installed pynetdicom at start-up; on any difference the node logs a warning and every
  association runs stock pynetdicom (events included) — slower, never wrong;
* it steps aside for an association on which anyone bound a handler to an event it would bypass
  (:data:`BYPASSED_EVENTS`) or a C-STORE handler other than the node's own: those then fire as
  pynetdicom documents. The node's own documented hook, ``Receiver.on_stored``, fires on both paths.

Limits on what a peer can make it allocate live in :mod:`dicomnode.receive.guard`, under both paths.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import logging
import os
import select
import ssl
import struct
import threading
import weakref
from typing import Callable

from pynetdicom.presentation import PresentationContext

from .fast_store import FastStore, ProtocolViolation

_LOG = logging.getLogger("pynetdicom.dul")  # the same logger pynetdicom's reader uses
LOG = logging.getLogger("dicomnode.receive.fastpath")

_PDU_TYPES = frozenset(range(0x01, 0x08))
_INLINE_PDUS = 64  # most PDUs one reactor turn reads in a row on the fast path (then housekeeping)
_INLINE_WAIT_S = 0.002  # how long it waits for the next one before handing back to the reactor

# sha256[:16] of the source of each pynetdicom internal this module re-implements or relies on,
# as in pynetdicom 3.0.x. A different source means a different pynetdicom: run stock.
FINGERPRINTS = {
    "dul.DULServiceProvider._read_pdu_data": "19f2d4e38c13c835",  # re-implemented by _read_pdu_data below
    "dul.DULServiceProvider._decode_pdu": "fc71dd1bf853e1ce",  # called as it is
    "dul.DULServiceProvider._is_transport_event": "8725ed03bb8fbdef",  # the only caller of _read_pdu_data
    "dul.DULServiceProvider.run_reactor": "e3a10eb3a0931e48",  # idle timer, event queue, kill flag
    "dul.DULServiceProvider.__init__": "c82dafa9438ddf70",  # event_queue, _recv_pdu, _idle_timer, state_machine
    "association.Association.__init__": "eb07516b8009ad8f",  # _sent_release, dimse
    "dimse.DIMSEServiceProvider.receive_primitive": "5f99c86b14a15cef",  # .message is None between messages
    "fsm.StateMachine.transition": "ea885ad668e50403",  # current_state "Sta6" = established, idle
    "dul.DULServiceProvider.send_pdu": "7cbce5da8594124e",  # wrapped per association: wakes the DUL's wait
    "association.Association._run_reactor": "f28838c5559e462a",  # sleeps 1 ms, then waits on _reactor_checkpoint
}
_WAIT_MAX_S = 0.005  # longest a reactor now waits for work before it re-checks its state

# Events the fast path does not raise for the PDUs it takes: bound to any of them, it steps aside
# (pynetdicom's own debug-log handlers excepted: the node does not log PDUs).
BYPASSED_EVENTS = ("EVT_PDU_RECV", "EVT_DATA_RECV", "EVT_DIMSE_RECV", "EVT_PDU_SENT", "EVT_DATA_SENT",
                   "EVT_DIMSE_SENT", "EVT_FSM_TRANSITION")


def fingerprint(dotted: str) -> str:
    """sha256[:16] of the source of ``pynetdicom.<dotted>`` ("" when it cannot be found)."""
    import importlib

    module, _, path = dotted.partition(".")
    obj = importlib.import_module(f"pynetdicom.{module}")
    try:
        for part in path.split("."):
            obj = getattr(obj, part)
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    except (AttributeError, OSError, TypeError):
        return ""


@functools.lru_cache(maxsize=1)
def mismatches() -> tuple[str, ...]:
    """The internals whose source differs from what this module was written against."""
    return tuple(name for name, expected in FINGERPRINTS.items() if fingerprint(name) != expected)


def available() -> bool:
    """True when the fast path may run on this pynetdicom; warns once when it may not."""
    bad = mismatches()
    if bad and not getattr(available, "_warned", False):
        available._warned = True  # type: ignore[attr-defined]
        import pynetdicom

        LOG.warning("pynetdicom %s differs from the version the fast C-STORE path was written for (%s); "
                    "running stock pynetdicom (slower ingest, same guarantees)", pynetdicom.__version__,
                    ", ".join(bad))
    return not bad


def allowed_on(assoc, own_store_handler: Callable) -> bool:
    """No handler bound that the fast path would bypass, and the C-STORE handler is the node's own."""
    from pynetdicom import evt

    for name in BYPASSED_EVENTS:
        # pynetdicom binds its own debug-log handlers (pynetdicom._handlers) to some of these
        if any(h.__module__ != "pynetdicom._handlers" for h, _ in assoc.get_handlers(getattr(evt, name))):
            return False
    handler = assoc.get_handlers(evt.EVT_C_STORE)
    return bool(handler) and handler[0] == own_store_handler


def install_waits(assoc) -> None:
    """Let ``assoc``'s two reactor threads wait for work instead of polling every millisecond.

    pynetdicom's DUL and Association loops sleep 1 ms per turn when idle: ≈ 2 × 1000 wake-ups a second
    per association, measured at 5 % of a core each (22 % for four idle associations). Here, per
    association (call at EVT_CONN_OPEN, before the reactors start): the DUL waits up to 5 ms in
    ``select`` on its socket and a wake-up pipe written by ``send_pdu``; the Association's reactor
    checkpoint also waits up to 5 ms for the next DIMSE message. Every loop still re-checks its state
    (timers, release, abort) at least every ~6 ms.
    """
    dul = assoc.dul
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    send, transport_event = dul.send_pdu, dul._is_transport_event

    def send_pdu(primitive) -> None:
        send(primitive)
        try:
            os.write(w, b"x")
        except OSError:
            pass

    def is_transport_event() -> bool:
        if transport_event():
            return True
        if _dul_wait(dul, r):
            return transport_event()
        return False

    dul.send_pdu, dul._is_transport_event = send_pdu, is_transport_event
    weakref.finalize(dul, _close_fds, r, w)  # the pipe lives as long as the association's DUL
    assoc._reactor_checkpoint = _Checkpoint(assoc)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def _dul_wait(dul, wake: int) -> bool:
    """Wait for the socket or a send, when the DUL has nothing queued; True when the socket is readable."""
    sock = getattr(dul.socket, "socket", None)
    if sock is None or dul.to_provider_queue.qsize() or dul.event_queue.qsize():
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        ready, _, _ = select.select([sock, wake], [], [], _WAIT_MAX_S)
    except (OSError, ValueError):
        return False
    if wake in ready:
        try:
            while os.read(wake, 4096):
                pass
        except OSError:
            pass
    return sock in ready


class _Checkpoint(threading.Event):
    """The Association reactor's checkpoint (a set/clear Event pynetdicom uses to pause the loop) that,
    while set, also waits up to 5 ms for the next DIMSE message before letting the loop run its checks."""

    def __init__(self, assoc) -> None:
        super().__init__()
        self.set()
        self._queue = assoc.dimse.msg_queue

    def wait(self, timeout: float | None = None) -> bool:
        ok = super().wait(timeout)
        if ok:
            q = self._queue
            with q.not_empty:  # holds the queue's mutex: look at its deque, not qsize()
                if not q.queue:
                    q.not_empty.wait(_WAIT_MAX_S)
        return ok


def install(assoc, fast: FastStore) -> None:
    """Make ``assoc``'s DUL read PDUs through :func:`_read_pdu_data` with ``fast`` (call at EVT_CONN_OPEN)."""
    dul = assoc.dul
    dul._read_pdu_data = functools.partial(_read_pdu_data, dul, fast)


def _read_pdu_data(dul, fast: FastStore) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data`` with the fast C-STORE path in front.

    Same events as the original on every error (Evt17 transport closed, Evt19 invalid PDU). While
    the fast path takes PDUs, the next one is read here too if it arrives within ``_INLINE_WAIT_S``
    (up to ``_INLINE_PDUS`` in a row): a reactor turn costs ≈ 40 µs of Python and a CT slice comes
    in 5–6 PDUs.
    """
    for _ in range(_INLINE_PDUS):
        if not _read_one_pdu(dul, fast) or dul._kill_thread or dul.assoc.is_aborted:
            return
        sock = dul.socket.socket
        if sock is None:
            return
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            try:
                if not select.select([sock], [], [], _INLINE_WAIT_S)[0]:
                    return
            except (OSError, ValueError):
                return  # the reactor's own check reports the closed transport
        dul._idle_timer.restart()


def _recv_exact(sock, n: int) -> bytearray:
    """``n`` bytes (fewer only if the peer closed). ``n`` has passed the guard's limits already."""
    buf = bytearray(n)
    with memoryview(buf) as view:
        got = 0
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if not k:
                break
            got += k
    if got < n:
        del buf[got:]
    return buf


def _read_one_pdu(dul, fast: FastStore) -> bool:
    """Read one PDU; True when the fast path took it (the caller may read the next one at once)."""
    try:
        sock = dul.socket.socket
        head = _recv_exact(sock, 6)  # through the guard: the length is checked before the body is read
        pdu_type, _, length = struct.unpack(">BBL", head)
        body = _recv_exact(sock, length)
    except (OSError, TimeoutError, AttributeError, struct.error):
        dul.event_queue.put("Evt17")
        return False
    if pdu_type not in _PDU_TYPES:
        _LOG.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        dul.event_queue.put("Evt19")
        return False
    if len(body) != length:
        _LOG.error(f"The received PDU is shorter than expected ({len(body) + 6} of {length + 6} bytes received)")
        dul.event_queue.put("Evt17")
        return False
    if pdu_type != 0x04:
        fast.abandon()
    else:
        try:
            if fast.take(dul, body):
                return True
        except ProtocolViolation as exc:
            _LOG.error("aborting association: %s", exc)
            fast.abandon()
            dul.event_queue.put("Evt19")
            return False
    head += body
    try:
        pdu, event = dul._decode_pdu(head)
        dul.event_queue.put(event)
    except Exception as exc:  # noqa: BLE001 - as pynetdicom: an undecodable PDU is Evt19
        _LOG.error("Unable to decode the received PDU data")
        _LOG.exception(exc)
        dul.event_queue.put("Evt19")
        return False
    dul._recv_pdu.put(pdu)
    return False


class SharedContext(PresentationContext):
    """A supported presentation context whose deep copy shares its (immutable) UIDs.

    pynetdicom deep-copies the server's supported contexts for every association; with every storage
    SOP class × 12 transfer syntaxes that re-validates thousands of UIDs, ≈ 30 ms per association.
    A context copied with its own lists is as independent as a deep copy (UIDs are immutable strings).
    """

    def __deepcopy__(self, memo: dict) -> "SharedContext":
        new = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, list):
                setattr(new, name, list(value))
        return new


def shared_contexts(contexts: list[PresentationContext]) -> list[SharedContext]:
    """The same contexts, as :class:`SharedContext` (pass them to ``AE.start_server(contexts=...)``)."""
    out = []
    for cx in contexts:
        new = SharedContext.__new__(SharedContext)
        new.__dict__.update(copy.deepcopy(vars(cx)))
        out.append(new)
    return out


def memoise_uid_validator() -> None:
    """Memoise the UID validator pynetdicom runs on every proposed UID (``_config.VALIDATORS``, a
    documented hook; the validator is pure): an association proposes the same few hundred UIDs."""
    from pynetdicom import _config

    ui = _config.VALIDATORS["UI"]
    if not hasattr(ui, "cache_info"):
        _config.VALIDATORS["UI"] = functools.lru_cache(maxsize=4096)(ui)
