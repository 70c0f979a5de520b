"""The network side of the Storage SCP: the pynetdicom AE (contexts, limits), TLS, admission, the
threaded server (``SO_REUSEPORT`` for several receivers) and ``start_scp`` that wires it all."""

from __future__ import annotations

import functools
import socket
import socketserver
import logging
import ssl
import threading
from pathlib import Path
from typing import Callable

from ..config import NodeConfig
from .header import DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE
from ..store.index import Index
from ..store.journal import Journal
from ..pseudonym import Pseudonymizer
from ..observe.logs import withhold_values_in_warnings
from . import fastpath, processes
from .admission import Admission, LazyHandshakeContext
from .fast_store import FastStore
from .guard import Limits
from .release import ReleaseHints
from ..store.spool import Spool
from .receiver import MEDIA_STORAGE_DIRECTORY, Listener, Receiver, ReceiveStats, _calling_ae
from .reconcile import reconcile

LOG = logging.getLogger("dicomnode.scp")  # one name for everything the Storage SCP logs (operators filter on it)


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
    journal = receiver.journal
    journal_stream = journal.stream if journal is not None and config.storage.journal_write == "stream" else None

    def install_fast(assoc) -> bool:
        if fast:
            fastpath.install_waits(assoc)
        if not (fast and fastpath.allowed_on(assoc, receiver.handle_store)):
            return False
        fastpath.install(assoc, FastStore(receiver.answer, functools.partial(_calling_ae, assoc), receiver.open_stream,
                                          stream_over, journal_stream))
        return True

    return Admission(lambda: ae.active_associations, max_connections=node.max_associations,
                     max_per_peer=node.max_associations_per_peer, handshake_s=node.acse_timeout_s,
                     fast_limits=Limits(node.max_pdu, node.max_dataset_mb << 20, node.network_timeout_s),
                     stock_limits=Limits(node.max_pdu, min(stream_over, node.max_dataset_mb << 20),
                                         node.network_timeout_s),
                     install_fast=install_fast)
