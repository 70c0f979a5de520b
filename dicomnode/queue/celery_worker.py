"""The worker side of the Celery backend: the app ``ich-node worker`` runs (``worker_app``), one
``WorkerRuntime`` per pool process (models loaded once at ``worker_process_init``), and the analysis run
in-process under the job's lease. The job store and the token publishing are ``dicomnode.queue.celery``."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable

from .base import Backoff
from .celery import TASK_NAME, CeleryQueue, make_app

if TYPE_CHECKING:
    from dicomnode.config import NodeConfig

log = logging.getLogger(__name__)


class InProcessAnalysis:
    """The ``AnalysisProcess.analyze`` contract, run inside the Celery pool process that loaded the models.

    The pool process already is the child that can be killed (Celery's ``task_time_limit``) and
    recycled (``worker_max_tasks_per_child``), so no second child is needed. The lease is renewed by
    a thread while the analysis runs in the calling thread.
    """

    def __init__(self, build: Callable[[Any], Any], paths: Any, watcher: Any = None, *, tick_every_s: float = 5.0) -> None:
        self.build, self.paths, self.watcher = build, paths, watcher
        self.tick_every_s = tick_every_s
        self.analyzer = build(paths)
        self.model_info = {k: str(v) if v else None for k, v in vars(paths).items()}

    def start(self) -> None:  # the models are loaded in __init__ (worker_process_init)
        pass

    def stop(self) -> None:
        pass

    def analyze(self, files: list[str], out_dir: str, *, predecessor: Any = None, cannot_assess: dict | None = None,
                timeout_s: float = 600.0, tick: Callable[[], bool] | None = None, tick_every_s: float | None = None) -> str:
        from celery.exceptions import SoftTimeLimitExceeded

        from dicomnode.work.process import AnalysisFailed, AnalysisTimeout, _analyze_kwargs

        if self.watcher is not None and self.watcher.poll():  # a promotion: reload between jobs
            self.paths = self.watcher.paths
            self.analyzer = self.build(self.paths)
        done = threading.Event()
        lost = threading.Event()

        every = tick_every_s or self.tick_every_s

        def renew() -> None:
            while not done.wait(every):
                try:
                    if tick is not None and not tick():
                        lost.set()
                        log.warning("lease lost while analysing %s", out_dir)
                        return
                except Exception:  # noqa: BLE001 - Redis hiccup: try again at the next tick
                    log.warning("lease renewal failed", exc_info=True)

        renewer = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        renewer.start()
        request = {"predecessor": predecessor, "cannot_assess": cannot_assess}
        try:
            result = self.analyzer.analyze(files, out_dir, **_analyze_kwargs(self.analyzer, request))
        except SoftTimeLimitExceeded:
            raise AnalysisTimeout(f"analysis timed out after {timeout_s:.0f} s") from None
        except Exception as exc:  # noqa: BLE001
            retryable = not isinstance(exc, (ValueError, TypeError, FileNotFoundError))
            raise AnalysisFailed(f"{type(exc).__name__}: {exc}", retryable=retryable) from exc
        finally:
            done.set()
            renewer.join(5)
        if lost.is_set():
            raise AnalysisFailed("lease lost while analysing (another worker owns the job)")
        return result.to_json()


class WorkerRuntime:
    """What one Celery pool process holds: its queue handle, its models, and a ``dicomnode.work.Worker``
    used only for its ``run_job`` (same outputs, failure handling and lease rules as the embedded queue)."""

    def __init__(self, config: "NodeConfig", queue: CeleryQueue) -> None:
        from dicomnode.plugins import load_target
        from dicomnode.pseudonym import Pseudonymizer
        from dicomnode.work import ModelSource, Worker, with_device
        from dicomnode.work.process import _model_paths

        self.config = config
        self.queue = queue
        self.owner = f"{socket.gethostname()}:celery-{os.getpid()}"
        paths, watcher = _model_paths(ModelSource(registry_dir=str(config.models_dir),
                                                  bundled_fallback=config.models.bundled_fallback))
        lease_s = config.queue.worker_lease_s
        build = with_device(load_target(config.worker.analyzer),  # the site key lives on the shared data dir
                             Pseudonymizer.for_data_dir(config.node.data_dir).installation_id())
        self.process = InProcessAnalysis(build, paths, watcher,
                                         tick_every_s=max(0.5, lease_s / 4))
        self.worker = Worker(queue, self.process, config.results_dir, owner=self.owner,
                             timeout_s=config.queue.job_timeout_s, lease_s=lease_s)
        log.info("celery worker process %s ready (models %s)", os.getpid(), self.process.model_info)

    def run(self, job_id: str) -> str:
        job = self.queue.claim_job(job_id, self.owner, lease_s=self.worker.lease_s)
        if job is None:
            return "skipped"
        done = self.worker.run_job(job)
        return done.state.value


_RUNTIME: WorkerRuntime | None = None


def worker_app(config: "NodeConfig"):
    """The Celery app ``ich-node worker`` runs: the analysis task, models loaded once per pool process."""
    from celery.signals import worker_process_init, worker_process_shutdown

    q = config.queue
    app = make_app(q.redis_url, visibility_timeout_s=q.visibility_timeout_s,
                   time_limit_s=q.job_timeout_s + 30, max_tasks_per_child=config.worker.max_jobs_per_process,
                   concurrency=config.worker.processes)
    app.conf.task_soft_time_limit = q.job_timeout_s

    def queue_for_worker() -> CeleryQueue:
        return CeleryQueue(q.redis_url, max_attempts=q.max_attempts,
                           backoff=Backoff(base_s=q.backoff_base_s, max_s=q.backoff_max_s),
                           lease_s=q.worker_lease_s, celery_app=app)

    @worker_process_init.connect(weak=False)
    def load_models(**_: Any) -> None:
        global _RUNTIME
        from dicomnode.work.process import bound_threads, die_with_parent

        die_with_parent()  # a pool process dies with its worker (kill -9): no orphan keeps a lease
        bound_threads(config.worker.threads)
        _RUNTIME = WorkerRuntime(config, queue_for_worker())

    @worker_process_shutdown.connect(weak=False)
    def close(**_: Any) -> None:
        if _RUNTIME is not None:
            _RUNTIME.queue.close()

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def analyze(self, job_id: str) -> str:
        if _RUNTIME is None:  # solo pool / eager: no worker_process_init
            load_models()
        return _RUNTIME.run(str(job_id))

    return app
