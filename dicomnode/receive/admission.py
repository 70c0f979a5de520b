"""What happens to a TCP connection before its first PDU is read: caps, TLS handshake, guard, reader.

Why here and not in an AE check: the allow-list (``EVT_REQUESTED``) can only run once an
A-ASSOCIATE-RQ has been read, and anyone can connect. :class:`Admission` is bound to
``EVT_CONN_OPEN`` (pynetdicom's documented event, raised in the connection's own thread before its
reactor starts) and, per connection (counting the live associations the AE reports, so a connection
that ends in any way is no longer counted):

1. drops it at once when the node already holds ``max_connections`` (a flood of idle TCP
   connections costs a thread each; pynetdicom's own association limit only answers after an
   A-ASSOCIATE-RQ has been read);
2. marks it over the per-peer limit (``max_per_peer`` from one address): the association is then
   refused with A-ASSOCIATE-RJ "local limit exceeded" (transient) in ``EVT_REQUESTED``;
3. completes a TLS handshake here, under a deadline (pynetdicom would do it in the accept loop,
   where one silent client stalls every other connection);
4. wraps the socket in a :class:`~dicomnode.receive.guard.GuardedSocket` (lengths and idle time);
5. installs the fast C-STORE reader where :mod:`~dicomnode.receive.fastpath` allows it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Callable, Iterable

from .guard import GuardedSocket, Limits

LOG = logging.getLogger("dicomnode.receive.admission")


class Admission:
    """Connection caps and per-connection set-up for one Storage SCP (thread-safe)."""

    def __init__(self, active: Callable[[], Iterable], *, max_connections: int, max_per_peer: int, handshake_s: float,
                 fast_limits: Limits, stock_limits: Limits, install_fast: Callable[[object], bool] | None = None) -> None:
        self.active = active  # the AE's live associations (``lambda: ae.active_associations``)
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.handshake_s = handshake_s
        self.fast_limits = fast_limits  # the fast path streams large data sets to disk
        self.stock_limits = stock_limits  # pynetdicom holds a data set in RAM
        self.install_fast = install_fast  # assoc -> True when it installed the fast reader
        self._lock = threading.Lock()
        self._over_limit: set[int] = set()  # id(assoc) of connections to refuse at EVT_REQUESTED
        self.dropped = 0

    def on_open(self, event) -> None:
        """EVT_CONN_OPEN."""
        assoc = event.assoc
        peer = str(event.address[0]) if event.address else "?"
        raw = assoc.dul.socket.socket
        live = [a for a in self.active() if a is not assoc]  # this one's thread has not started yet
        same_peer = sum(1 for a in live if _peer_of(a) == peer)
        if same_peer >= self.max_per_peer:
            with self._lock:
                self._over_limit = {i for i in self._over_limit if i in {id(a) for a in live}} | {id(assoc)}
        total = len(live)
        if total >= self.max_connections:
            self.dropped += 1
            LOG.warning("connection from %s dropped: %d connections open (limit %d)", peer, total,
                        self.max_connections)
            _shut(raw)
            return
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small C-STORE-RSPs leave at once
        except OSError:
            pass
        if isinstance(raw, ssl.SSLSocket):
            try:
                raw.settimeout(self.handshake_s)
                raw.do_handshake()
            except (OSError, ValueError) as exc:
                LOG.warning("TLS handshake with %s failed: %s", peer, exc)
                _shut(raw)
                return
        fast = self.install_fast is not None and self.install_fast(assoc)
        assoc.dul.socket.socket = GuardedSocket(raw, self.fast_limits if fast else self.stock_limits, peer)

    def over_peer_limit(self, assoc) -> bool:
        """True when this association's peer holds more than ``max_per_peer`` connections."""
        with self._lock:
            return id(assoc) in self._over_limit


def _peer_of(assoc) -> str:
    try:
        return str(assoc.requestor.address)
    except AttributeError:
        return "?"


def _shut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class LazyHandshakeContext(ssl.SSLContext):
    """A server TLS context whose sockets shake hands on first use, not in pynetdicom's accept loop
    (:class:`Admission` does it in the connection's thread, under a deadline)."""

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, *args, **kwargs):  # noqa: D102
        return super().wrap_socket(sock, server_side, False, *args, **kwargs)
