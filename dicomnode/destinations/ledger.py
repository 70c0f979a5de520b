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
