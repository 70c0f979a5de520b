"""Several receiver processes on one port: scanners sending at once use several cores.

Why: one Python process serves every association under one GIL; with ``node.receivers = N`` the
node's own SCP is receiver 0 and N-1 child processes (``python -m dicomnode.scp --instance k``) bind
the same port with ``SO_REUSEPORT`` (the kernel spreads new connections over them). Each has its own
write-ahead journal (``journal/receive-<k>.wal``); all share the spool and the SQLite index (WAL,
busy timeout), which the node's selection reads. Each child writes its counters to
``run/receiver-<k>.json`` every few seconds, so ``/metrics`` can add them up (:func:`totals`).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from ichutil.files import atomic_write_text

LOG = logging.getLogger("dicomnode.receive.processes")
STATS_EVERY_S = 2.0


def run_dir(data_dir: str | Path) -> Path:
    d = Path(data_dir) / "run"
    d.mkdir(parents=True, exist_ok=True)
    return d


def start_children(config, port: int) -> list[subprocess.Popen]:
    """Receivers 1 … ``node.receivers - 1`` on ``port``; returns once each listens."""
    if config.node.receivers < 2:
        return []
    cfg_path = run_dir(config.node.data_dir) / "receivers.json"
    atomic_write_text(cfg_path, config.model_dump_json())
    children = []
    for k in range(1, config.node.receivers):
        cmd = [sys.executable, "-m", "dicomnode.scp", "--config-json", str(cfg_path), "--port", str(port),
               "--instance", str(k)]
        children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    for k, child in enumerate(children, 1):  # "listening" once it has replayed its journal and bound the port
        line = child.stdout.readline() if child.stdout else ""
        if not line.startswith("listening"):
            stop_children(children)
            raise RuntimeError(f"receiver {k} did not start (exit status {child.poll()})")
    LOG.info("%d receiver processes share port %d", len(children) + 1, port)
    return children


def stop_children(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:  # a receiver that does not stop is killed: its journal replays
            child.kill()


def publish_stats(data_dir: str | Path, instance: int, snapshot: Callable[[], dict],
                  stop: threading.Event) -> threading.Thread:
    """A child's counters to ``run/receiver-<instance>.json`` every few seconds, and once more at stop."""
    path = run_dir(data_dir) / f"receiver-{instance}.json"

    def loop() -> None:
        while not stop.wait(STATS_EVERY_S):
            atomic_write_text(path, json.dumps(snapshot()), durable=False)
        atomic_write_text(path, json.dumps(snapshot()), durable=False)

    t = threading.Thread(target=loop, name="receiver-stats", daemon=True)
    t.start()
    return t


def children_stats(data_dir: str | Path) -> list[dict]:
    """What the child receivers last published (empty without children)."""
    out = []
    for p in sorted(Path(data_dir, "run").glob("receiver-*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out
