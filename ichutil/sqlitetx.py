"""One write transaction shape for the node's SQLite files (index, queue, training-case store).

``BEGIN IMMEDIATE`` takes the write lock at the first statement, so two processes never deadlock
upgrading a read lock; any exception rolls the whole change back.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` on a connection opened with ``isolation_level=None``."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
