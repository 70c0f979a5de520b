"""Transport guard: every length a peer declares is checked before anyone allocates for it.

Why: an unauthenticated TCP client talks to the node before any AE check. A PDU header may claim
4 GiB (PS3.8 9.3.1: a 32-bit length) and a data set may be sent in any number of PDUs; a reader that
trusts those numbers can be made to reserve memory the peer never sends. The guard wraps the
accepted socket of each association (``AssociationSocket.socket``, a public attribute) and walks the
byte stream as it is read — PDU headers and PDV item headers only (PS3.8 9.3.5), never the values —
so its limits hold for pynetdicom's own reader and for the fast C-STORE reader alike, whatever
pynetdicom version runs. On a violation it sends an A-ABORT (source: service provider, reason:
invalid PDU parameter value), logs the peer and the reason, closes, and the read fails like a
dropped connection.

Limits (see :class:`Limits`): an A-ASSOCIATE PDU ≤ 64 KiB; P-DATA-TF ≤ the maximum PDU length the
node announced; A-RELEASE/A-ABORT PDUs ≤ 64 bytes; a DIMSE command ≤ 64 KiB; one data set ≤
``max_message`` bytes (the fast path streams a large one to disk, pynetdicom's path holds it in RAM,
so the node sets this per path); every read times out after ``idle_s`` (a peer that stops mid-PDU
cannot hold a thread).
"""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass

LOG = logging.getLogger("dicomnode.receive.guard")

ASSOCIATE_MAX = 64 << 10  # A-ASSOCIATE-RQ/AC/RJ: a few hundred presentation contexts fit in ~30 KiB
SMALL_PDU_MAX = 64  # A-RELEASE-RQ/RP and A-ABORT carry 4 bytes
COMMAND_MAX = 64 << 10  # a DIMSE command set is a few hundred bytes

_ASSOCIATE = frozenset((0x01, 0x02, 0x03))
P_DATA = 0x04
_ABORT_PDU = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06))  # source 2 (provider), reason 6 (invalid parameter value)

_PDU_HEAD, _SKIP, _PDV_HEAD, _PDV_VALUE = range(4)


class PduViolation(OSError):
    """The peer broke a limit or PS3.8 framing; the association has been aborted."""


@dataclass(frozen=True)
class Limits:
    """What one association may make the node hold (bytes, seconds)."""

    max_pdu: int  # largest P-DATA-TF variable field (the node's announced maximum PDU length)
    max_message: int  # largest data set (sum of its PDV values)
    idle_s: float  # longest wait for the next bytes of a PDU
    max_associate: int = ASSOCIATE_MAX
    max_command: int = COMMAND_MAX

    def __post_init__(self) -> None:
        if self.max_pdu < 4096 or self.max_message < 1 or self.idle_s <= 0:
            raise ValueError(f"invalid receive limits: {self}")


class PduMeter:
    """Walks a peer's byte stream through PDU and PDV headers, checking every declared length.

    Feed it the bytes in the order they were read, in any split; values are skipped in bulk, so the
    cost is a few header unpacks per PDU.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._state = _PDU_HEAD
        self._head = bytearray()
        self._left = 0  # bytes left in the PDU being skipped / the PDV value
        self._pdu_left = 0  # bytes left in the current P-DATA-TF body
        self._message = 0  # data bytes of the data set being received
        self._command = 0  # bytes of the command being received

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Account for ``data``; raises :class:`PduViolation` (nothing else) on the first bad length."""
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._state in (_SKIP, _PDV_VALUE):
                n = min(self._left, end - pos)
                pos += n
                self._left -= n
                if not self._left:
                    self._state = _PDV_HEAD if self._state == _PDV_VALUE and self._pdu_left else _PDU_HEAD
                continue
            need = 6 - len(self._head)
            self._head += view[pos:pos + need]
            pos += min(need, end - pos)
            if len(self._head) < 6:
                return
            head, self._head = bytes(self._head), bytearray()
            if self._state == _PDU_HEAD:
                self._pdu_header(head)
            else:
                self._pdv_header(head)

    def _pdu_header(self, head: bytes) -> None:
        pdu_type, _, length = struct.unpack(">BBL", head)
        lim = self.limits
        if pdu_type == P_DATA:
            limit, what = lim.max_pdu, "P-DATA-TF longer than the maximum PDU length the node announced"
        elif pdu_type in _ASSOCIATE:
            limit, what = lim.max_associate, "A-ASSOCIATE PDU larger than the node accepts"
        elif 0x05 <= pdu_type <= 0x07:
            limit, what = SMALL_PDU_MAX, "A-RELEASE/A-ABORT PDU longer than PS3.8 allows"
        else:
            raise PduViolation(f"unknown PDU type 0x{pdu_type:02X}")
        if length > limit:
            raise PduViolation(f"{what} ({length} > {limit} bytes)")
        if pdu_type == P_DATA and length:
            self._state, self._pdu_left = _PDV_HEAD, length
        elif length:
            self._state, self._left = _SKIP, length

    def _pdv_header(self, head: bytes) -> None:
        item_len, _, mch = struct.unpack(">LBB", head)
        if item_len < 2 or item_len + 4 > self._pdu_left:
            raise PduViolation(f"PDV item of {item_len} bytes does not fit its P-DATA-TF ({self._pdu_left} left)")
        self._pdu_left -= item_len + 4
        value = item_len - 2
        if mch & 0x01:
            self._command += value
            if self._command > self.limits.max_command:
                raise PduViolation(f"DIMSE command longer than {self.limits.max_command} bytes")
            if mch & 0x02:
                self._command = 0
        else:
            self._message += value
            if self._message > self.limits.max_message:
                raise PduViolation(f"data set larger than {self.limits.max_message} bytes")
            if mch & 0x02:
                self._message = 0
        if value:
            self._state, self._left = _PDV_VALUE, value
        else:
            self._state = _PDV_HEAD if self._pdu_left else _PDU_HEAD


class GuardedSocket:
    """The accepted socket of one association, read through a :class:`PduMeter`.

    Reads are metered; everything else goes to the wrapped socket. ``__class__`` answers as the
    wrapped socket's so pynetdicom's ``isinstance(sock, ssl.SSLSocket)`` check (buffered TLS data)
    still sees a TLS socket.
    """

    def __init__(self, sock: socket.socket, limits: Limits, peer: str = "") -> None:
        object.__setattr__(self, "_sock", sock)
        object.__setattr__(self, "_meter", PduMeter(limits))
        object.__setattr__(self, "_peer", peer)
        object.__setattr__(self, "violation", None)
        sock.settimeout(limits.idle_s)

    @property  # type: ignore[misc]
    def __class__(self):  # noqa: D105 - see the class docstring
        return type(self._sock)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = self._sock.recv(bufsize, flags)
        self._check(data)
        return data

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        got = self._sock.recv_into(buffer, nbytes, flags)
        if got:
            with memoryview(buffer) as view:
                self._check(view[:got])
        return got

    def _check(self, data) -> None:
        if self.violation is not None:
            raise PduViolation(self.violation)
        try:
            self._meter.feed(data)
        except PduViolation as exc:
            object.__setattr__(self, "violation", str(exc))
            LOG.warning("association from %s aborted: %s", self._peer or "?", exc)
            try:
                self._sock.sendall(_ABORT_PDU)
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise

    def __getattr__(self, name: str):
        return getattr(self._sock, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._sock, name, value)
