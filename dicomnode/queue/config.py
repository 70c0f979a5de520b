"""What every ``[queue]`` section has; each backend adds its own keys in a subclass next to its queue
(``sqlite.SQLiteConfig``, ``celery.CeleryConfig``), named as the queue class's ``Config``.

Why the config opens the queue: where a backend keeps its jobs (a file in the data directory, a Redis
URL) is that backend's business, so the node asks the config (``open``, ``absent``) instead of asking
which backend it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .base import Backoff, JobQueue


class QueueConfig(BaseModel):
    """``[queue]``: the keys every backend shares; ``backend`` names the registered backend
    (``dicomnode.queue.BACKENDS``)."""

    # as dicomnode.config's sections: a misspelt key is an error, not a silently ignored setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backend: str
    max_attempts: int = Field(5, ge=1)  # then the job is dead-lettered
    backoff_base_s: float = Field(10, gt=0)  # delay = min(base * 2**(attempt-1), max)
    backoff_max_s: float = Field(900, gt=0)
    job_timeout_s: float = Field(600, gt=0)

    @model_validator(mode="after")
    def _backoff(self) -> "QueueConfig":
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s is smaller than backoff_base_s")
        return self

    @property
    def backoff(self) -> Backoff:
        return Backoff(base_s=self.backoff_base_s, max_s=self.backoff_max_s)

    def queue_options(self) -> dict[str, Any]:
        """The keyword arguments of ``JobQueue.from_config`` every backend takes (the node's lease on a
        job: the analysis' time limit plus a minute)."""
        return {"max_attempts": self.max_attempts, "backoff": self.backoff, "lease_s": self.job_timeout_s + 60.0}

    def open(self, data_dir: Path) -> JobQueue:
        """The queue of the node whose data directory is ``data_dir``."""
        raise NotImplementedError(f"queue backend {self.backend!r} does not say how it is opened")

    def absent(self, data_dir: Path) -> str | None:
        """Why there is no queue to read for ``data_dir`` yet (``ich-node jobs`` before the node ever ran),
        or None when there may be one."""
        return None
