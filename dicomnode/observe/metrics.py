"""Prometheus ``/metrics`` and ``/healthz`` for a running node, and the time-to-result target.

Why a registry per node (not prometheus-client's global one): tests and benchmarks run several
nodes in one interpreter, and a scrape must describe exactly one node.

Counters and histograms are fed by the node's existing hooks (the receivers' counters, read at scrape time, the
sender's ``on_sent``, the dispatcher's errors); gauges that describe state (jobs by state, disk,
model versions, heartbeat) are read at scrape time, so they are right even after a restart.

Stage latencies come from timestamps every backend already has: the study's last instance
(``payload.last_received_at``), the job's creation (queued, after the quiet period), the mtime of
``result.json`` (analysed; written by the worker, on the shared filesystem with Celery) and the
moment the sender finished (delivered).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from dicomnode.config import NodeConfig
    from dicomnode.queue import Job

log = logging.getLogger(__name__)

STAGES = ("receive_to_queued", "queued_to_analysed", "analysed_to_delivered", "time_to_result")
BUCKETS = (0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 3600)


def stage_times(job: "Job", now: float | None = None) -> dict[str, float]:
    """Seconds spent in each stage of a delivered job (stages whose timestamps are missing are left out)."""
    now = time.time() if now is None else now
    last = job.payload.get("last_received_at")
    analysed = None
    if job.result_dir:
        try:
            analysed = (Path(job.result_dir) / "result.json").stat().st_mtime
        except OSError:
            analysed = None
    out: dict[str, float] = {}
    if last:
        out["time_to_result"] = now - last
        out["receive_to_queued"] = job.created_at - last
    if analysed is not None:
        out["queued_to_analysed"] = analysed - job.created_at
        out["analysed_to_delivered"] = now - analysed
    return {k: max(0.0, v) for k, v in out.items()}


class NodeMetrics:
    """The node's metrics; ``bind(node)`` gives the scrape-time collector its sources."""

    def __init__(self, config: "NodeConfig") -> None:
        self.config = config
        self.target_s = config.metrics.time_to_result_target_s
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_seconds = Histogram("ichnode_stage_seconds", "Latency of each stage of a delivered study",
                                       ["stage"], buckets=BUCKETS, registry=r)
        self.delivered = Counter("ichnode_studies_delivered", "Studies whose results reached every destination",
                                 registry=r)
        self.target_missed = Counter("ichnode_time_to_result_target_missed",
                                     "Delivered studies slower than metrics.time_to_result_target_s", registry=r)
        self.send_failures = Counter("ichnode_send_failures", "Failed deliveries to a destination", ["destination"],
                                     registry=r)
        for stage in STAGES:  # present (at zero) from the first scrape on
            self.stage_seconds.labels(stage=stage)
        self._node: Any = None
        r.register(_StateCollector(self))

    def bind(self, node: Any) -> "NodeMetrics":
        self._node = node
        return self

    # -- hooks --------------------------------------------------------------------------------
    def on_delivered(self, job: "Job", now: float | None = None) -> dict[str, float]:
        """Sender ``on_sent``: observe the stage latencies; warn and count when the target is missed."""
        times = stage_times(job, now)
        for stage, seconds in times.items():
            self.stage_seconds.labels(stage=stage).observe(seconds)
        self.delivered.inc()
        ttr = times.get("time_to_result")
        if ttr is not None and ttr > self.target_s:
            self.target_missed.inc()
            log.warning("job %s (study %s): time to result %.1f s missed the %.0f s target (%s)", job.id, job.key[:12],
                        ttr, self.target_s, ", ".join(f"{k} {v:.1f} s" for k, v in times.items() if k != "time_to_result"))
        return times

    def watch_dispatcher(self, dispatcher: Any) -> None:
        """Count the errors ``Dispatcher.deliver`` returns, per destination (wraps the bound method)."""
        deliver = dispatcher.deliver

        def counted(job_id: str, result_dir: Any) -> list:
            errors = deliver(job_id, result_dir)
            for err in errors:
                if not getattr(err, "waiting", False):  # waiting for a down destination: nothing was sent
                    self.send_failures.labels(destination=getattr(err, "destination", "-")).inc()
            return errors

        dispatcher.deliver = counted

    # -- health -------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, checks)``: SCP up, scheduler running, queue reachable, disk not full, analysis
        processes warmed (``/healthz`` answers 503 "warming" until then: C-STOREs are taken meanwhile)."""
        node = self._node
        checks: dict[str, Any] = {}
        if node is None:
            return False, {"node": "not started"}
        checks["receiver"] = "ok" if node.receiver is not None else "down"
        sched = getattr(getattr(node, "scheduler", None), "scheduler", None)
        checks["scheduler"] = "ok" if sched is not None and sched.running else "down"
        try:
            node.queue.counts()
            checks["queue"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["queue"] = f"unreachable: {exc}"
        free = shutil.disk_usage(node.data_dir).free
        checks["disk"] = "full" if free < self.config.storage.min_free_bytes else "ok"
        workers = [w for w in getattr(node, "workers", []) if getattr(w, "work", None) != "verdict"]  # model-free lane
        if workers:  # models loaded and warmed in every analysis process (or the first study pays for it)
            checks["analysis"] = "ok" if all(w.process.ready for w in workers) else "warming"
        hb = _heartbeat_state(node)
        if hb is not None:
            checks["heartbeat"] = hb.get("state", "unknown")
        healthy = all(v == "ok" for k, v in checks.items() if k != "heartbeat")
        dests = _destination_health(node)
        if dests:  # shown, but a down PACS does not make the node unhealthy: its deliveries wait
            checks["destinations"] = {h.name: "up" if h.up else f"down for {h.down_for():.0f} s" for h in dests}
        return healthy, checks

    # -- HTTP ---------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> "MetricsServer":
        return MetricsServer(self, host, port)


def _destination_health(node: Any) -> list:
    """``dicomnode.deliver.policy.DestinationHealth`` of each destination, as the node's sender sees it."""
    dispatcher = getattr(getattr(node, "sender", None), "dispatcher", None)
    return list(getattr(dispatcher, "health", {}).values())


