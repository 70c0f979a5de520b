"""The embedded queue: one SQLite file in WAL mode, leases instead of locks.

Why SQLite: the node must survive ``kill -9`` with nothing lost and nothing to install. Every state
change is one ``BEGIN IMMEDIATE`` transaction, so a job is always in exactly one state on disk; a
worker that dies leaves a ``running`` job whose lease expires (or which ``recover`` hands back at
the next start) and which is then claimed again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from ichutil.sqlitetx import immediate
from .base import Backoff, Job, JobQueue, JobState, QueueError, Stage, Work
from .config import QueueConfig

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    key          TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL,
    stage        TEXT NOT NULL DEFAULT 'analyze',
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    next_try_at  REAL,
    lease_owner  TEXT,
    lease_until  REAL,
    last_error   TEXT,
    result_dir   TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_try_at);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs(key, id);
"""

_COLUMNS = ("id", "key", "payload", "state", "stage", "attempts", "max_attempts", "next_try_at", "lease_owner",
            "lease_until", "last_error", "result_dir", "created_at", "updated_at")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
_VERDICT = "(json_extract(payload, '$.cannot_assess') IS NOT NULL)"  # base.is_verdict in SQL


def _row_to_job(row: sqlite3.Row | tuple) -> Job:
    data = dict(zip(_COLUMNS, row))
    data["id"] = str(data["id"])
    data["payload"] = json.loads(data["payload"])
    data["state"] = JobState(data["state"])
    data["stage"] = Stage(data["stage"])
    return Job(**data)


class SQLiteConfig(QueueConfig):
    """``backend = "sqlite"`` (the default): the embedded queue, one file in the node's data directory."""

    backend: Literal["sqlite"] = "sqlite"

    @staticmethod
    def path(data_dir: str | Path) -> Path:
        """Where the embedded queue keeps its file."""
        return Path(data_dir) / "queue.sqlite3"

    def open(self, data_dir: Path) -> "SQLiteQueue":
        return SQLiteQueue.from_config(str(self.path(data_dir)), **self.queue_options())

    def absent(self, data_dir: Path) -> str | None:
        return None if self.path(data_dir).exists() else f"no queue at {self.path(data_dir)}"


