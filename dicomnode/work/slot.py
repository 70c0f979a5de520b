"""One work slot: a thread that claims jobs of one kind from the queue and runs them (lease, heartbeat,
outcome recorded), through an ``AnalysisProcess`` or the node's ``LocalVerdicts``."""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from ..queue import Job, JobQueue, QueueError, Work
from .loop import SlotLoop
from .process import AnalysisFailed, AnalysisProcess, AnalysisStopped
from .verdicts import LocalVerdicts

log = logging.getLogger(__name__)


_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def job_dir(results_root: Path, job: Job) -> Path:
    """Per-job output directory, from the study key (a hash) and the job id; nothing from a UID."""
    key = _SAFE.sub("_", job.key)[:64] or "_"
    return Path(results_root) / key[:2] / key / f"job-{_SAFE.sub('_', str(job.id))[:64]}"


def predecessor_of(queue: JobQueue, job: Job) -> str | None:
    """Result directory of the earlier analysis this one replaces (the new SR/SEG reference it)."""
    prev = queue.latest_result(job.key, before=job.id)
    return prev.result_dir if prev is not None else None


class Worker(SlotLoop):
    """One analysis slot: claims jobs from the queue and runs them in its own ``AnalysisProcess``."""

    def __init__(self, queue: JobQueue, process: AnalysisProcess | LocalVerdicts, results_root: Path, *, owner: str,
                 timeout_s: float = 600.0, lease_s: float | None = None, poll_s: float = 1.0,
                 on_encoded: Callable[[Job], None] | None = None, refresh_s: float = 30.0,
                 work: Work = Work.ANY) -> None:
        """``work``: which jobs this slot claims (an analysis process: ``ANALYSIS`` when the node runs a
        verdict lane, else ``ANY``; ``LocalVerdicts``: ``VERDICT``)."""
        super().__init__(f"worker-{owner}", poll_s=poll_s)
        self.work = Work(work)
        self.refresh_s = refresh_s
        self._last_refresh = time.monotonic()
        self.queue = queue
        self.process = process
        self.results_root = Path(results_root)
        self.owner = owner
        self.timeout_s = timeout_s
        self.lease_s = lease_s or timeout_s + 60.0
        self.on_encoded = on_encoded
        self.current: Job | None = None
        self._last_beat = 0.0

    def stop(self, timeout_s: float = 15.0) -> None:
        super().stop(timeout_s)
        self.process.stop()

    def _keep_going(self, job: Job) -> bool:
        """Called every second during an analysis: renew the lease every 5 s; False on shutdown or lost lease."""
        if self.stopping:
            return False
        now = time.monotonic()
        if now - self._last_beat >= 5.0:
            self._last_beat = now
            return self.queue.heartbeat(job.id, self.owner, lease_s=self.lease_s)
        return True

    def round(self) -> bool:
        """Claim one job and run it; False (wait for a kick) when there is none."""
        try:
            self.process.start()
            job = self.queue.claim(self.owner, lease_s=self.lease_s, work=self.work)
        except AnalysisFailed as exc:
            # a stop signal to the node's process group reaches the child too: shutdown, not a failure
            level = logging.WARNING if isinstance(exc, AnalysisStopped) else logging.ERROR
            log.log(level, "worker %s: %s; retrying in 30 s", self.owner, exc)
            self.pause(30)
            return True
        except Exception:  # noqa: BLE001 - a worker thread must not die silently
            log.exception("worker %s: claim failed", self.owner)
            self.pause(self.poll_s)
            return True
        if job is None:
            self._idle()
            return False
        self.run_job(job)
        return True

    def _idle(self) -> None:
        """Nothing to do (the loop then waits for a kick): every ``refresh_s`` have the child pick up a
        promoted model."""
        if time.monotonic() - self._last_refresh >= self.refresh_s:
            self._last_refresh = time.monotonic()
            try:
                self.process.refresh()
            except AnalysisFailed as exc:
                log.error("worker %s: %s", self.owner, exc)

    def run_job(self, job: Job) -> Job:
        """Analyse one claimed job and record the outcome in the queue."""
        self.current = job
        self._last_beat = time.monotonic()
        out = job_dir(self.results_root, job)
        t0 = time.monotonic()
        try:
            if out.exists():  # a previous attempt died half-way: its partial outputs were never sent
                shutil.rmtree(out)
            out.mkdir(parents=True)
            files = job.payload.get("files") or []
            if not files:
                raise AnalysisFailed("job has no input files", retryable=False)
            missing = [f for f in files if not Path(f).is_file()]
            if missing:
                raise AnalysisFailed(f"{len(missing)} of {len(files)} input files are missing from the spool",
                                     retryable=False)
            self.process.analyze(
                files, str(out), predecessor=predecessor_of(self.queue, job),
                cannot_assess=job.payload.get("cannot_assess"), timeout_s=self.timeout_s,
                tick=lambda: self._keep_going(job), tick_every_s=1.0)
            done = self.queue.mark_encoded(job.id, self.owner, str(out))
            log.info("job %s (study %s) analysed in %.1f s", job.id, job.key[:12], time.monotonic() - t0)
        except AnalysisFailed as exc:
            if self.stopping:  # node shutting down: hand the job back, no attempt counted
                log.info("job %s handed back (shutdown)", job.id)
                try:
                    return self.queue.release(job.id, self.owner)
                except QueueError:
                    return self.queue.get(job.id)
            log.warning("job %s (study %s) failed: %s", job.id, job.key[:12], exc)
            try:
                done = self.queue.fail(job.id, self.owner, str(exc), retryable=exc.retryable)
            except QueueError as qexc:  # lost the lease: the new owner records the outcome
                log.warning("job %s: %s", job.id, qexc)
                done = self.queue.get(job.id)
            return done
        except QueueError as exc:
            log.warning("job %s: %s", job.id, exc)
            return self.queue.get(job.id)
        except Exception as exc:  # noqa: BLE001 - disk full, permissions: retry later, keep the thread
            log.exception("job %s: unexpected error", job.id)
            try:
                return self.queue.fail(job.id, self.owner, f"{type(exc).__name__}: {exc}")
            except QueueError:
                return self.queue.get(job.id)
        finally:
            self.current = None
        if self.on_encoded is not None:
            try:
                self.on_encoded(done)
            except Exception:  # noqa: BLE001
                log.exception("job %s: on_encoded hook failed", job.id)
        return done
