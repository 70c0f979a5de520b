"""From an encoded job to its destinations: which objects go where, exactly once.

``Dispatcher.deliver`` is idempotent per (job, destination, object): it asks the ledger what each
destination already confirmed and sends only the rest, SEG first, then the SR of the destination's
``sr_profile`` (which references it), then the overlay images to destinations with ``send_overlay``.
``Sender`` is the loop that claims encoded jobs from the queue (SEND stage) and records sent /
failed-with-backoff / dead.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Sequence

from ..queue import Job, JobQueue, QueueError, Stage
from .base import DeliveryError, Destination
from .ledger import Ledger

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
    """Delivers result directories to a fixed set of destinations, remembering what got through."""

    def __init__(self, destinations: Sequence[Destination], ledger: Ledger) -> None:
        self.destinations = list(destinations)
        self.ledger = ledger

    def deliver(self, job_id: str, result_dir: str | Path) -> list[DeliveryError]:
        """Send what is not yet confirmed; returns one error per destination that is not complete."""
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

            def confirmed(path: Path, _name: str = dest.name) -> None:
                self.ledger.record_delivered(job_id, _name, str(Path(path).resolve().relative_to(root)))

            try:
                dest.send(todo, confirmed)
            except DeliveryError as exc:
                self.ledger.record_attempt(job_id, dest.name, str(exc))
                errors.append(exc)
                log.warning("job %s: %s", job_id, exc)
            except Exception as exc:  # noqa: BLE001 - a bug in one sender must not stop the others
                err = DeliveryError(dest.name, f"{type(exc).__name__}: {exc}")
                self.ledger.record_attempt(job_id, dest.name, str(err))
                errors.append(err)
                log.exception("job %s → %s failed", job_id, dest.name)
            else:
                self.ledger.record_attempt(job_id, dest.name, None)
                log.info("job %s → %s: %d object(s) delivered", job_id, dest.name, len(todo))
        return errors


class Sender(threading.Thread):
    """Claims encoded jobs and delivers them; failures go back to the queue's backoff."""

    def __init__(self, queue: JobQueue, dispatcher: Dispatcher, *, owner: str, poll_s: float = 1.0,
                 lease_s: float = 300.0, on_sent=None) -> None:
        super().__init__(name=f"sender-{owner}", daemon=True)
        self.queue = queue
        self.dispatcher = dispatcher
        self.owner = owner
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.on_sent = on_sent
        self._halt = threading.Event()
        self._wake = threading.Event()

    def kick(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 15.0) -> None:
        self._halt.set()
        self._wake.set()
        self.join(timeout_s)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                worked = self.drain()
            except Exception:  # noqa: BLE001
                log.exception("sender %s: loop error", self.owner)
                worked = False
            if not worked:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def drain(self, max_jobs: int = 100) -> bool:
        """Deliver due jobs until none is left; True when at least one was handled."""
        handled = False
        for _ in range(max_jobs):
            if self._halt.is_set():
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
            reason = "; ".join(str(e) for e in errors)
            return self.queue.fail(job.id, self.owner, reason, retryable=any(e.retryable for e in errors))
        except QueueError as exc:
            log.warning("job %s: %s", job.id, exc)
            return self.queue.get(job.id)
