"""Job queue backends behind one interface (``JobQueue``), chosen by config ``queue.backend``.

A backend is one module with a ``JobQueue`` subclass and a ``from_config(url, **kwargs)``; it is
registered here by dotted name, imported only when chosen (Celery stays unimported on a plain node).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..plugins import PluginError, Registry
from .base import Backoff, Job, JobQueue, JobState, QueueError, Stage, Work, is_verdict

if TYPE_CHECKING:
    from dicomnode.config import NodeConfig

__all__ = ["Backoff", "Job", "JobQueue", "JobState", "QueueError", "Stage", "Work", "is_verdict", "BACKENDS",
           "register", "open_queue"]

#: config ``queue.backend`` → "module:Class"
BACKENDS = Registry("queue backend", {
    "sqlite": "dicomnode.queue.sqlite:SQLiteQueue",
    "celery": "dicomnode.queue.celery:CeleryQueue",
})
register = BACKENDS.register


def backend_class(name: str) -> type[JobQueue]:
    try:
        cls = BACKENDS.load(name)
    except PluginError as exc:
        raise QueueError(str(exc)) from exc
    if not (isinstance(cls, type) and issubclass(cls, JobQueue)):
        raise QueueError(f"queue backend {name!r} is not a JobQueue")
    return cls


def queue_path(config: "NodeConfig") -> Path:
    """Where the embedded queue keeps its file."""
    return Path(config.node.data_dir) / "queue.sqlite3"


def open_queue(config: "NodeConfig") -> JobQueue:
    """The queue the config asks for."""
    q = config.queue
    cls = backend_class(q.backend)
    url = q.redis_url if q.backend == "celery" else str(queue_path(config))
    return cls.from_config(
        url,
        max_attempts=q.max_attempts,
        backoff=Backoff(base_s=q.backoff_base_s, max_s=q.backoff_max_s),
        lease_s=q.job_timeout_s + 60.0,
    )
