"""Celery over Redis behind ``JobQueue``: the receiving node stays light, analysis runs on other machines.

Two things live in Redis, on purpose apart:

* **job state** (this module's ``CeleryQueue``): one hash per job plus per-state sets, changed only by
  optimistic transactions (``WATCH`` of one version key, ``MULTI``/``EXEC``). Every process (node, CLI,
  workers) sees the same states, attempts, leases and dead letters, so ``ich-node status``/``jobs`` work
  unchanged. Why Redis and not the node's SQLite on the shared spool: SQLite's locking is not safe over
  NFS/SMB, and Redis is already there as the broker.
* **work tokens** (Celery messages ``ichnode.analyze(job_id)``), published when a job becomes due. A
  token only says "try to claim job N"; the claim in the job store decides. Duplicated tokens
  (redelivery after a visibility timeout, re-publishing) are therefore harmless, and lost ones are
  re-published by ``maintain()``, which the node runs every ``scheduler.retry_seconds``.

Guarantees, as with the SQLite queue: tokens are acknowledged late (``acks_late``), re-queued when a
pool process dies (``task_reject_on_worker_lost``) and redelivered after the broker's
``visibility_timeout`` when a whole worker dies; independently, a worker holds a short lease on its
job, renewed while it runs, and a job whose lease expired is claimed again (counting an attempt,
dead after ``max_attempts``). Delivery stays on the node (its ``Sender`` + the delivery ledger), so
nothing is sent twice without the replace link.

Worker side (``dicomnode.queue.celery_worker``): ``worker_app(config)`` builds the Celery app a
``ich-node worker`` runs; each pool process loads the models once (``worker_process_init``) and runs the
analysis in-process, the per-job time limit and ``max_tasks_per_child`` being Celery's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from pydantic import Field, model_validator

from .base import Backoff, Job, JobQueue, JobState, QueueError, Stage, Work, is_verdict
from .config import QueueConfig

log = logging.getLogger(__name__)

TASK_NAME = "ichnode.analyze"
TASK_QUEUE = "ichnode-analysis"
_FIELDS = ("key", "payload", "state", "stage", "attempts", "max_attempts", "next_try_at", "lease_owner",
           "lease_until", "last_error", "result_dir", "created_at", "updated_at")
_FLOATS = ("next_try_at", "lease_until", "created_at", "updated_at")
_INTS = ("attempts", "max_attempts")


def _encode(job: Job) -> dict[str, str]:
    out = {}
    for name in _FIELDS:
        value = getattr(job, name)
        if name == "payload":
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, (JobState, Stage)):
            value = value.value
        out[name] = "" if value is None else str(value)
    return out


def _decode(job_id: str, data: dict[str, str]) -> Job:
    kw: dict[str, Any] = {}
    for name in _FIELDS:
        raw = data.get(name, "")
        if name == "payload":
            kw[name] = json.loads(raw or "{}")
        elif name in _FLOATS:
            kw[name] = float(raw) if raw else None
        elif name in _INTS:
            kw[name] = int(raw or 0)
        else:
            kw[name] = raw or None
    kw["state"] = JobState(kw["state"])
    kw["stage"] = Stage(kw["stage"] or "analyze")
    return Job(id=str(job_id), **kw)


class _Tx:
    """One optimistic transaction: reads go straight to Redis, writes are buffered until ``commit``."""

    def __init__(self, store: "CeleryQueue", pipe) -> None:
        self.store, self.pipe = store, pipe
        self.writes: list[tuple[Job, JobState | None]] = []  # (job, old state; None = new job)
        self.publish: list[tuple[str, float]] = []           # tokens to send after the commit

    def job(self, job_id: str | int) -> Job:
        data = self.pipe.hgetall(self.store._k("job", job_id))
        if not data:
            raise QueueError(f"no job {job_id}")
        return _decode(str(job_id), data)

    def ids(self, state: JobState) -> list[str]:
        return sorted(self.pipe.smembers(self.store._k("s", state.value)), key=int)

    def ids_of_key(self, key: str) -> list[str]:
        return [str(i) for i in self.pipe.zrange(self.store._k("key", key), 0, -1)]

    def save(self, job: Job, old: JobState | None, **fields: Any) -> Job:
        for k, v in fields.items():
            setattr(job, k, v)
        job.updated_at = time.time()
        self.writes.append((job, old))
        return job


class CeleryConfig(QueueConfig):
    """``backend = "celery"``: job state in Redis, analyses on ``ich-node worker`` processes (scale-out)."""

    backend: Literal["celery"]
    redis_url: str | None = None  # required: the broker and the job store (redis://, rediss://, unix://)
    # a worker's claim on a job, renewed every lease/4 while it runs; a job of a worker that died is
    # claimed again after this (short, unlike the embedded queue's job_timeout_s + 60 s)
    worker_lease_s: float = Field(60, gt=0)
    # an unacknowledged token of a dead worker is redelivered after this (Redis broker option)
    visibility_timeout_s: float = Field(3600, gt=0)

    @model_validator(mode="after")
    def _redis(self) -> "CeleryConfig":
        if not self.redis_url:
            raise ValueError("backend 'celery' needs redis_url (e.g. redis://localhost:6379/0)")
        return self

    def open(self, data_dir: Path) -> "CeleryQueue":
        return CeleryQueue.from_config(self.redis_url, **self.queue_options())


class CeleryQueue(JobQueue):
    """Job state in Redis, work tokens through Celery; the node keeps delivery (``needs_local_workers``: False)."""

    Config = CeleryConfig
    needs_local_workers = False

    def __init__(self, url: str, *, max_attempts: int = 5, backoff: Backoff | None = None, lease_s: float = 300.0,
                 prefix: str = "ichnode", republish_after_s: float = 120.0, celery_app: Any = None) -> None:
        import redis

        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        if not url or not url.startswith(("redis://", "rediss://", "unix://")):
            raise QueueError(f"the celery backend needs a redis:// URL, got {url!r}")
        self.url = url
        self.redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, socket_connect_timeout=10,
                                          health_check_interval=30)
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self.lease_s = lease_s
        self.prefix = prefix
        self.republish_after_s = republish_after_s
        self._app = celery_app
        self._app_lock = threading.Lock()

    @classmethod
    def from_config(cls, url: str, **kwargs: Any) -> "CeleryQueue":
        return cls(url, **kwargs)

    # -- Redis plumbing ---------------------------------------------------------------------------
    def _k(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    def _atomic(self, decide: Callable[[_Tx], Any]) -> Any:
        """Run ``decide`` until it commits without a concurrent change; then publish its tokens."""
        import redis

        for _ in range(1000):
            try:
                with self.redis.pipeline() as pipe:
                    pipe.watch(self._k("version"))
                    tx = _Tx(self, pipe)
                    result = decide(tx)
                    pipe.multi()
                    for job, old in tx.writes:
                        pipe.hset(self._k("job", job.id), mapping=_encode(job))
                        if old is None:
                            pipe.zadd(self._k("all"), {job.id: int(job.id)})
                            pipe.zadd(self._k("key", job.key), {job.id: int(job.id)})
                        elif old is not job.state:
                            pipe.srem(self._k("s", old.value), job.id)
                        pipe.sadd(self._k("s", job.state.value), job.id)
                    if tx.writes:
                        pipe.incr(self._k("version"))
                    for job_id, countdown in tx.publish:  # marked in the same commit: maintain() never races it
                        pipe.hset(self._k("published"), job_id, str(time.time() + max(0.0, countdown)))
                    pipe.execute()
            except redis.WatchError:
                continue
            except redis.RedisError as exc:
                raise QueueError(f"job store (Redis at {self._safe_url()}) unavailable: {exc}") from exc
            for job_id, countdown in tx.publish:
                self._publish(job_id, countdown)
            return result
        raise QueueError("job store too busy: 1000 conflicting transactions in a row")

    def _read(self, fn: Callable[[], Any]) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as exc:
            raise QueueError(f"job store (Redis at {self._safe_url()}) unavailable: {exc}") from exc

    def _safe_url(self) -> str:
        """The URL without its password (it ends up in logs and CLI errors)."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except Exception:  # noqa: BLE001
            return False

    # -- Celery tokens ----------------------------------------------------------------------------
    @property
    def app(self):
        """The Celery app used to publish tokens (created on first use; workers pass their own)."""
        with self._app_lock:
            if self._app is None:
                self._app = make_app(self.url)
            return self._app

    def _publish(self, job_id: str, countdown: float = 0.0) -> None:
        """Send a token for ``job_id``; a failure is only logged, ``maintain`` re-publishes."""
        try:
            self.app.send_task(TASK_NAME, args=[str(job_id)], queue=TASK_QUEUE,
                               countdown=max(0.0, countdown) or None)
            self.redis.hset(self._k("published"), str(job_id), str(time.time() + max(0.0, countdown)))
        except Exception as exc:  # noqa: BLE001 - the job stays due in the store
            log.warning("job %s: cannot publish a work token (%s); the node re-publishes it", job_id, exc)
            try:
                self.redis.hdel(self._k("published"), str(job_id))
            except Exception:  # noqa: BLE001
                pass

    # -- producer ---------------------------------------------------------------------------------
    def enqueue(self, key: str, payload: dict[str, Any], *, delay_s: float = 0.0) -> Job:
        if not key:
            raise ValueError("job key must not be empty")

        def decide(tx: _Tx) -> Job:
            now = time.time()
            state = JobState.RECEIVED if delay_s > 0 else JobState.QUEUED
            next_try = now + delay_s if delay_s > 0 else None
            for job_id in reversed(tx.ids_of_key(key)):
                job = tx.job(job_id)
                if job.state in (JobState.RECEIVED, JobState.QUEUED) or (
                        job.state is JobState.FAILED and job.stage is Stage.ANALYZE):
                    old, had_token = job.state, self._tokened(job)
                    tx.save(job, old, payload=payload, state=state, next_try_at=next_try)
                    if state is JobState.QUEUED and self._tokened(job) and (old is not JobState.QUEUED or not had_token):
                        tx.publish.append((job.id, 0.0))
                    return job
            job_id = str(tx.pipe.incr(self._k("seq")))
            job = Job(id=job_id, key=key, payload=payload, state=state, max_attempts=self.max_attempts,
                      next_try_at=next_try, created_at=now, updated_at=now)
            tx.writes.append((job, None))
            if state is JobState.QUEUED and self._tokened(job):
                tx.publish.append((job.id, 0.0))
            return job

        return self._atomic(decide)

    def _tokened(self, job: Job) -> bool:
        """Whether the workers get a token for ``job``: not for a verdict the node writes itself
        (``verdicts_local``), so a burst of them never sits in the workers' FIFO before a head CT."""
        return not (self.verdicts_local and is_verdict(job))

    # -- worker -----------------------------------------------------------------------------------
    @staticmethod
    def _analyzable(job: Job, now: float) -> bool:
        return (job.state is JobState.QUEUED
                or (job.state in (JobState.RECEIVED, JobState.FAILED) and job.stage is Stage.ANALYZE
                    and (job.next_try_at or 0) <= now)
                or (job.state is JobState.RUNNING and (job.lease_until or 0) < now))

    @staticmethod
    def _blocked(tx: _Tx, job: Job, now: float) -> bool:
        """An earlier job of the same study is being analysed: analyses of one study never overlap."""
        for other_id in tx.ids_of_key(job.key):
            if int(other_id) >= int(job.id):
                break
            other = tx.job(other_id)
            if other.state is JobState.RUNNING and (other.lease_until or 0) >= now:
                return True
        return False

    def _take(self, tx: _Tx, job: Job, owner: str, stage: Stage, lease_s: float | None, now: float) -> Job | None:
        old = job.state
        if job.state is JobState.RUNNING:  # its owner died: that run counts as an attempt
            attempts = job.attempts + 1
            if attempts >= job.max_attempts:
                tx.save(job, old, state=JobState.DEAD, attempts=attempts, lease_owner=None, lease_until=None,
                        last_error=f"worker lost {attempts} times (lease expired)")
                return None
            job.attempts, job.last_error = attempts, "previous worker lost (lease expired)"
        new_state = JobState.RUNNING if stage is Stage.ANALYZE else JobState.ENCODED
        return tx.save(job, old, state=new_state, stage=stage, lease_owner=owner,
                       lease_until=now + (lease_s or self.lease_s), next_try_at=None)

    def claim(self, owner: str, *, stage: Stage = Stage.ANALYZE, lease_s: float | None = None,
              work: Work = Work.ANY) -> Job | None:
        stage, work = Stage(stage), Work(work)

        def decide(tx: _Tx) -> Job | None:
            now = time.time()
            if stage is Stage.ANALYZE:
                ids = sorted({*tx.ids(JobState.QUEUED), *tx.ids(JobState.RECEIVED), *tx.ids(JobState.FAILED),
                              *tx.ids(JobState.RUNNING)}, key=int)
                jobs = [j for j in map(tx.job, ids)
                        if work.takes(j) and self._analyzable(j, now) and not self._blocked(tx, j, now)]
            else:
                ids = sorted({*tx.ids(JobState.ENCODED), *tx.ids(JobState.FAILED)}, key=int)
                jobs = [j for j in map(tx.job, ids)
                        if (j.state is JobState.ENCODED and (j.lease_until or 0) < now)
                        or (j.state is JobState.FAILED and j.stage is Stage.SEND and (j.next_try_at or 0) <= now)]
            jobs.sort(key=lambda j: (stage is Stage.ANALYZE and is_verdict(j), j.next_try_at or j.created_at, int(j.id)))
            for job in jobs:
                taken = self._take(tx, job, owner, stage, lease_s, now)
                if taken is not None:
                    return taken
            return None

        return self._atomic(decide)

    def claim_job(self, job_id: str, owner: str, *, lease_s: float | None = None) -> Job | None:
        """Worker side of a token: lease this job for analysis, or ``None`` when it is not due, done,
        or an earlier analysis of its study still runs (the node re-publishes it when due)."""

        def decide(tx: _Tx) -> Job | None:
            now = time.time()
            try:
                job = tx.job(job_id)
            except QueueError:
                return None
            if not self._analyzable(job, now) or self._blocked(tx, job, now):
                return None
            return self._take(tx, job, owner, Stage.ANALYZE, lease_s, now)

        return self._atomic(decide)

    def heartbeat(self, job_id: str, owner: str, *, lease_s: float | None = None) -> bool:
        def decide(tx: _Tx) -> bool:
            try:
                job = tx.job(job_id)
            except QueueError:
                return False
            if job.lease_owner != owner or job.state not in (JobState.RUNNING, JobState.ENCODED):
                return False
            tx.save(job, job.state, lease_until=time.time() + (lease_s or self.lease_s))
            return True

        return self._atomic(decide)

    def mark_encoded(self, job_id: str, owner: str, result_dir: str) -> Job:
        def decide(tx: _Tx) -> Job:
            job = tx.job(job_id)
            if job.state is not JobState.RUNNING or job.lease_owner != owner:
                raise QueueError(f"job {job_id}: cannot mark encoded from {job.state.value} "
                                 f"(lease {job.lease_owner!r}, caller {owner!r})")
            return tx.save(job, job.state, state=JobState.ENCODED, stage=Stage.SEND, result_dir=str(result_dir),
                           attempts=0, lease_owner=None, lease_until=None, next_try_at=None)

        return self._atomic(decide)

    @staticmethod
    def _check_owner(job: Job, owner: str | None) -> None:
        if owner is not None and job.lease_owner is not None and job.lease_owner != owner:
            raise QueueError(f"job {job.id}: lease held by {job.lease_owner}, not {owner}")

    def complete(self, job_id: str, owner: str | None = None) -> Job:
        def decide(tx: _Tx) -> Job:
            job = tx.job(job_id)
            self._check_owner(job, owner)
            if job.state is not JobState.ENCODED:
                raise QueueError(f"job {job_id}: cannot complete from {job.state.value}")
            return tx.save(job, job.state, state=JobState.SENT, lease_owner=None, lease_until=None, next_try_at=None)

        return self._atomic(decide)

    def fail(self, job_id: str, owner: str | None, reason: str, *, retryable: bool = True) -> Job:
        def decide(tx: _Tx) -> Job:
            job = tx.job(job_id)
            self._check_owner(job, owner)
            if job.state in (JobState.SENT, JobState.DEAD):
                raise QueueError(f"job {job_id}: already {job.state.value}")
            attempts = job.attempts + 1
            if not retryable or attempts >= job.max_attempts:
                return tx.save(job, job.state, state=JobState.DEAD, attempts=attempts, last_error=reason,
                               lease_owner=None, lease_until=None, next_try_at=None)
            delay = self.backoff.delay(attempts)
            tx.save(job, job.state, state=JobState.FAILED, attempts=attempts, last_error=reason, lease_owner=None,
                    lease_until=None, next_try_at=time.time() + delay)
            if job.stage is Stage.ANALYZE:
                tx.publish.append((job.id, delay))
            return job

        return self._atomic(decide)

    def defer(self, job_id: str, owner: str | None, reason: str, *, delay_s: float) -> Job:
        def decide(tx: _Tx) -> Job:  # no token: deliveries stay on the node (its Sender claims them)
            job = tx.job(job_id)
            self._check_owner(job, owner)
            if job.state not in (JobState.ENCODED, JobState.FAILED) or job.stage is not Stage.SEND:
                raise QueueError(f"job {job_id}: only a delivery can be deferred, not a {job.state.value} job")
            return tx.save(job, job.state, state=JobState.FAILED, last_error=reason, lease_owner=None,
                           lease_until=None, next_try_at=time.time() + max(0.0, delay_s))

        return self._atomic(decide)

    def wake(self) -> int:
        def decide(tx: _Tx) -> int:
            n = 0
            for job_id in tx.ids(JobState.FAILED):
                job = tx.job(job_id)
                if job.stage is Stage.SEND:
                    tx.save(job, job.state, next_try_at=job.created_at)
                    n += 1
            return n

        return self._atomic(decide)

    def release(self, job_id: str, owner: str, *, delay_s: float = 0.0) -> Job:
        def decide(tx: _Tx) -> Job:
            job = tx.job(job_id)
            self._check_owner(job, owner)
            if job.state is JobState.RUNNING:
                if delay_s > 0:
                    tx.save(job, job.state, state=JobState.RECEIVED, next_try_at=time.time() + delay_s,
                            lease_owner=None, lease_until=None)
                else:
                    tx.save(job, job.state, state=JobState.QUEUED, next_try_at=None, lease_owner=None, lease_until=None)
                tx.publish.append((job.id, delay_s))
            elif job.state is JobState.ENCODED:
                tx.save(job, job.state, lease_owner=None,
                        lease_until=(time.time() + delay_s) if delay_s > 0 else None)
            return job

        return self._atomic(decide)

    # -- recovery and admin -----------------------------------------------------------------------
    def recover(self, owner_prefix: str) -> int:
        if not owner_prefix:
            raise ValueError("owner_prefix must not be empty")

        def decide(tx: _Tx) -> int:
            n = 0
            for state in (JobState.RUNNING, JobState.ENCODED):
                for job_id in tx.ids(state):
                    job = tx.job(job_id)
                    if not (job.lease_owner or "").startswith(owner_prefix):
                        continue
                    n += 1
                    if state is JobState.RUNNING:
                        tx.save(job, state, state=JobState.QUEUED, lease_owner=None, lease_until=None,
                                attempts=job.attempts + 1, last_error="node restarted during analysis")
                        tx.publish.append((job.id, 0.0))
                    else:
                        tx.save(job, state, lease_owner=None, lease_until=None)
            return n

        return self._atomic(decide)

    def retry(self, job_id: str) -> Job:
        def decide(tx: _Tx) -> Job:
            try:
                job = tx.job(job_id)
            except QueueError:
                raise QueueError(f"no job {job_id!r}") from None
            if job.state not in (JobState.FAILED, JobState.DEAD):
                raise QueueError(f"job {job_id} is {job.state.value}; only failed or dead jobs can be retried")
            if job.result_dir:
                fields = {"state": JobState.ENCODED, "stage": Stage.SEND}
            else:
                fields = {"state": JobState.QUEUED, "stage": Stage.ANALYZE}
                tx.publish.append((job.id, 0.0))
            return tx.save(job, job.state, attempts=0, next_try_at=None, lease_owner=None, lease_until=None, **fields)

        return self._atomic(decide)

    def maintain(self) -> int:
        """Re-publish tokens for analysis jobs that are due but have no recent token (a lost message,
        a Redis restart, a worker that died holding a lease); returns how many. Run by the node."""
        now = time.time()

        def due() -> list[str]:
            ids = sorted({*self.redis.smembers(self._k("s", "queued")), *self.redis.smembers(self._k("s", "received")),
                          *self.redis.smembers(self._k("s", "failed")), *self.redis.smembers(self._k("s", "running"))},
                         key=int)
            published = self.redis.hgetall(self._k("published"))
            out = []
            for job_id in ids:
                data = self.redis.hgetall(self._k("job", job_id))
                if not data:
                    continue
                job = _decode(job_id, data)
                if not self._analyzable(job, now) or not self._tokened(job):
                    continue
                last = float(published.get(job_id) or 0)
                became_due = max(job.next_try_at or 0, job.lease_until or 0, job.updated_at or 0)
                # a token sent after the job became due is still on its way (or waiting for a free worker)
                if last >= became_due and now - last < self.republish_after_s:
                    continue
                out.append(job_id)
            return out

        ids = self._read(due)
        for job_id in ids:
            self._publish(job_id)
        if ids:
            log.info("re-published %d analysis token(s): %s", len(ids), ", ".join(ids[:10]))
        return len(ids)

    def get(self, job_id: str) -> Job:
        data = self._read(lambda: self.redis.hgetall(self._k("job", job_id)))
        if not data:
            raise QueueError(f"no job {job_id!r}")
        return _decode(str(job_id), data)

    def list(self, *, states: Iterable[JobState] | None = None, key: str | None = None, limit: int = 100) -> list[Job]:
        def read() -> list[Job]:
            if key is not None:
                ids = [str(i) for i in self.redis.zrevrange(self._k("key", key), 0, -1)]
            elif states is not None:
                ids = sorted({i for s in states for i in self.redis.smembers(self._k("s", JobState(s).value))},
                             key=int, reverse=True)
            else:
                ids = [str(i) for i in self.redis.zrevrange(self._k("all"), 0, max(0, int(limit) - 1))]
            wanted = {JobState(s) for s in states} if states is not None else None
            out = []
            for job_id in ids:
                data = self.redis.hgetall(self._k("job", job_id))
                if not data:
                    continue
                job = _decode(job_id, data)
                if wanted is None or job.state in wanted:
                    out.append(job)
                if len(out) >= limit:
                    break
            return out

        return self._read(read)

    def counts(self) -> dict[JobState, int]:
        def read() -> dict[JobState, int]:
            pipe = self.redis.pipeline(transaction=False)
            for s in JobState:
                pipe.scard(self._k("s", s.value))
            return dict(zip(JobState, pipe.execute()))

        return self._read(read)

    def close(self) -> None:
        try:
            self.redis.close()
        except Exception:  # noqa: BLE001
            pass


