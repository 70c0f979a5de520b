"""The node's periodic work on an APScheduler ``BackgroundScheduler``.

Jobs: the completion sweep (:mod:`dicomnode.select.completion`), retries (wake the worker and
sender loops when backoffs expire), spool retention and the disk check. Every job runs with
``max_instances=1`` and ``coalesce=True``: a slow sweep is never overlapped by the next one, and
missed runs collapse into one instead of piling up.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .store.index import Index
from .queue import JobQueue, JobState

log = logging.getLogger(__name__)


@dataclass
class Housekeeper:
    """Spool and result retention, and the disk check."""

    index: Index
    spool_remove: Callable[[str], None]
    data_dir: Path
    retention_days: float | None
    min_free_bytes: int
    last_disk: dict = field(default_factory=dict)
    queue: JobQueue | None = None        # with results_root: result folders are pruned too
    results_root: Path | None = None

    def cleanup(self, now: float | None = None) -> int:
        """Forget and delete series past retention that are not waiting for analysis, then prune
        results (:meth:`prune_results`); returns how many series were removed."""
        if self.retention_days is None:
            return 0
        now = time.time() if now is None else now
        removed = self._remove_series(now)
        self.prune_results(now)
        return removed

    def prune_results(self, now: float | None = None, limit: int = 10000) -> int:
        """Delete the result folders of delivered jobs past retention that nothing can need any more:
        a newer result of the same study supersedes them, or the study's images are gone from the
        spool (so no re-analysis, which must reference its predecessor, can come). Dead jobs keep
        theirs for ``jobs retry``. Returns how many folders were deleted."""
        if self.retention_days is None or self.queue is None or self.results_root is None:
            return 0
        now = time.time() if now is None else now
        root = Path(self.results_root).resolve()
        newest: dict[str, str] = {}  # study key → id of its newest job with results
        pruned = 0
        for job in self.queue.list(limit=limit):  # newest first
            if not job.result_dir or job.state not in (JobState.ENCODED, JobState.SENT):
                continue
            first = newest.setdefault(job.key, job.id) == job.id
            if job.state is not JobState.SENT or job.updated_at > now - self.retention_days * 86400:
                continue
            folder = Path(job.result_dir).resolve()
            if root not in folder.parents or not folder.is_dir():
                continue  # never delete outside the results tree; already pruned
            study_uid = str(job.payload.get("study_uid") or "")
            if first and study_uid and self.index.series_of_study(study_uid):
                continue  # the study's current result: a re-analysis would link to it
            shutil.rmtree(folder, ignore_errors=True)
            pruned += 1
        if pruned:
            log.info("retention: %d delivered result folders older than %g days removed", pruned, self.retention_days)
        return pruned

    def _remove_series(self, now: float) -> int:
        removed = 0
        for s in self.index.series_older_than(now - self.retention_days * 86400):
            for rel in self.index.forget_series(s.series_uid):  # index first: a crash leaves orphans, not dangling rows
                try:
                    self.spool_remove(rel)
                except (OSError, ValueError) as exc:
                    log.warning("retention: cannot remove a spool file: %s", exc)
            removed += 1
        if removed:
            log.info("retention: %d series older than %g days removed", removed, self.retention_days)
        return removed

    def disk_check(self) -> dict:
        usage = shutil.disk_usage(self.data_dir)
        state = "ok" if usage.free >= 2 * self.min_free_bytes else "low" if usage.free >= self.min_free_bytes else "full"
        self.last_disk = {"free_bytes": usage.free, "total_bytes": usage.total, "state": state, "at": time.time()}
        if state != "ok":
            log.warning("disk %s: %.1f GiB free under %s (refusing below %.1f GiB)", state, usage.free / 2**30,
                        self.data_dir, self.min_free_bytes / 2**30)
        return self.last_disk


class NodeScheduler:
    """The BackgroundScheduler with the node's jobs; never two runs of the same job at once."""

    def __init__(self, *, sweep: Callable[[], object], sweep_s: float, retries: Callable[[], object], retry_s: float,
                 cleanup: Callable[[], object], cleanup_cron: str, disk_check: Callable[[], object], disk_s: float,
                 extra: dict[str, tuple[Callable[[], object], object]] | None = None) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        # one INFO line per run every few seconds would drown the node's own log
        logging.getLogger("apscheduler").setLevel(max(logging.getLogger("apscheduler").level, logging.WARNING))
        self.scheduler = BackgroundScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 30}, daemon=True)
        self.scheduler.add_job(_guarded(sweep, "sweep"), IntervalTrigger(seconds=sweep_s), id="sweep", name="sweep")
        self.scheduler.add_job(_guarded(retries, "retries"), IntervalTrigger(seconds=retry_s), id="retries", name="retries")
        self.scheduler.add_job(_guarded(cleanup, "cleanup"), CronTrigger.from_crontab(cleanup_cron), id="cleanup", name="cleanup")
        self.scheduler.add_job(_guarded(disk_check, "disk_check"), IntervalTrigger(seconds=disk_s), id="disk_check", name="disk_check")
        for name, (fn, trigger) in (extra or {}).items():
            self.scheduler.add_job(_guarded(fn, name), trigger, id=name, name=name)

    def start(self) -> None:
        self.scheduler.start()

    def run_now(self, job_id: str) -> None:
        """Run a job at the next tick (e.g. a sweep right after start)."""
        self.scheduler.modify_job(job_id, next_run_time=_now())

    def run_soon(self, job_id: str, delay_s: float) -> None:
        """Run a job in ``delay_s``; its next regular run moves there too (at most ``delay_s`` later). Why not
        "whichever comes first": a regular sweep due inside the release grace would find the grace not yet
        over, and the next one would come a whole interval later."""
        import datetime as dt

        if self.scheduler.get_job(job_id) is not None:
            self.scheduler.modify_job(job_id, next_run_time=_now() + dt.timedelta(seconds=delay_s))

    def jobs(self) -> list[str]:
        return [j.id for j in self.scheduler.get_jobs()]

    def shutdown(self, wait: bool = True) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)


def _now():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


def _guarded(fn: Callable[[], object], name: str) -> Callable[[], None]:
    """Log a failing run instead of letting APScheduler swallow it silently."""

    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001
            log.exception("scheduled job %s failed", name)

    run.__name__ = name
    return run
