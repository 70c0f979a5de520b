"""The node's state as people read it: one read model for ``ich-node status`` and ``/metrics``.

Read from the data directory (the node may or may not be running): queue counts and last errors,
index counts, disk, the model versions the workers load, heartbeat and retraining.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def gather(cfg) -> dict:
    """Everything ``status`` shows, read from the data directory (the node may or may not be running)."""
    from dicomnode.queue import QueueError, open_queue

    data_dir = Path(cfg.node.data_dir)
    out: dict = {"data_dir": str(data_dir), "queue": None, "errors": [], "index": None, "disk": None, "models": {}}
    if not cfg.queue.absent(data_dir):
        try:
            q = open_queue(cfg)
            out["queue"] = {s.value: n for s, n in q.counts().items()}
            out["errors"] = [{"id": j.id, "state": j.state.value, "at": j.updated_at, "error": j.last_error}
                             for j in q.last_errors(5)]
        except QueueError as exc:
            out["queue_error"] = str(exc)
    if cfg.node.index_path.exists():
        from dicomnode.store.index import Index

        with Index(cfg.node.index_path) as ix:
            out["index"] = ix.counts()
    probe = data_dir if data_dir.exists() else Path(".")
    usage = shutil.disk_usage(probe)
    out["disk"] = {"path": str(probe), "free_bytes": usage.free, "total_bytes": usage.total,
                   "min_free_bytes": cfg.storage.min_free_bytes,
                   "state": "ok" if usage.free >= 2 * cfg.storage.min_free_bytes
                   else "low" if usage.free >= cfg.storage.min_free_bytes else "full (refusing C-STORE)"}
    out["models"] = model_versions(cfg)
    out["destinations"] = destination_states(cfg)
    from dicomnode.observe.heartbeat import read_state  # the scheduled synthetic study (issue 7), None if never run

    out["heartbeat"] = read_state(data_dir)
    from training.retrain import read_status  # the last or running retrain (issue 6)

    out["retrain"] = read_status(data_dir)
    return out


def destination_states(cfg) -> dict:
    """Each configured destination: up, or down since when (as the node's sender last recorded it in
    the delivery ledger; a destination never found down is "up")."""
    known: dict = {}
    if cfg.ledger_path.exists():
        from dicomnode.deliver.ledger import Ledger

        ledger = Ledger(cfg.ledger_path)
        try:
            known = ledger.destination_states()
        finally:
            ledger.close()
    out = {}
    for d in cfg.destinations:
        k = known.get(d.name) or {}
        out[d.name] = {"state": "down" if k.get("down_since") else "up", "down_since": k.get("down_since"),
                       "last_error": k.get("last_error")}
    return out


def model_versions(cfg) -> dict:
    """Model versions the worker would load: the registry's promoted ones, else the bundled ones."""
    from pipeline.models import BUNDLED_ROOT, ModelMetadata, ModelPaths

    paths = None
    try:
        from training.registry import Registry

        if cfg.models_dir.exists():
            paths = Registry(cfg.models_dir, bundled_root=BUNDLED_ROOT if cfg.models.bundled_fallback else None).current_paths()
    except Exception:  # noqa: BLE001 - status must show what it can
        paths = None
    if paths is None:
        paths = ModelPaths.bundled() if cfg.models.bundled_fallback else ModelPaths()
    found = {}
    for kind, path in vars(paths).items():
        if path is None:
            found[kind] = None
            continue
        try:
            m = ModelMetadata.read(Path(path))
            found[kind] = {"version": m.version, "name": m.name, "path": str(path)}
        except (OSError, ValueError, TypeError) as exc:
            found[kind] = {"version": "?", "name": f"unreadable: {exc}", "path": str(path)}
    return found
