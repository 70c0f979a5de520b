"""The loop every slot thread runs (the analysis and verdict ``Worker``, the delivery ``Sender``): rounds of
work until stopped; after a round that found nothing to do, a nap of ``poll_s`` that ``kick()`` cuts short."""

from __future__ import annotations

import threading


class SlotLoop(threading.Thread):
    """A daemon thread that calls ``round()`` until ``stop()``.

    ``round()`` returns True when it did something (the next round starts at once) and False when there
    was nothing to do (the thread waits ``poll_s`` or until ``kick()``). ``stop()`` lets the current round
    end (rounds check ``stopping``) and joins."""

    def __init__(self, name: str, *, poll_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.poll_s = poll_s
        self._halt = threading.Event()
        self._wake = threading.Event()

    def kick(self) -> None:
        """Look for work now (new job enqueued, retry due)."""
        self._wake.set()

    def stop(self, timeout_s: float = 15.0) -> None:
        self._halt.set()
        self._wake.set()
        self.join(timeout_s)

    @property
    def stopping(self) -> bool:
        return self._halt.is_set()

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (after an error), cut short only by ``stop()``, not by a kick."""
        self._halt.wait(seconds)

    def round(self) -> bool:
        raise NotImplementedError

    def nap_s(self) -> float:
        """How long to wait after an idle round (a kick cuts it short); ``poll_s`` unless a subclass has
        something due sooner."""
        return self.poll_s

    def run(self) -> None:
        while not self._halt.is_set():
            if not self.round():
                self._wake.wait(self.nap_s())
                self._wake.clear()
