"""A measuring device, not the product: the least a Python Storage SCP can do per image, durably.

    .venv/bin/python benchmarks/minimal_scp.py --port 11112 --dir var/bench/minimal [--journal-mb 256] \
        [--write dataset|fragment|writeback]

Used by ``benchmarks/ingest.py --ceiling`` to answer one question: could *any* receiver written in
Python reach the ingest bar on this machine? It hand-parses the upper layer (A-ASSOCIATE, P-DATA,
A-RELEASE), reads each data fragment with ``recv_into`` straight into the data set's buffer (no copy
between buffers), answers C-ECHO and C-STORE, and before
each C-STORE response writes the data set with one ``O_DSYNC`` overwrite into a pre-written journal
file (durable, no metadata change: the cheapest durable write there is; ``--write`` tries two other ways,
see ``Journal``). It does NOT do what makes
the node a node — no UID validation, no header parsing, no spool files, no index, no TLS, no
allow-list, no negotiation beyond "accept every context with the first offered transfer syntax",
no recovery; a journal that wraps overwrites old images. Never point a scanner at it.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import signal
import socket
import struct
import threading
from pathlib import Path

IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.10.1338.99"
MAX_PDU = 262144
ECHO_RQ, STORE_RQ = 0x0030, 0x0001


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _even(uid: bytes) -> bytes:
    return uid + b"\0" if len(uid) % 2 else uid


def parse_rq(body: bytes) -> tuple[bytes, bytes, list[tuple[int, bytes]]]:
    """Called AE, calling AE and (context id, first transfer syntax) of an A-ASSOCIATE-RQ body."""
    called, calling = body[4:20], body[20:36]
    contexts, pos = [], 68
    while pos + 4 <= len(body):
        kind, _, n = struct.unpack_from(">BBH", body, pos)
        if kind == 0x20:
            cid, sub, first = body[pos + 4], pos + 8, None
            while sub < pos + 4 + n:
                skind, _, sn = struct.unpack_from(">BBH", body, sub)
                if skind == 0x40 and first is None:
                    first = body[sub + 4:sub + 4 + sn]
                sub += 4 + sn
            contexts.append((cid, first or b"1.2.840.10008.1.2"))
        pos += 4 + n
    return called, calling, contexts


def associate_ac(called: bytes, calling: bytes, contexts: list[tuple[int, bytes]]) -> bytes:
    body = struct.pack(">HH", 1, 0) + called + calling + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for cid, ts in contexts:
        body += _item(0x21, bytes([cid, 0, 0, 0]) + _item(0x40, ts))
    body += _item(0x50, _item(0x51, struct.pack(">I", MAX_PDU)) + _item(0x52, IMPLEMENTATION_UID))
    return struct.pack(">BBI", 0x02, 0, len(body)) + body


def parse_command(cmd: bytes) -> dict[int, bytes]:
    """Implicit VR little endian command set → {element: value} (group 0000 only)."""
    out, pos = {}, 0
    while pos + 8 <= len(cmd):
        _, elem, n = struct.unpack_from("<HHI", cmd, pos)
        out[elem] = cmd[pos + 8:pos + 8 + n]
        pos += 8 + n
    return out


def _el(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, elem, len(value)) + value


def response(ctx: int, field: int, msg_id: bytes, sop_class: bytes, sop_uid: bytes | None) -> bytes:
    els = _el(0x0002, _even(sop_class.rstrip(b"\0"))) + _el(0x0100, struct.pack("<H", field))
    els += _el(0x0120, msg_id) + _el(0x0800, struct.pack("<H", 0x0101)) + _el(0x0900, struct.pack("<H", 0))
    if sop_uid is not None:
        els += _el(0x1000, _even(sop_uid.rstrip(b"\0")))
    cmd = _el(0x0000, struct.pack("<I", len(els))) + els
    pdv = struct.pack(">IBB", len(cmd) + 2, ctx, 0x03) + cmd
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


WRITES = ("dataset", "fragment", "writeback")


@functools.cache
def _sync_file_range():
    fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    fn.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    return fn


def _start_writeback(fd: int, at: int, n: int) -> None:
    """sync_file_range(SYNC_FILE_RANGE_WRITE): start writing these pages out now, do not wait."""
    if _sync_file_range()(fd, at, n, 2) != 0:
        raise OSError(ctypes.get_errno(), "sync_file_range")


class Journal:
    """A pre-written file overwritten in a ring: each data set is durable when its last write returns.

    ``write`` says how (why three: does writing while the peer still sends hide the flush?):
    ``dataset`` one O_DSYNC write of the whole data set after its last fragment; ``fragment`` one
    O_DSYNC write per fragment as it arrives; ``writeback`` each fragment written to the page cache and
    its write-out started at once (``sync_file_range``), one ``fdatasync`` after the last.
    """

    def __init__(self, path: Path, size: int, write: str = "dataset") -> None:
        if write not in WRITES:
            raise ValueError(f"write must be one of {WRITES}, got {write!r}")
        with open(path, "wb") as f:  # really written, so later overwrites change no metadata
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        self.fd = os.open(path, os.O_WRONLY | (0 if write == "writeback" else os.O_DSYNC))
        self.size, self.pos, self.lock, self.write = size, 0, threading.Lock(), write

    def _reserve(self, n: int) -> int:
        with self.lock:
            if self.pos + n > self.size:
                self.pos = 0
            at, self.pos = self.pos, self.pos + n
        return at

    def append(self, data: memoryview) -> None:
        """A whole data set (``dataset``)."""
        os.pwrite(self.fd, data, self._reserve(len(data)))

    def fragment(self, data: memoryview, last: bool) -> None:
        """One fragment (``fragment``, ``writeback``); the data set is durable when ``last`` returns."""
        at = self._reserve(len(data))
        os.pwrite(self.fd, data, at)
        if self.write == "writeback":
            _start_writeback(self.fd, at, len(data))
            if last:
                os.fdatasync(self.fd)


def serve(conn: socket.socket, journal: Journal) -> None:
    """One association. P-DATA is read PDV by PDV: a data fragment goes from the socket straight into
    the data set's buffer (one copy in user space, as storescp's read), a command into its own."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = bytearray(6)
    buf = bytearray(MAX_PDU + 6)   # A-ASSOCIATE and other small PDUs
    data = bytearray(8 << 20)
    dlen, command = 0, b""

    def read(into: memoryview, n: int) -> bool:
        got = 0
        while got < n:
            k = conn.recv_into(into[got:n], n - got)
            if not k:
                return False
            got += k
        return True

    while read(memoryview(head), 6):
        kind, _, length = struct.unpack_from(">BBI", head)
        if length > MAX_PDU:
            return
        if kind != 0x04:
            if not read(memoryview(buf), length):
                return
            if kind == 0x01:
                conn.sendall(associate_ac(*parse_rq(bytes(buf[:length]))))
                continue
            if kind == 0x05:
                conn.sendall(struct.pack(">BBI", 0x06, 0, 4) + bytes(4))
            return
        left = length
        while left > 0:
            if not read(memoryview(head), 6):
                return
            n, ctx, hdr = struct.unpack_from(">IBB", head)
            left -= 4 + n
            size = n - 2
            if size < 0 or left < 0:
                return
            if hdr & 1:  # command fragment
                if not read(memoryview(buf), size):
                    return
                command += bytes(buf[:size])
                if not hdr & 2:
                    continue
                c = parse_command(command)
                field = struct.unpack("<H", c[0x0100])[0]
                if field == ECHO_RQ:
                    conn.sendall(response(ctx, 0x8030, c[0x0110], c[0x0002], None))
                    command = b""
                elif field != STORE_RQ:
                    return
                continue
            streaming, last = journal.write != "dataset", bool(hdr & 2)
            at = 0 if streaming else dlen
            if at + size > len(data):
                data.extend(bytes(at + size - len(data)))
            with memoryview(data) as d:
                if not read(d[at:], size):
                    return
                if streaming:
                    journal.fragment(d[:size], last)
                dlen = at + size
                if last and not streaming:
                    journal.append(d[:dlen])
            if last:  # durable, then acknowledge
                c = parse_command(command)
                conn.sendall(response(ctx, 0x8001, c[0x0110], c[0x0002], c[0x1000]))
                dlen, command = 0, b""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--journal-mb", type=int, default=256)
    ap.add_argument("--write", choices=WRITES, default="dataset", help="how each data set is made durable (Journal)")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(args.dir / "journal", args.journal_mb << 20, args.write)
    server = socket.create_server((args.host, args.port))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=lambda c=conn: (serve(c, journal), c.close()), daemon=True).start()


if __name__ == "__main__":
    main()
