"""The node's periodic work on an APScheduler ``BackgroundScheduler``.

Jobs: the completion sweep (quiet studies → selection → queue), retries (wake the worker and
sender loops when backoffs expire), spool retention and the disk check. Every job runs with
``max_instances=1`` and ``coalesce=True``: a slow sweep is never overlapped by the next one, and
missed runs collapse into one instead of piling up.

Why the sweep enqueues *before* it claims the study in the index: the job is created held
(``received``) first, then the index's compare-and-set claim clears the study's "changed" flag,
then the job is released (``queued``). A crash between any two steps leaves either a study still
marked changed (the next sweep coalesces into the same held job) or a held job whose study is
claimed (``recover`` releases it at the next start); an acknowledged study is never dropped.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from .index import Index, SeriesInfo, StudyReady
from .queue import JobQueue, JobState
from .uids import uid_hash

log = logging.getLogger(__name__)

#: a held job waits at most this long for the sweep to release it (only after a crash or a lost race)
HOLD_S = 3600.0


@dataclass(frozen=True)
class Decision:
    """What to do with one quiet study (the selection's answer, in the node's terms)."""

    action: Literal["analyze", "cannot_assess", "ignore"]
    series_uid: str | None = None            # the series to analyse (or to report on)
    code: str | None = None                  # cannot_assess: CannotAssess.code
    reason: str = ""                         # why (logged; shown in `ich-node status`)


Decide = Callable[[str, list[SeriesInfo]], Decision]


def study_key(study_uid: str) -> str:
    """Queue key of a study: a hash, safe for file names and logs."""
    return uid_hash(study_uid)


@dataclass
class Sweeper:
    """Completion sweep: turns quiet studies into queue jobs (or ignores them, with a reason)."""

    index: Index
    queue: JobQueue
    spool_abspath: Callable[[str], Path]
    decide: Decide
    quiet_seconds: float = 10.0
    on_enqueued: Callable[[], None] | None = None
    stats: dict = field(default_factory=lambda: {"enqueued": 0, "ignored": 0, "cannot_assess": 0, "lost_race": 0})

    def payload(self, study: StudyReady, series: list[SeriesInfo], decision: Decision) -> dict:
        files: list[str] = []
        if decision.series_uid:
            files = [str(self.spool_abspath(i.path)) for i in self.index.instances_of(decision.series_uid)]
        body = {
            "study_uid": study.study_uid,
            "series_uid": decision.series_uid,
            "series_uids": [s.series_uid for s in series],
            "files": files,
            "last_received_at": study.last_received_at,
            "patient": study.patient_hash,
        }
        if decision.action == "cannot_assess":
            body["cannot_assess"] = {"code": decision.code or "cannot_assess", "message": decision.reason}
        return body

    def sweep(self, now: float | None = None) -> int:
        """One pass; returns how many jobs were queued."""
        queued = 0
        for study in self.index.studies_ready(self.quiet_seconds, now=now):
            series = self.index.series_of_study(study.study_uid)
            try:
                decision = self.decide(study.study_uid, series)
            except Exception as exc:  # noqa: BLE001 - one odd study must not stop the sweep
                log.exception("study %s: selection failed", study_key(study.study_uid)[:12])
                decision = Decision("ignore", reason=f"selection failed: {type(exc).__name__}: {exc}")
            key = study_key(study.study_uid)
            if decision.action == "ignore":
                if self.index.claim_study(study.study_uid, study.last_received_at) is not None:
                    for s in series:
                        self.index.mark_series_ignored(s.series_uid, decision.reason)
                    self.stats["ignored"] += 1
                    log.info("study %s ignored: %s", key[:12], decision.reason)
                continue
            job = self.queue.enqueue(key, self.payload(study, series, decision), delay_s=HOLD_S)
            if self.index.claim_study(study.study_uid, study.last_received_at) is None:
                self.stats["lost_race"] += 1  # new instances meanwhile: stays held, next quiet sweep updates it
                continue
            job = self.queue.enqueue(key, job.payload)  # coalesces: held → queued
            queued += 1
            self.stats["enqueued"] += 1
            if decision.action == "cannot_assess":
                self.stats["cannot_assess"] += 1
            log.info("study %s → job %s (%s%s)", key[:12], job.id, decision.action,
                     f": {decision.reason}" if decision.reason else "")
        if queued and self.on_enqueued is not None:
            self.on_enqueued()
        return queued

    def recover(self) -> int:
        """At start: release held jobs whose study the index already claimed (crash in between)."""
        released = 0
        for job in self.queue.list(states=(JobState.RECEIVED,), limit=10000):
            study_uid = job.payload.get("study_uid")
            if not study_uid:
                continue
            series = self.index.series_of_study(study_uid)
            if series and not any(s.changed_since_analysis for s in series):
                self.queue.enqueue(job.key, job.payload)
                released += 1
        return released


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
