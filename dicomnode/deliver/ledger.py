"""Which object of which job reached which destination: the memory that prevents double delivery.

Why a separate table and not a job state: one job fans out to several destinations, and a node
killed between two C-STOREs must resume exactly at the first unconfirmed object of each peer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS delivered (
    job_id       TEXT NOT NULL,
    destination  TEXT NOT NULL,
    object       TEXT NOT NULL,      -- path relative to the job's result directory
    delivered_at REAL NOT NULL,
    PRIMARY KEY (job_id, destination, object)
);
CREATE TABLE IF NOT EXISTS attempts (
    job_id       TEXT NOT NULL,
    destination  TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    updated_at   REAL NOT NULL,
    PRIMARY KEY (job_id, destination)
);
-- a delivery that has not got through yet: the retry policy's backoff and give-up clock
CREATE TABLE IF NOT EXISTS pending (
    job_id          TEXT NOT NULL,
    destination     TEXT NOT NULL,
    failures        INTEGER NOT NULL DEFAULT 0,   -- consecutive failed sends (waits while down: none)
    first_failed_at REAL NOT NULL,                -- since when it has not got through
    PRIMARY KEY (job_id, destination)
);
-- each destination as the sender last saw it (for `ich-node status`, which runs in another process)
CREATE TABLE IF NOT EXISTS destinations (
    name        TEXT PRIMARY KEY,
    down_since  REAL,                             -- NULL: up
    last_error  TEXT,
    updated_at  REAL NOT NULL
);
"""


@dataclass(frozen=True)
class DeliveryState:
    destination: str
    delivered: tuple[str, ...]
    attempts: int
    last_error: str | None


class Ledger:
    """SQLite (WAL) record of confirmed deliveries; every write is committed before returning."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    def delivered(self, job_id: str, destination: str) -> set[str]:
        rows = self._db().execute("SELECT object FROM delivered WHERE job_id = ? AND destination = ?",
                                  (job_id, destination))
        return {r[0] for r in rows}

    def record_delivered(self, job_id: str, destination: str, obj: str) -> None:
        self._db().execute("INSERT OR IGNORE INTO delivered VALUES (?, ?, ?, ?)", (job_id, destination, obj, time.time()))

    def record_attempt(self, job_id: str, destination: str, error: str | None) -> None:
        self._db().execute(
            "INSERT INTO attempts (job_id, destination, attempts, last_error, updated_at) VALUES (?, ?, 1, ?, ?) "
            "ON CONFLICT(job_id, destination) DO UPDATE SET attempts = attempts + 1, last_error = excluded.last_error, "
            "updated_at = excluded.updated_at", (job_id, destination, error, time.time()))

    def record_failure(self, job_id: str, destination: str, *, sent: bool = True) -> tuple[int, float]:
        """A delivery did not get through (``sent`` False: it waited for a down destination, no send
        was tried). Returns ``(consecutive failed sends, since when it has not got through)``."""
        db = self._db()
        db.execute("INSERT INTO pending (job_id, destination, failures, first_failed_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT(job_id, destination) DO UPDATE SET failures = failures + excluded.failures",
                   (job_id, destination, int(sent), time.time()))
        row = db.execute("SELECT failures, first_failed_at FROM pending WHERE job_id = ? AND destination = ?",
                         (job_id, destination)).fetchone()
        return int(row[0]), float(row[1])

    def clear_failures(self, job_id: str, destination: str | None = None) -> None:
        """The delivery got through (or a person retries it: the give-up clock starts again)."""
        if destination is None:
            self._db().execute("DELETE FROM pending WHERE job_id = ?", (job_id,))
        else:
            self._db().execute("DELETE FROM pending WHERE job_id = ? AND destination = ?", (job_id, destination))

    def set_destination_state(self, name: str, down_since: float | None, last_error: str | None) -> None:
        self._db().execute("INSERT OR REPLACE INTO destinations VALUES (?, ?, ?, ?)",
                           (name, down_since, last_error, time.time()))

    def destination_states(self) -> dict[str, dict]:
        """``name → {down_since, last_error, updated_at}`` as the sender last recorded it."""
        rows = self._db().execute("SELECT name, down_since, last_error, updated_at FROM destinations ORDER BY name")
        return {r[0]: {"down_since": r[1], "last_error": r[2], "updated_at": r[3]} for r in rows}

    def states(self, job_id: str) -> list[DeliveryState]:
        db = self._db()
        names = {r[0] for r in db.execute("SELECT destination FROM attempts WHERE job_id = ? UNION "
                                          "SELECT destination FROM delivered WHERE job_id = ?", (job_id, job_id))}
        out = []
        for name in sorted(names):
            row = db.execute("SELECT attempts, last_error FROM attempts WHERE job_id = ? AND destination = ?",
                             (job_id, name)).fetchone() or (0, None)
            out.append(DeliveryState(name, tuple(sorted(self.delivered(job_id, name))), row[0], row[1]))
        return out

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