def _heartbeat_state(node: Any) -> dict | None:
    try:
        from dicomnode.observe.heartbeat import read_state

        return read_state(Path(node.config.node.data_dir))
    except Exception:  # noqa: BLE001
        return None


class _StateCollector:
    """Scrape-time gauges: jobs by state, disk, model versions, heartbeat."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        node = self.metrics._node
        if node is None:
            return
        jobs = GaugeMetricFamily("ichnode_jobs", "Analysis jobs (one per study analysis) by state", labels=["state"])
        try:
            for state, n in node.queue.counts().items():
                jobs.add_metric([state.value], n)
            up = 1
        except Exception:  # noqa: BLE001 - a down Redis must not break the scrape
            up = 0
        yield jobs
        yield GaugeMetricFamily("ichnode_queue_up", "1 when the job queue answers", value=up)
        totals = node.receiver.totals() if hasattr(node.receiver, "totals") else None
        if totals is not None:  # every receiver process of the node, added up
            received = CounterMetricFamily("ichnode_instances_received",
                                           "Instances stored by the SCP (new, duplicate, replaced)", labels=["outcome"])
            received.add_metric(["new"], totals["stored"] - totals["replaced"])
            received.add_metric(["duplicate"], totals["duplicates"])
            received.add_metric(["replaced"], totals["replaced"])
            yield received
        usage = shutil.disk_usage(node.data_dir)
        yield GaugeMetricFamily("ichnode_disk_free_bytes", "Free bytes on the data directory's filesystem",
                                value=usage.free)
        yield GaugeMetricFamily("ichnode_disk_min_free_bytes", "Below this free space C-STORE answers 0xA700",
                                value=self.metrics.config.storage.min_free_bytes)
        info = GaugeMetricFamily("ichnode_model_info", "Model versions the workers load (value 1)",
                                 labels=["kind", "version", "name"])
        for kind, m in _model_versions(self.metrics.config).items():
            info.add_metric([kind, str(m["version"]) if m else "none", str(m["name"]) if m else "none"], 1)
        yield info
        dests = _destination_health(node)
        if dests:
            up = GaugeMetricFamily("ichnode_destination_up", "1 when the destination answered its last send or probe",
                                   labels=["destination"])
            down = GaugeMetricFamily("ichnode_destination_down_seconds",
                                     "How long the destination has not answered (0 when up); alert on it",
                                     labels=["destination"])
            waiting = GaugeMetricFamily("ichnode_destination_waiting_jobs",
                                        "Delivery jobs waiting for the destination to answer", labels=["destination"])
            dead = CounterMetricFamily("ichnode_delivery_dead_letters",
                                       "Deliveries given up (retry policy exhausted or refused for good) since start",
                                       labels=["destination"])
            counts = node.sender.dispatcher.dead_letters
            for h in dests:
                up.add_metric([h.name], 1 if h.up else 0)
                down.add_metric([h.name], h.down_for())
                waiting.add_metric([h.name], len(h.waiting))
                dead.add_metric([h.name], counts.get(h.name, 0))
            if counts.get("-"):
                dead.add_metric(["-"], counts["-"])
            yield from (up, down, waiting, dead)
        hb = _heartbeat_state(node)
        if hb is not None:
            yield GaugeMetricFamily("ichnode_heartbeat_last_success_timestamp_seconds",
                                    "When a heartbeat study last reached the destination (0 = never)",
                                    value=hb.get("last_success") or 0)
            yield GaugeMetricFamily("ichnode_heartbeat_last_attempt_timestamp_seconds",
                                    "When the last heartbeat study was sent", value=hb.get("last_attempt") or 0)
            yield GaugeMetricFamily("ichnode_heartbeat_ok", "1 when the last heartbeat arrived in time",
                                    value=1 if hb.get("state") == "ok" else 0)


_MODELS_CACHE: dict[str, Any] = {"at": 0.0, "value": {}}


def _model_versions(config: "NodeConfig") -> dict:
    """What ``ich-node status`` shows under models (same function), cached for 60 s."""
    if time.monotonic() - _MODELS_CACHE["at"] > 60:
        try:
            from dicomnode.observe.status import model_versions

            _MODELS_CACHE["value"] = model_versions(config)
        except Exception:  # noqa: BLE001
            _MODELS_CACHE["value"] = {}
        _MODELS_CACHE["at"] = time.monotonic()
    return _MODELS_CACHE["value"]


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` (JSON; 200 or 503) on a background thread."""

    def __init__(self, metrics: NodeMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        handler = _handler(metrics)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)
        self.thread.start()
        log.info("metrics on http://%s:%d/metrics and /healthz", host, self.port)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(metrics: NodeMetrics) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, code, ctype = generate_latest(metrics.registry), 200, CONTENT_TYPE_LATEST
            elif path == "/healthz":
                ok, checks = metrics.health()
                failing = [k for k, v in checks.items() if v != "ok" and k not in ("heartbeat", "destinations")]
                warming = not ok and failing == ["analysis"]
                status = "ok" if ok else "warming" if warming else "unhealthy"
                body = json.dumps({"status": status, "checks": checks}).encode()
                code, ctype = (200 if ok else 503), "application/json"
            else:
                body, code, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:  # scrapes every 15 s would flood the log
            log.debug("metrics http: " + fmt, *args)

    return Handler
