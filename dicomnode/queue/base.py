"""The job queue contract: one interface, several backends (SQLite embedded, Celery over Redis).

A job is one analysis of one study (its ``key`` is a hash, never a raw UID) plus the delivery of
its results. It walks one way through the states

    received → queued → running → encoded → sent
                           ↘ failed (next try at …) ↗      ↘ dead (after max attempts)

``received`` is a job whose start is held back (``enqueue(..., delay_s=…)``); ``encoded`` means
the outputs are on disk and wait for delivery; ``failed`` carries the reason and the next-try time
of an exponential backoff; ``dead`` needs a person (``ich-node jobs retry``).

Analysis and delivery retry apart: ``fail`` counts the queue's ``max_attempts`` with its backoff (the
analysis); a delivery that must wait is ``defer``-red by the sender with the delay its destination's
retry policy chose (``dicomnode.deliver.policy``), counting no attempt, and ``wake`` makes every
waiting delivery due at once when a destination answers again. ``mark_encoded`` resets the attempts,
so a delivery never consumes the analysis' attempts, and an analysis is never repeated for a PACS
that was down.

Why an ABC and not duck typing: the SCP, the scheduler and the CLI only ever see ``JobQueue``, so a
new backend is one new file registered in ``dicomnode.queue`` and nothing else changes.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable


class JobState(str, Enum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    ENCODED = "encoded"
    SENT = "sent"
    FAILED = "failed"
    DEAD = "dead"


class Stage(str, Enum):
    """What a claimer wants to do with a job: analyse it, or deliver its outputs."""

    ANALYZE = "analyze"
    SEND = "send"


class Work(str, Enum):
    """Which ANALYZE jobs a claimer takes: analyses (models, in an analysis process), verdicts (the coded
    "cannot assess" report of a series selection already judged: no model, the node writes it at once),
    or any (analyses first)."""

    ANY = "any"
    ANALYSIS = "analysis"
    VERDICT = "verdict"

    def takes(self, job: "Job") -> bool:
        return self is Work.ANY or (self is Work.VERDICT) == is_verdict(job)


TERMINAL = frozenset({JobState.SENT, JobState.DEAD})


class QueueError(Exception):
    """A queue operation that cannot be done (unknown job, wrong state, lost lease)."""


@dataclass
class Job:
    id: str
    key: str                               # study key: a hash, safe in file names and logs
    payload: dict[str, Any]
    state: JobState
    attempts: int = 0                      # analysis + delivery attempts that failed so far
    max_attempts: int = 5
    stage: Stage = Stage.ANALYZE           # the stage that runs (or failed) last
    next_try_at: float | None = None       # epoch seconds; for received/failed jobs
    lease_owner: str | None = None
    lease_until: float | None = None
    last_error: str | None = None
    result_dir: str | None = None          # set once encoded
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["state"] = self.state.value
        data["stage"] = self.stage.value
        return data


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``base_s * factor**(attempt-1)``, capped at ``max_s``."""

    base_s: float = 5.0
    factor: float = 2.0
    max_s: float = 600.0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.factor < 1 or self.max_s < self.base_s:
            raise ValueError(f"invalid backoff {self}: need base_s > 0, factor >= 1, max_s >= base_s")

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.base_s * self.factor ** max(0, attempt - 1))