class SQLiteQueue(JobQueue):
    """``JobQueue`` in one SQLite file; safe across threads and processes."""

    Config = SQLiteConfig
    needs_local_workers = True

    def __init__(self, path: str | Path, *, max_attempts: int = 5, backoff: Backoff | None = None,
                 lease_s: float = 300.0) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self.lease_s = lease_s
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    @classmethod
    def from_config(cls, url: str, **kwargs: Any) -> "SQLiteQueue":
        """``url`` is a path or ``sqlite:///path``."""
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
        return cls(path, **kwargs)

    # -- connection -------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with immediate(self._db()) as db:
            yield db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _fetch(db: sqlite3.Connection, job_id: str | int) -> Job:
        row = db.execute(f"{_SELECT} WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise QueueError(f"no job {job_id}")
        return _row_to_job(row)

    @staticmethod
    def _check_owner(job: Job, owner: str | None) -> None:
        if owner is not None and job.lease_owner is not None and job.lease_owner != owner:
            raise QueueError(f"job {job.id}: lease held by {job.lease_owner}, not {owner}")

    @staticmethod
    def _set(db: sqlite3.Connection, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), int(job_id)))

    # -- producer ---------------------------------------------------------------------------------
    def enqueue(self, key: str, payload: dict[str, Any], *, delay_s: float = 0.0) -> Job:
        if not key:
            raise ValueError("job key must not be empty")
        now = time.time()
        state = JobState.RECEIVED if delay_s > 0 else JobState.QUEUED
        next_try = now + delay_s if delay_s > 0 else None
        body = json.dumps(payload, sort_keys=True)
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE key = ? AND (state IN ('received', 'queued') "
                "OR (state = 'failed' AND stage = 'analyze')) ORDER BY id DESC LIMIT 1", (key,)).fetchone()
            if row is not None:
                self._set(db, row[0], payload=body, state=state.value, next_try_at=next_try)
                return self._fetch(db, row[0])
            cur = db.execute(
                "INSERT INTO jobs (key, payload, state, stage, attempts, max_attempts, next_try_at, created_at, "
                "updated_at) VALUES (?, ?, ?, 'analyze', 0, ?, ?, ?, ?)",
                (key, body, state.value, self.max_attempts, next_try, now, now))
            return self._fetch(db, cur.lastrowid)

    # -- worker -----------------------------------------------------------------------------------
    def claim(self, owner: str, *, stage: Stage = Stage.ANALYZE, lease_s: float | None = None,
              work: Work = Work.ANY) -> Job | None:
        now = time.time()
        lease_until = now + (lease_s or self.lease_s)
        stage, work = Stage(stage), Work(work)
        kind = {Work.ANY: "", Work.ANALYSIS: f"AND NOT {_VERDICT} ", Work.VERDICT: f"AND {_VERDICT} "}[work]
        with self._tx() as db:
            if stage is Stage.ANALYZE:
                row = db.execute(
                    f"{_SELECT} AS j WHERE (state = 'queued' "
                    "  OR (state IN ('received', 'failed') AND stage = 'analyze' AND next_try_at <= :now) "
                    "  OR (state = 'running' AND lease_until < :now)) "
                    f"{kind}"
                    "AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.key = j.key AND o.id < j.id "
                    "  AND o.state = 'running' AND o.lease_until >= :now) "
                    # analyses before "cannot assess" reports: a burst of junk does not hold a head CT back
                    f"ORDER BY {_VERDICT}, "
                    "COALESCE(next_try_at, created_at), id LIMIT 1", {"now": now}).fetchone()
            else:
                row = db.execute(
                    f"{_SELECT} WHERE (state = 'encoded' AND (lease_until IS NULL OR lease_until < :now)) "
                    "OR (state = 'failed' AND stage = 'send' AND next_try_at <= :now) "
                    "ORDER BY COALESCE(next_try_at, updated_at), id LIMIT 1", {"now": now}).fetchone()
            if row is None:
                return None
            job = _row_to_job(row)
            if job.state is JobState.RUNNING:  # its owner died: that run counts as an attempt
                attempts = job.attempts + 1
                if attempts >= job.max_attempts:
                    self._set(db, job.id, state=JobState.DEAD.value, attempts=attempts, lease_owner=None,
                              lease_until=None, last_error=f"worker lost {attempts} times (lease expired)")
                    return None
                self._set(db, job.id, attempts=attempts, last_error="previous worker lost (lease expired)")
            new_state = JobState.RUNNING if stage is Stage.ANALYZE else JobState.ENCODED
            self._set(db, job.id, state=new_state.value, stage=stage.value, lease_owner=owner,
                      lease_until=lease_until, next_try_at=None)
            return self._fetch(db, job.id)

    def heartbeat(self, job_id: str, owner: str, *, lease_s: float | None = None) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET lease_until = ?, updated_at = ? WHERE id = ? AND lease_owner = ? "
                "AND state IN ('running', 'encoded')",
                (time.time() + (lease_s or self.lease_s), time.time(), int(job_id), owner))
            return cur.rowcount == 1

    def mark_encoded(self, job_id: str, owner: str, result_dir: str) -> Job:
        with self._tx() as db:
            job = self._fetch(db, job_id)
            if job.state is not JobState.RUNNING or job.lease_owner != owner:
                raise QueueError(f"job {job_id}: cannot mark encoded from {job.state.value} "
                                 f"(lease {job.lease_owner!r}, caller {owner!r})")
            self._set(db, job_id, state=JobState.ENCODED.value, stage=Stage.SEND.value, result_dir=str(result_dir),
                      attempts=0, lease_owner=None, lease_until=None, next_try_at=None)
            return self._fetch(db, job_id)

    def complete(self, job_id: str, owner: str | None = None) -> Job:
        with self._tx() as db:
            job = self._fetch(db, job_id)
            self._check_owner(job, owner)
            if job.state is not JobState.ENCODED:
                raise QueueError(f"job {job_id}: cannot complete from {job.state.value}")
            self._set(db, job_id, state=JobState.SENT.value, lease_owner=None, lease_until=None, next_try_at=None)
            return self._fetch(db, job_id)

    def fail(self, job_id: str, owner: str | None, reason: str, *, retryable: bool = True) -> Job:
        with self._tx() as db:
            job = self._fetch(db, job_id)
            self._check_owner(job, owner)
            if job.state in (JobState.SENT, JobState.DEAD):
                raise QueueError(f"job {job_id}: already {job.state.value}")
            attempts = job.attempts + 1
            if not retryable or attempts >= job.max_attempts:
                self._set(db, job_id, state=JobState.DEAD.value, attempts=attempts, last_error=reason,
                          lease_owner=None, lease_until=None, next_try_at=None)
            else:
                self._set(db, job_id, state=JobState.FAILED.value, attempts=attempts, last_error=reason,
                          lease_owner=None, lease_until=None, next_try_at=time.time() + self.backoff.delay(attempts))
            return self._fetch(db, job_id)

    def defer(self, job_id: str, owner: str | None, reason: str, *, delay_s: float) -> Job:
        with self._tx() as db:
            job = self._fetch(db, job_id)
            self._check_owner(job, owner)
            if job.state not in (JobState.ENCODED, JobState.FAILED) or job.stage is not Stage.SEND:
                raise QueueError(f"job {job_id}: only a delivery can be deferred, not a {job.state.value} job")
            self._set(db, job_id, state=JobState.FAILED.value, last_error=reason, lease_owner=None, lease_until=None,
                      next_try_at=time.time() + max(0.0, delay_s))
            return self._fetch(db, job_id)

    def wake(self) -> int:
        with self._tx() as db:
            return db.execute("UPDATE jobs SET next_try_at = created_at, updated_at = ? "
                              "WHERE state = 'failed' AND stage = 'send'", (time.time(),)).rowcount

    def release(self, job_id: str, owner: str, *, delay_s: float = 0.0) -> Job:
        with self._tx() as db:
            job = self._fetch(db, job_id)
            self._check_owner(job, owner)
            if job.state is JobState.RUNNING:
                fields = ({"state": JobState.RECEIVED.value, "next_try_at": time.time() + delay_s} if delay_s > 0
                          else {"state": JobState.QUEUED.value, "next_try_at": None})
                self._set(db, job_id, lease_owner=None, lease_until=None, **fields)
            elif job.state is JobState.ENCODED:
                self._set(db, job_id, lease_owner=None, lease_until=(time.time() + delay_s) if delay_s > 0 else None)
            return self._fetch(db, job_id)

    # -- recovery and admin -----------------------------------------------------------------------
    def recover(self, owner_prefix: str) -> int:
        if not owner_prefix:
            raise ValueError("owner_prefix must not be empty")
        like = owner_prefix.replace("%", r"\%").replace("_", r"\_") + "%"
        with self._tx() as db:
            now = time.time()
            n = db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, attempts = attempts + 1, "
                "last_error = 'node restarted during analysis', updated_at = ? "
                "WHERE state = 'running' AND lease_owner LIKE ? ESCAPE '\\'", (now, like)).rowcount
            n += db.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE state = 'encoded' AND lease_owner LIKE ? ESCAPE '\\'", (now, like)).rowcount
            return n

    def retry(self, job_id: str) -> Job:
        with self._tx() as db:
            job = self._fetch(db, job_id)
            if job.state not in (JobState.FAILED, JobState.DEAD):
                raise QueueError(f"job {job_id} is {job.state.value}; only failed or dead jobs can be retried")
            if job.result_dir:
                fields = {"state": JobState.ENCODED.value, "stage": Stage.SEND.value}
            else:
                fields = {"state": JobState.QUEUED.value, "stage": Stage.ANALYZE.value}
            self._set(db, job_id, attempts=0, next_try_at=None, lease_owner=None, lease_until=None, **fields)
            return self._fetch(db, job_id)

    def get(self, job_id: str) -> Job:
        try:
            int(job_id)
        except (TypeError, ValueError):
            raise QueueError(f"no job {job_id!r}: job ids of the SQLite queue are integers") from None
        return self._fetch(self._db(), job_id)

    def list(self, *, states: Iterable[JobState] | None = None, key: str | None = None, limit: int = 100) -> list[Job]:
        where, args = [], []
        if states is not None:
            states = [JobState(s).value for s in states]
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += states
        if key is not None:
            where.append("key = ?")
            args.append(key)
        sql = f"{_SELECT} {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC LIMIT ?"
        return [_row_to_job(r) for r in self._db().execute(sql, (*args, int(limit))).fetchall()]

    def counts(self) -> dict[JobState, int]:
        out = {s: 0 for s in JobState}
        for state, n in self._db().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            out[JobState(state)] = n
        return out
