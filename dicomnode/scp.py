"""The Storage SCP: what a PACS or scanner talks to (C-ECHO, C-STORE), with allow-list and TLS.

One job: turn a C-STORE request into a durable, indexed spool file *before* answering 0x0000,
or answer a precise failure status. Nothing here decodes pixels or decides what to analyse:
listeners registered with ``on_stored`` are told about every stored instance (pynetdicom-style
event hook) and the node flow reacts.

The parts live in ``dicomnode/receive/``: ``receiver`` (the C-STORE → disk → index path), ``server``
(AE, TLS, admission, ``start_scp``), ``filemeta``, ``reconcile``; this module is their public face and
the bare SCP's command line (``python -m dicomnode.scp``).

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

import logging
import threading
from pathlib import Path

from .config import NodeConfig
from .receive.header import STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH, StoreRefused
from .pseudonym import Pseudonymizer
from .receive import processes
from .receive.filemeta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, file_meta_bytes
from .receive.receiver import (MEDIA_STORAGE_DIRECTORY,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_REFUSED_SOP_CLASS,
    STATUS_SUCCESS,
    Listener,
    ReceiveStats,
    Receiver,
    StoredInstance)
from .receive.reconcile import reconcile
from .receive.server import TRANSFER_SYNTAXES, ReceiveServer, build_ae, build_ssl_context, start_scp
from .store.index import Index
from .store.spool import Spool

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION", "MEDIA_STORAGE_DIRECTORY", "STATUS_CANNOT_UNDERSTAND",
           "STATUS_DATASET_MISMATCH", "STATUS_OUT_OF_RESOURCES", "StoreRefused",
           "STATUS_PROCESSING_FAILURE", "STATUS_REFUSED_SOP_CLASS", "STATUS_SUCCESS", "TRANSFER_SYNTAXES", "Listener",
           "ReceiveServer", "ReceiveStats", "Receiver", "StoredInstance", "build_ae", "build_ssl_context",
           "file_meta_bytes", "main", "reconcile", "start_scp"]

LOG = logging.getLogger("dicomnode.scp")


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