class JobQueue(abc.ABC):
    """Durable jobs with leases (visibility timeouts), backoff and dead letters.

    Every method is safe to call from several threads and processes at once. Implementations take
    ``(url_or_path, *, max_attempts, backoff, lease_s)`` in ``from_config``.
    """

    #: True when the node itself must run worker loops that ``claim`` analysis jobs (SQLite);
    #: False when the backend pushes jobs to its own workers (Celery).
    needs_local_workers: bool = True
    #: Set by the node when it writes verdict jobs itself (``worker.local_verdicts``): a backend that
    #: pushes work to remote workers then sends them only analyses.
    verdicts_local: bool = False

    @classmethod
    @abc.abstractmethod
    def from_config(cls, url: str, *, max_attempts: int, backoff: Backoff, lease_s: float) -> "JobQueue":
        """Build from config: ``url`` is the SQLite path or the broker URL."""

    # -- producer side -------------------------------------------------------------------------
    @abc.abstractmethod
    def enqueue(self, key: str, payload: dict[str, Any], *, delay_s: float = 0.0) -> Job:
        """Add work for ``key``; coalesces into a not-yet-claimed job of the same key.

        A job already claimed (running or later) is never changed: a second job is created, and it
        is claimed only after the earlier one for the same key left ``running``.
        ``delay_s > 0`` creates it ``received`` (held) until then.
        """

    # -- worker side ---------------------------------------------------------------------------
    @abc.abstractmethod
    def claim(self, owner: str, *, stage: Stage = Stage.ANALYZE, lease_s: float | None = None,
              work: Work = Work.ANY) -> Job | None:
        """Lease the next due job of ``stage`` to ``owner``, or ``None``.

        ANALYZE takes queued jobs, due received/failed-in-analysis jobs and running jobs whose
        lease expired (owner died), of the kind ``work`` names (``Work.ANY``: analyses before verdicts,
        see ``is_verdict``). SEND takes encoded jobs and due failed-in-sending jobs.
        """

    @abc.abstractmethod
    def heartbeat(self, job_id: str, owner: str, *, lease_s: float | None = None) -> bool:
        """Extend the lease; False when ``owner`` lost it (expired and taken by another)."""

    @abc.abstractmethod
    def mark_encoded(self, job_id: str, owner: str, result_dir: str) -> Job:
        """Analysis done, outputs in ``result_dir``; releases the lease for the sender."""

    @abc.abstractmethod
    def complete(self, job_id: str, owner: str | None = None) -> Job:
        """Delivered everywhere: ``sent``."""

    @abc.abstractmethod
    def fail(self, job_id: str, owner: str | None, reason: str, *, retryable: bool = True) -> Job:
        """Record a failure: ``failed`` with a backoff next-try time, or ``dead`` when
        ``retryable`` is False or the attempts are used up."""

    @abc.abstractmethod
    def defer(self, job_id: str, owner: str | None, reason: str, *, delay_s: float) -> Job:
        """A delivery that did not get through waits ``delay_s`` (its destination's retry policy):
        ``failed`` in the SEND stage with ``reason``, attempts unchanged; only for encoded jobs."""

    @abc.abstractmethod
    def wake(self) -> int:
        """Every delivery waiting in ``defer`` becomes due now, oldest job first (its next-try time is set
        to its creation time, which orders the SEND claim); returns how many."""

    @abc.abstractmethod
    def release(self, job_id: str, owner: str, *, delay_s: float = 0.0) -> Job:
        """Give a claimed job back without counting an attempt (shutdown, nothing due yet)."""

    # -- recovery and admin --------------------------------------------------------------------
    @abc.abstractmethod
    def recover(self, owner_prefix: str) -> int:
        """At start: hand back jobs leased by a previous incarnation (``owner`` starting with
        ``owner_prefix``) without waiting for their leases; returns how many."""

    @abc.abstractmethod
    def retry(self, job_id: str) -> Job:
        """Admin: a failed or dead job goes back (to ``encoded`` when its outputs exist, else
        ``queued``) with its attempts reset."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job:
        """The job; ``QueueError`` when unknown."""

    @abc.abstractmethod
    def list(self, *, states: Iterable[JobState] | None = None, key: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""

    @abc.abstractmethod
    def counts(self) -> dict[JobState, int]:
        """Jobs per state, every state present (zero when none)."""

    def last_errors(self, limit: int = 5) -> list[Job]:
        """Most recent failed or dead jobs, for ``ich-node status``."""
        return self.list(states=(JobState.FAILED, JobState.DEAD), limit=limit)

    def latest_result(self, key: str, *, before: str | None = None) -> Job | None:
        """The newest job of ``key`` with outputs (encoded or sent), excluding ``before``: the
        predecessor a re-analysis must reference."""
        for job in self.list(key=key, limit=50):
            if job.id != before and job.result_dir and job.state in (JobState.ENCODED, JobState.SENT):
                return job
        return None

    def maintain(self) -> int:
        """Periodic upkeep the node runs with its retry tick (Celery: re-publish lost work tokens);
        returns how many jobs it touched. The embedded queue needs none."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


def is_verdict(job: Job) -> bool:
    """A coded "cannot assess" report (cheap, no model) rather than an analysis. Claim order for
    ``Work.ANY``: analyses first, so a PACS re-sending a day of single-slice head series never holds
    a real head CT behind hundreds of them; within each, oldest due first."""
    return bool(job.payload.get("cannot_assess"))
