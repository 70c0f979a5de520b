"""How long and how often a delivery is retried, per destination, apart from the analysis' attempts.

Why its own policy: a PACS restart or a network change takes minutes to hours, an analysis failure is
over in seconds. With the queue's analysis settings (5 attempts, 10 s doubling) a delivery was
dead-lettered after about 2.5 minutes and reached the PACS only if someone ran ``ich-node jobs
retry``. A delivery now waits with its own backoff (capped at a few minutes) and gives up only after
``give_up_after_s`` (24 h by default) without reaching its destination.

Why probes: a destination that cannot be reached is marked *down*. While it is down no job re-sends
its study there; the sender probes it cheaply every ``probe_interval_s`` (C-ECHO for DIMSE, one HTTP
request for STOW-RS) and, when it answers, makes every waiting delivery due at once, oldest first.

Set per destination (``[destinations.retry]`` under a ``[[destinations]]`` entry):

    backoff_base_s = 10      # first wait after a failed send to a destination that still answers
    backoff_max_s = 300      # the wait doubles up to this cap
    give_up_after_s = 86400  # dead letter after this long without getting through (24 h)
    probe_interval_s = 15    # C-ECHO / HTTP probe of a down destination
    probe_timeout_s = 10
    warn_after_s = 300       # WARNING "destination down" (and the alert) after this long, repeated as long
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: the token an alert rule keys on in the log (``grep 'alert=destination_down'``)
ALERT_DOWN = "alert=destination_down"
ALERT_DEAD = "alert=delivery_dead_letter"


class RetryPolicy(BaseModel):
    """The delivery retry policy of one destination (``[destinations.retry]``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backoff_base_s: float = Field(10, gt=0)      # first wait after a failed send (destination answering)
    backoff_factor: float = Field(2, ge=1)       # each further failure multiplies the wait by this
    backoff_max_s: float = Field(300, gt=0)      # cap: a few minutes, so a fixed fault is noticed soon
    give_up_after_s: float = Field(24 * 3600, gt=0)  # dead letter only after this long without success
    probe_interval_s: float = Field(15, gt=0)    # a down destination is probed (C-ECHO / HTTP) this often
    probe_timeout_s: float = Field(10, gt=0)     # a probe that takes longer counts as "still down"
    warn_after_s: float = Field(300, gt=0)       # "destination down for N min" WARNING after this, repeated

    @model_validator(mode="after")
    def _cap(self) -> "RetryPolicy":
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s is smaller than backoff_base_s")
        return self

    def delay(self, failures: int) -> float:
        """Wait after the ``failures``-th consecutive failed send: base, base·f, base·f², … capped."""
        return min(self.backoff_max_s, self.backoff_base_s * self.backoff_factor ** max(0, failures - 1))

    def gives_up(self, first_failed_at: float, now: float | None = None) -> bool:
        """True once a delivery has not got through for ``give_up_after_s``."""
        now = time.time() if now is None else now
        return now - first_failed_at >= self.give_up_after_s


@dataclass
class DestinationHealth:
    """Up or down, as the sender last saw it; read by /metrics, /healthz and the ledger for ``status``."""

    name: str
    policy: RetryPolicy
    down_since: float | None = None
    next_probe_at: float = 0.0
    last_error: str | None = None
    warned_at: float | None = None
    probes: int = 0
    dead_letters: int = 0
    waiting: set[str] = field(default_factory=set)  # ids of jobs waiting for this destination

    @property
    def up(self) -> bool:
        return self.down_since is None

    def down_for(self, now: float | None = None) -> float:
        if self.down_since is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.down_since)

    def mark_down(self, error: str, now: float | None = None) -> bool:
        """Record an unreachable destination; True when it was up until now."""
        now = time.time() if now is None else now
        self.last_error = error
        if self.down_since is not None:
            return False
        self.down_since, self.next_probe_at, self.warned_at = now, now + self.policy.probe_interval_s, None
        return True

    def mark_up(self) -> bool:
        """It answers again; True when it was down until now."""
        was_down = self.down_since is not None
        self.down_since, self.warned_at, self.last_error = None, None, None
        self.waiting.clear()
        return was_down

    def probe_due(self, now: float) -> bool:
        return self.down_since is not None and now >= self.next_probe_at

    def warn_due(self, now: float) -> bool:
        """A "still down" WARNING is due: down ≥ warn_after_s, and warn_after_s since the last one."""
        if self.down_since is None or now - self.down_since < self.policy.warn_after_s:
            return False
        return self.warned_at is None or now - self.warned_at >= self.policy.warn_after_s
