"""When a study is complete enough to analyse: the completion sweep (studies → selection → queue).

Two ways a study becomes ready:

* **on release** (``selection.complete_on_release``): the association(s) that delivered every changed
  series were released normally (:mod:`dicomnode.receive.release` marks them in the index), nothing
  arrived since, ``release_grace_s`` passed, and the selected series is geometrically complete
  (evenly spaced, no gap, as many slices as its extent and ``ImagesInAcquisition`` say). Saves the
  quiet period on the common path: a scanner or PACS sends a series in one association.
* **quiet** (``selection.quiet_seconds`` without a new instance): everything else — a PACS that sends
  one image per association, a series spread over several associations, an aborted association, a
  study that is not analysed (ignored or "cannot assess": no hurry, and no premature verdict sent).

Late instances still make the study changed again; the next job supersedes the first result.

Why the sweep enqueues *before* it claims the study in the index: the job is created held
(``received``) first, then the index's compare-and-set claim clears the study's "changed" flag,
then the job is released (``queued``). A crash between any two steps leaves either a study still
marked changed (the next sweep coalesces into the same held job) or a held job whose study is
claimed (``recover`` releases it at the next start); an acknowledged study is never dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from ..store.index import Index, SeriesInfo, StudyReady
from ..queue import JobQueue, JobState
from ..uids import uid_hash

log = logging.getLogger(__name__)

#: a held job waits at most this long for the sweep to release it (only after a crash or a lost race)
HOLD_S = 3600.0
#: studies remembered as "released but not complete" (judged once; the quiet period decides them)
_MEMO_MAX = 10000


@dataclass(frozen=True)
class Decision:
    """What to do with one ready study (the selection's answer, in the node's terms)."""

    action: Literal["analyze", "cannot_assess", "ignore"]
    series_uid: str | None = None            # the series to analyse (or to report on)
    code: str | None = None                  # cannot_assess: CannotAssess.code
    reason: str = ""                         # why (logged; shown in `ich-node status`)
    complete: bool = False                   # analyze: the series' geometry says nothing is missing


Decide = Callable[[str, list[SeriesInfo]], Decision]


def study_key(study_uid: str) -> str:
    """Queue key of a study: a hash, safe for file names and logs."""
    return uid_hash(study_uid)


@dataclass
class Sweeper:
    """Completion sweep: turns ready studies into queue jobs (or ignores them, with a reason).

    ``release_grace_s`` None = only the quiet period completes a study."""

    index: Index
    queue: JobQueue
    spool_abspath: Callable[[str], Path]
    decide: Decide
    quiet_seconds: float = 10.0
    release_grace_s: float | None = None
    on_enqueued: Callable[[], None] | None = None
    stats: dict = field(default_factory=lambda: {"enqueued": 0, "ignored": 0, "cannot_assess": 0, "lost_race": 0,
                                                 "on_release": 0, "release_declined": 0})
    _declined: dict[str, float] = field(default_factory=dict, repr=False)

    def payload(self, study: StudyReady, series: list[SeriesInfo], decision: Decision, completed: str) -> dict:
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
            "completed": completed,          # "release" or "quiet": what made the study ready
        }
        if decision.action == "cannot_assess":
            body["cannot_assess"] = {"code": decision.code or "cannot_assess", "message": decision.reason}
        return body

    def ready(self, now: float) -> list[tuple[StudyReady, str]]:
        """Studies to decide now, each with what made it ready; quiet ones first (they waited longest)."""
        quiet = self.index.studies_ready(self.quiet_seconds, now=now)
        out = [(s, "quiet") for s in quiet]
        for s in quiet:
            self._declined.pop(s.study_uid, None)
        if self.release_grace_s is not None:
            seen = {s.study_uid for s in quiet}
            out += [(s, "release") for s in self.index.studies_released(self.release_grace_s, now=now)
                    if s.study_uid not in seen and self._declined.get(s.study_uid) != s.last_received_at]
        return out

    def sweep(self, now: float | None = None) -> int:
        """One pass; returns how many jobs were queued."""
        now = time.time() if now is None else now
        queued = 0
        for study, completed in self.ready(now):
            series = self.index.series_of_study(study.study_uid)
            try:
                decision = self.decide(study.study_uid, series)
            except Exception as exc:  # noqa: BLE001 - one odd study must not stop the sweep
                log.exception("study %s: selection failed", study_key(study.study_uid)[:12])
                decision = Decision("ignore", reason=f"selection failed: {type(exc).__name__}: {exc}")
            key = study_key(study.study_uid)
            if completed == "release" and not (decision.action == "analyze" and decision.complete):
                if len(self._declined) >= _MEMO_MAX:
                    self._declined.clear()
                self._declined[study.study_uid] = study.last_received_at
                self.stats["release_declined"] += 1
                log.info("study %s released but not analysed early (%s): waiting for the quiet period", key[:12],
                         decision.action if decision.action != "analyze" else "series geometry incomplete")
                continue
            if decision.action == "ignore":
                if self.index.claim_study(study.study_uid, study.last_received_at) is not None:
                    for s in series:
                        self.index.mark_series_ignored(s.series_uid, decision.reason)
                    self.stats["ignored"] += 1
                    log.info("study %s ignored: %s", key[:12], decision.reason)
                continue
            job = self.queue.enqueue(key, self.payload(study, series, decision, completed), delay_s=HOLD_S)
            if self.index.claim_study(study.study_uid, study.last_received_at) is None:
                self.stats["lost_race"] += 1  # new instances meanwhile: stays held, the next sweep updates it
                continue
            job = self.queue.enqueue(key, job.payload)  # coalesces: held → queued
            queued += 1
            self.stats["enqueued"] += 1
            if completed == "release":
                self.stats["on_release"] += 1
            if decision.action == "cannot_assess":
                self.stats["cannot_assess"] += 1
            log.info("study %s → job %s (%s, complete on %s%s)", key[:12], job.id, decision.action, completed,
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
