"""Job queue backends behind one interface (``JobQueue``), chosen by config ``queue.backend``.

A backend is one module with a ``JobQueue`` subclass whose ``Config`` is its config class (a
``QueueConfig`` subclass with ``backend: Literal["name"]``, holding the keys only that backend reads
and saying how its queue is opened), registered here by dotted name. ``dicomnode.config`` validates
``[queue]`` as the config class of the named backend, looked up in ``BACKENDS`` when the config is
read: the backend module is imported only when chosen (Celery stays unimported on a plain node).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..plugins import PluginError, Registry
from .base import Backoff, Job, JobQueue, JobState, QueueError, Stage, Work, is_verdict
from .config import QueueConfig

__all__ = ["Backoff", "Job", "JobQueue", "JobState", "QueueConfig", "QueueError", "Stage", "Work", "is_verdict",
           "BACKENDS", "DEFAULT_BACKEND", "register", "backend_class", "open_queue"]

#: config ``queue.backend`` → "module:Class"
BACKENDS = Registry("queue backend", group="ich_node.queue_backends", entries={
    "sqlite": "dicomnode.queue.sqlite:SQLiteQueue",
    "celery": "dicomnode.queue.celery:CeleryQueue",
})
DEFAULT_BACKEND = "sqlite"  # [queue] without a backend key
register = BACKENDS.register


def backend_class(name: str) -> type[JobQueue]:
    try:
        cls = BACKENDS.load(name)
    except PluginError as exc:
        raise QueueError(str(exc)) from exc
    if not (isinstance(cls, type) and issubclass(cls, JobQueue)):
        raise QueueError(f"queue backend {name!r} is not a JobQueue")
    return cls


def open_queue(config: Any) -> JobQueue:
    """The queue a ``NodeConfig`` asks for (its ``[queue]`` config opens it)."""
    return config.queue.open(Path(config.node.data_dir))
