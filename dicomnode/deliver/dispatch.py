"""From an encoded job to its destinations: which objects go where, exactly once.

``Dispatcher.deliver`` is idempotent per (job, destination, object): it asks the ledger what each
destination already confirmed and sends only the rest, SEG first, then the SR of the destination's
``sr_profile`` (which references it), then the overlay images to destinations with ``send_overlay``.
``Sender`` is the loop that claims encoded jobs from the queue (SEND stage) and records sent /
deferred / dead, by each destination's own retry policy (``policy.RetryPolicy``), never by the
queue's analysis attempts.

A destination that does not answer (no association, connection refused, 502-504) is marked down:
jobs claimed while it is down do not send to it (they wait, cheaply), the sender probes it every
``probe_interval_s`` (C-ECHO / HTTP HEAD) and, the moment it answers, wakes every waiting delivery,
which then goes out oldest first. Down for ``warn_after_s`` or a dead letter: a WARNING with an
``alert=…`` token, and the metrics ``ichnode_destination_down_seconds`` /
``ichnode_delivery_dead_letters_total``. Logs name jobs and destinations only, never a patient.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from ..queue import Job, JobQueue, QueueError, Stage
from ..work.loop import SlotLoop
from .base import DeliveryError, Destination
from .ledger import Ledger
from .policy import ALERT_DEAD, ALERT_DOWN, DestinationHealth, RetryPolicy

log = logging.getLogger(__name__)

ORDER = ("seg", "sr", "sr_tid1411", "sc")
REQUIRED = ("seg", "sr", "sr_tid1411")   # listed in result.json but missing on disk: a broken result


def result_objects(result_dir: str | Path) -> list[tuple[str, Path]]:
    """``(kind, path)`` of the DICOM outputs listed in ``result.json``, in sending order."""
    root = Path(result_dir)
    try:
        outputs = json.loads((root / "result.json").read_text()).get("outputs") or {}
    except FileNotFoundError:
        named = (("seg", "seg.dcm"), ("sr", "sr.dcm"), ("sr_tid1411", "sr_tid1411.dcm"))
        outputs = {kind: [name] for kind, name in named if (root / name).is_file()}
        outputs["sc"] = sorted(str(p.relative_to(root)) for p in root.glob("sc/*.dcm"))
    objects = []
    for kind in ORDER + tuple(k for k in outputs if k not in ORDER):
        for rel in outputs.get(kind) or []:
            path = (root / rel).resolve()
            if root.resolve() not in path.parents:
                raise DeliveryError("-", f"result.json lists {rel!r} outside the result directory", retryable=False)
            if path.is_file():
                objects.append((kind, path))
            elif kind in REQUIRED:
                raise DeliveryError("-", f"result.json lists {rel!r} but the file is missing", retryable=False)
    return objects


class Dispatcher:
    """Delivers result directories to a fixed set of destinations, remembering what got through and
    which destination is down."""

    def __init__(self, destinations: Sequence[Destination], ledger: Ledger) -> None:
        self.destinations = list(destinations)
        self.ledger = ledger
        self.by_name = {d.name: d for d in self.destinations}
        self.health = {d.name: DestinationHealth(d.name, d.retry) for d in self.destinations}
        self.dead_letters: Counter[str] = Counter()  # per destination ("-": a broken result), since start
        known = ledger.destination_states()
        for name, h in self.health.items():  # down before a restart: probe first instead of re-sending
            down_since = (known.get(name) or {}).get("down_since")
            if down_since:
                h.down_since, h.next_probe_at, h.last_error = down_since, 0.0, known[name]["last_error"]

    def policy(self, name: str) -> RetryPolicy:
        dest = self.by_name.get(name)
        return dest.retry if dest is not None else RetryPolicy()

    def deliver(self, job_id: str, result_dir: str | Path) -> list[DeliveryError]:
        """Send what is not yet confirmed; returns one error per destination that is not complete
        (``waiting`` errors: the destination is down, nothing was sent to it)."""
        root = Path(result_dir).resolve()
        try:
            objects = result_objects(root)
        except DeliveryError as exc:
            return [exc]
        errors: list[DeliveryError] = []
        for dest in self.destinations:
            wanted = [p for kind, p in objects if dest.wants(kind)]
            done = self.ledger.delivered(job_id, dest.name)
            todo = [p for p in wanted if str(p.relative_to(root)) not in done]
            if not todo:
                continue
            health = self.health[dest.name]
            if not health.up:
                health.waiting.add(job_id)
                errors.append(DeliveryError(dest.name, f"down for {health.down_for():.0f} s, waiting for it to "
                                            "answer a probe", unreachable=True, waiting=True))
                continue

            def confirmed(path: Path, _name: str = dest.name) -> None:
                self.ledger.record_delivered(job_id, _name, str(Path(path).resolve().relative_to(root)))

            try:
                dest.send(todo, confirmed)
            except DeliveryError as exc:
                self.ledger.record_attempt(job_id, dest.name, str(exc))
                errors.append(exc)
                log.warning("job %s: %s", job_id, exc)
                if exc.unreachable and exc.retryable:
                    self._went_down(dest.name, str(exc))
                    health.waiting.add(job_id)
            except Exception as exc:  # noqa: BLE001 - a bug in one sender must not stop the others
                err = DeliveryError(dest.name, f"{type(exc).__name__}: {exc}")
                self.ledger.record_attempt(job_id, dest.name, str(err))
                errors.append(err)
                log.exception("job %s → %s failed", job_id, dest.name)
            else:
                self.ledger.record_attempt(job_id, dest.name, None)
                self.ledger.clear_failures(job_id, dest.name)
                log.info("job %s → %s: %d object(s) delivered", job_id, dest.name, len(todo))
        return errors

    def _went_down(self, name: str, error: str) -> None:
        health = self.health[name]
        if health.mark_down(error):
            self.ledger.set_destination_state(name, health.down_since, error)
            log.warning("destination %s does not answer (%s); deliveries to it wait, probing every %.0f s",
                        name, error, health.policy.probe_interval_s)

    def probe(self, now: float | None = None) -> list[str]:
        """Probe each down destination whose probe is due; returns the names that answer again. Also
        logs the "still down" WARNING (``alert=destination_down``) every ``warn_after_s``."""
        back: list[str] = []
        now = time.time() if now is None else now
        for dest in self.destinations:
            health = self.health[dest.name]
            if health.warn_due(now):
                health.warned_at = now
                log.warning("destination %s down for %.1f min; %d delivery job(s) waiting; last error: %s [%s]",
                            dest.name, health.down_for(now) / 60, len(health.waiting), health.last_error, ALERT_DOWN)
            if not health.probe_due(now):
                continue
            health.probes += 1
            try:
                dest.check(timeout_s=health.policy.probe_timeout_s)
            except Exception as exc:  # noqa: BLE001 - any failure of the probe: still down
                health.last_error = str(exc)
                health.next_probe_at = time.time() + health.policy.probe_interval_s
                log.debug("destination %s: probe failed: %s", dest.name, exc)
                continue
            down_s, waiting = health.down_for(), len(health.waiting)
            health.mark_up()
            self.ledger.set_destination_state(dest.name, None, None)
            log.info("destination %s answers again after %.0f s down; %d waiting delivery job(s) go out now, "
                     "oldest first", dest.name, down_s, waiting)
            back.append(dest.name)
        return back


class Sender(SlotLoop):
    """Claims encoded jobs and delivers them; probes down destinations; a delivery that did not get
    through waits by its destination's retry policy."""

    def __init__(self, queue: JobQueue, dispatcher: Dispatcher, *, owner: str, poll_s: float = 1.0,
                 lease_s: float = 300.0, on_sent=None) -> None:
        super().__init__(f"sender-{owner}", poll_s=poll_s)
        self.queue = queue
        self.dispatcher = dispatcher
        self.owner = owner
        self.lease_s = lease_s
        self.on_sent = on_sent

    def round(self) -> bool:
        """Probe what is due, deliver what is due; False (wait for a kick) when nothing was delivered."""
        try:
            self.probe()
            return self.drain()
        except Exception:  # noqa: BLE001
            log.exception("sender %s: loop error", self.owner)
            return False

    def nap_s(self) -> float:
        """Idle until the next probe of a down destination is due, at most ``poll_s``: a probe interval
        below ``poll_s`` is kept, not rounded up to it."""
        due = [h.next_probe_at for h in self.dispatcher.health.values() if h.down_since is not None]
        return self.poll_s if not due else max(0.0, min(self.poll_s, min(due) - time.time()))

    def probe(self) -> int:
        """Probe the down destinations that are due; when one answers, every waiting delivery is made
        due (oldest first). Returns how many were woken."""
        if not self.dispatcher.probe():
            return 0
        n = self.queue.wake()
        self.kick()
        return n

    def drain(self, max_jobs: int = 100) -> bool:
        """Deliver due jobs until none is left; True when at least one was handled."""
        handled = False
        for _ in range(max_jobs):
            if self.stopping:
                break
            job = self.queue.claim(self.owner, stage=Stage.SEND, lease_s=self.lease_s)
            if job is None:
                break
            handled = True
            self.deliver(job)
        return handled

    def deliver(self, job: Job) -> Job:
        errors = self.dispatcher.deliver(job.id, job.result_dir)
        try:
            if not errors:
                if not self.dispatcher.destinations:
                    log.warning("job %s: no destinations configured; results stay in %s", job.id, job.result_dir)
                done = self.queue.complete(job.id, self.owner)
                if self.on_sent is not None:
                    self.on_sent(done)
                return done
            return self._not_yet(job, errors)
        except QueueError as exc:
            log.warning("job %s: %s", job.id, exc)
            return self.queue.get(job.id)

    def _not_yet(self, job: Job, errors: list[DeliveryError]) -> Job:
        """Some destination did not get everything: wait as its retry policy says, or dead-letter."""
        reason = "; ".join(str(e) for e in errors)
        now = time.time()
        hopeless = [e for e in errors if not e.retryable]
        delays: list[float] = []
        for err in errors:
            if not err.retryable:
                continue
            policy = self.dispatcher.policy(err.destination)
            failures, since = self.dispatcher.ledger.record_failure(job.id, err.destination, sent=not err.waiting)
            if policy.gives_up(since, now):
                hopeless.append(err)
                reason = f"{reason} (not delivered for {(now - since) / 3600:.1f} h: gave up)"
                continue
            health = self.dispatcher.health.get(err.destination)
            if health is not None and not health.up:
                # the probe wakes it as soon as the destination answers; this is only the fallback
                delays.append(max(policy.backoff_max_s, policy.probe_interval_s))
            else:
                delays.append(policy.delay(max(1, failures)))
        if hopeless:
            dead = self.queue.fail(job.id, self.owner, reason, retryable=False)
            for err in hopeless:
                self.dispatcher.dead_letters[err.destination] += 1
                if err.destination in self.dispatcher.health:
                    self.dispatcher.health[err.destination].waiting.discard(job.id)
            log.warning("job %s: delivery dead-lettered: %s; `ich-node jobs retry %s` sends it again [%s]",
                        job.id, reason, job.id, ALERT_DEAD)
            return dead
        return self.queue.defer(job.id, self.owner, reason, delay_s=min(delays))