# ------------------------------------------------------------------------------------------------
# the Celery side


def make_app(redis_url: str, *, visibility_timeout_s: float = 3600.0, time_limit_s: float | None = None,
             max_tasks_per_child: int | None = None, concurrency: int | None = None):
    """A Celery app with the reliability settings the node relies on (broker and result store: Redis)."""
    from celery import Celery

    app = Celery("ichnode", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,                  # a token is acknowledged only after the job's outcome is recorded
        task_reject_on_worker_lost=True,      # a pool process killed mid-job: its token goes back to the queue
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,         # one token per free process: no study waits behind a busy one
        broker_transport_options={"visibility_timeout": visibility_timeout_s},  # whole worker dead → redelivered
        result_backend_transport_options={"visibility_timeout": visibility_timeout_s},
        result_expires=24 * 3600,
        task_ignore_result=True,              # outcomes live in the job store, not in Celery results
        task_default_queue=TASK_QUEUE,
        task_serializer="json", accept_content=["json"], result_serializer="json",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_heartbeat=0,
    )
    if time_limit_s:
        app.conf.task_time_limit = time_limit_s
    if max_tasks_per_child:
        app.conf.worker_max_tasks_per_child = max_tasks_per_child
    if concurrency:
        app.conf.worker_concurrency = concurrency
    return app
