"""The node in one object: config → index → spool → queue → SCP → scheduler → workers → senders.

Thin on purpose: every part lives in its own module; this one only wires them, recovers after a
crash, and stops them in the right order. One way through:

    SCP (ack after fsync + index) → sweep (quiet → selection) → queue → worker (child process,
    pipeline.analyze) → encoded → sender (ledger, each destination once) → sent

Crash recovery at start: partial spool writes are removed; jobs leased by this node's previous
incarnation are handed back at once (no waiting for the lease); held jobs of already-claimed
studies are released; studies still marked changed in the index are swept as usual; encoded jobs
are re-sent, skipping every object a destination already confirmed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .config import NodeConfig
from .deliver import build as build_destination
from .deliver.dispatch import Dispatcher, Sender
from .deliver.ledger import Ledger
from .store.index import Index, SeriesInfo
from .pseudonym import Pseudonymizer
from .queue import Job, JobQueue, Work, open_queue
from .scheduler import Housekeeper, NodeScheduler
from .select import Decision, Sweeper
from .store.spool import Spool
from .work import AnalysisProcess, LocalVerdicts, ModelSource, Worker

log = logging.getLogger(__name__)


def owner_prefix(config: NodeConfig) -> str:
    """Stable across restarts of the same node (same host, same data_dir): ``recover`` finds its old leases."""
    where = hashlib.sha256(str(Path(config.node.data_dir).resolve()).encode()).hexdigest()[:10]
    return f"{socket.gethostname()}:{where}/"


# -- adapters to the receive side (dicomnode.scp, dicomnode.select) --------------------------------

def selection_decider(config: NodeConfig, index: Index, spool: Spool) -> Callable[[str, list[SeriesInfo]], Decision]:
    """``dicomnode.select``'s verdict on a study, in the sweep's terms."""
    from .select import select_study

    def decide(study_uid: str, series: list[SeriesInfo]) -> Decision:
        verdict = select_study(study_uid, index, spool, config.selection)
        return Decision(action=verdict.action, series_uid=verdict.series_uid, code=verdict.code,
                        reason=verdict.reason or "", complete=verdict.complete)

    return decide


def start_receiver(config: NodeConfig, index: Index, spool: Spool,
                   on_released: Callable[[], None] | None = None) -> Any:
    """Start the Storage SCP without blocking; returns a handle with ``stop()``. ``on_released``: a
    released association completed series (the node sweeps after ``selection.release_grace_s``)."""
    from . import scp

    return scp.start_scp(config, index, spool, on_released=on_released)


# -- the node ----------------------------------------------------------------------------------------

class Node:
    """A running node. ``Node(config).start()``; ``stop()``; or ``serve_forever()`` until SIGTERM/SIGINT."""

    def __init__(self, config: NodeConfig, *, decide: Callable[[str, list[SeriesInfo]], Decision] | None = None,
                 receiver: Callable[..., Any] | None = start_receiver) -> None:
        self.config = config
        self._decide = decide
        self._receiver_factory = receiver
        self.data_dir = Path(config.node.data_dir)
        self.prefix = owner_prefix(config)
        self.index: Index | None = None
        self.pseudonymizer: Pseudonymizer | None = None  # the site key: one name per patient everywhere
        self.spool: Spool | None = None
        self.queue: JobQueue | None = None
        self.ledger: Ledger | None = None
        self.workers: list[Worker] = []
        self.sender: Sender | None = None
        self.sweeper: Sweeper | None = None
        self.housekeeper: Housekeeper | None = None
        self.scheduler: NodeScheduler | None = None
        self.receiver: Any = None
        self.metrics: Any = None          # dicomnode.observe.metrics.NodeMetrics when metrics.enabled
        self.metrics_server: Any = None
        self._stopped = threading.Event()
        self.recovered: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Node":
        cfg = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        self.pseudonymizer = Pseudonymizer.for_data_dir(self.data_dir)
        self.index = Index(cfg.node.index_path)
        self.spool = Spool(cfg.node.spool_dir, cfg.storage.min_free_bytes)
        self.index.migrate_pseudonyms(self.spool.root, self.pseudonymizer)  # schema 2 → 3, before anything runs
        self.queue = open_queue(cfg)
        self.queue.verdicts_local = cfg.worker.local_verdicts  # its verdict lane below takes them
        self.ledger = Ledger(cfg.ledger_path)
        self.recovered["partial_spool_files"] = self.spool.remove_partials()
        self.recovered["leases"] = self.queue.recover(self.prefix)

        decide = self._decide or selection_decider(cfg, self.index, self.spool)
        self.sweeper = Sweeper(self.index, self.queue, self.spool.abspath, decide,
                               quiet_seconds=cfg.selection.quiet_seconds, on_enqueued=self.kick,
                               release_grace_s=cfg.selection.release_grace_s if cfg.selection.complete_on_release else None)
        self.recovered["held_jobs"] = self.sweeper.recover()
        self.housekeeper = Housekeeper(self.index, self.spool.remove, self.data_dir, cfg.storage.retention_days,
                                       cfg.storage.min_free_bytes, queue=self.queue, results_root=cfg.results_dir)
        self.housekeeper.disk_check()
        if any(self.recovered.values()):
            log.info("crash recovery: %s", self.recovered)

        destinations = [build_destination(d, calling_ae_title=cfg.node.ae_title) for d in cfg.destinations]
        dispatcher = Dispatcher(destinations, self.ledger)
        if cfg.metrics.enabled:  # metrics hook (dicomnode.observe.metrics): send failures per destination
            from .observe.metrics import NodeMetrics

            self.metrics = NodeMetrics(cfg).bind(self)
            self.metrics.watch_dispatcher(dispatcher)
        self.sender = Sender(self.queue, dispatcher, owner=f"{self.prefix}sender-{os.getpid()}",
                             on_sent=self._on_sent)
        models = ModelSource(registry_dir=str(cfg.models_dir), bundled_fallback=cfg.models.bundled_fallback)
        if self.queue.needs_local_workers:
            for i in range(cfg.worker.processes):
                process = AnalysisProcess(cfg.worker.analyzer, models, max_jobs=cfg.worker.max_jobs_per_process,
                                          installation_id=self.pseudonymizer.installation_id(),
                                          threads=cfg.worker.threads)
                self.workers.append(Worker(self.queue, process, cfg.results_dir, owner=f"{self.prefix}w{i}-{os.getpid()}",
                                           timeout_s=cfg.queue.job_timeout_s, on_encoded=self._on_encoded,
                                           work=Work.ANALYSIS if cfg.worker.local_verdicts else Work.ANY))
        if cfg.worker.local_verdicts:  # any backend (Celery then sends its workers no token for verdicts)
            verdicts = LocalVerdicts(models, installation_id=self.pseudonymizer.installation_id())
            self.workers.append(Worker(self.queue, verdicts, cfg.results_dir, owner=f"{self.prefix}verdicts-{os.getpid()}",
                                       timeout_s=cfg.queue.job_timeout_s, on_encoded=self._on_encoded,
                                       work=Work.VERDICT))

        if self._receiver_factory is not None:
            self.receiver = self._receiver_factory(cfg, self.index, self.spool, on_released=self._released)
        for w in self.workers:
            w.start()
        self.sender.start()
        self.scheduler = NodeScheduler(
            sweep=self.sweeper.sweep, sweep_s=cfg.scheduler.sweep_seconds,
            retries=self._retries, retry_s=cfg.scheduler.retry_seconds,
            cleanup=self.housekeeper.cleanup, cleanup_cron=cfg.scheduler.cleanup_cron,
            disk_check=self.housekeeper.disk_check, disk_s=cfg.scheduler.disk_check_seconds,
            extra=self._extra_jobs())
        self.scheduler.start()
        self.scheduler.run_now("sweep")
        if self.metrics is not None:
            try:  # a taken metrics port must not stop a node from receiving studies
                self.metrics_server = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            except OSError as exc:
                log.error("metrics endpoint %s:%d not started: %s", cfg.metrics.host, cfg.metrics.port, exc)
        log.info("node %s listening on %s:%d, data in %s, %d worker(s), %d destination(s)", cfg.node.ae_title,
                 cfg.node.host, cfg.node.port, self.data_dir, len(self.workers), len(destinations))
        return self

    def _lock_data_dir(self) -> None:
        """One node per data directory: a second one would hand back the first one's leases as its own."""
        import fcntl

        fh = open(self.data_dir / "node.lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RuntimeError(f"another ich-node is already running with data directory {self.data_dir}") from None
        self._lock_fh = fh  # held until the process exits (kill -9 releases it too)

    def stop(self) -> None:
        """Graceful: stop accepting, stop scheduling, let the workers and sender finish or hand back."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.receiver is not None:
            try:
                self.receiver.stop()
            except Exception:  # noqa: BLE001
                log.exception("stopping the SCP failed")
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        for w in self.workers:
            w.stop()
        if self.sender is not None:
            self.sender.stop()
        # a job interrupted by the stop is handed back now rather than after its lease expires
        if self.queue is not None:
            self.queue.recover(self.prefix)
            self.queue.close()
        if self.ledger is not None:
            self.ledger.close()
        if self.index is not None:
            self.index.close()
        if getattr(self, "_lock_fh", None) is not None:
            self._lock_fh.close()
        log.info("node stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        done = threading.Event()

        def handler(signum, _frame):
            log.info("signal %s: shutting down", signal.Signals(signum).name)
            done.set()

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not done.wait(1.0):
                pass
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)

    def _extra_jobs(self) -> dict:
        """Optional scheduled jobs: the heartbeat study (dicomnode.observe.heartbeat) and retraining on a cron
        expression (training.retrain, in a child process so TensorFlow never loads into the node)."""
        jobs: dict = {}
        if self.config.scheduler.retrain_cron:
            from training.retrain import scheduled_job

            jobs.update(scheduled_job(self.config.scheduler.retrain_cron, data_dir=self.data_dir))
        if self.config.heartbeat.enabled:
            from apscheduler.triggers.interval import IntervalTrigger

            from .observe.heartbeat import Heartbeat

            jobs["heartbeat"] = (Heartbeat(self.config).tick,
                                 IntervalTrigger(seconds=min(5.0, self.config.heartbeat.interval_s)))
        return jobs

    # -- hand-overs ---------------------------------------------------------------------------
    def _retries(self) -> None:
        """Retry tick: backend upkeep (Celery re-publishes lost tokens), then wake workers and sender."""
        self.queue.maintain()
        self.kick()

    def _released(self) -> None:
        """A sender released its association with whole series: sweep once the grace has passed."""
        if self.scheduler is not None:
            self.scheduler.run_soon("sweep", self.config.selection.release_grace_s + 0.05)

    def kick(self) -> None:
        """Wake the workers and the sender (new jobs, due retries)."""
        for w in self.workers:
            w.kick()
        if self.sender is not None:
            self.sender.kick()

    def _on_encoded(self, job: Job) -> None:
        for series_uid in job.payload.get("series_uids") or []:
            self.index.mark_series_analyzed(series_uid)
        if self.sender is not None:
            self.sender.kick()
        self._dataset_hook(job)

    def _on_sent(self, job: Job) -> None:
        for series_uid in job.payload.get("series_uids") or []:  # again: a remote (Celery) worker cannot
            self.index.mark_series_analyzed(series_uid)          # reach this node's index
        if not self.queue.needs_local_workers:
            self._dataset_hook(job)
        if self.metrics is not None:  # metrics hook: stage latencies, time-to-result target
            self.metrics.on_delivered(job)
        last = job.payload.get("last_received_at")
        if last:
            log.info("job %s delivered %.1f s after the study's last instance", job.id, time.time() - last)

    def _dataset_hook(self, job: Job) -> None:
        """Tell the training dataset about the finished analysis (follow-up pairing); never fails the job."""
        try:
            from pipeline.result import AnalysisResult
            from training.dataset import DatasetStore
            from training.labels import LabelPolicy, on_analysis
        except ImportError:
            return
        try:
            result = AnalysisResult.read(Path(job.result_dir))
            seg = [Path(job.result_dir) / p for p in result.outputs.get("seg", [])]
            store = DatasetStore.for_data_dir(self.config.node.data_dir, pseudonym=self.pseudonymizer)
            on_analysis(store, [Path(f) for f in job.payload.get("files", [])],
                        result, seg_files=seg, policy=LabelPolicy.from_mapping(self.config.training.model_dump()))
        except Exception:  # noqa: BLE001
            log.warning("job %s: dataset hook failed", job.id, exc_info=True)
