"""Association release as a completion hint: "the sender has sent what it meant to send".

A scanner or PACS sends a series in one association and releases it; waiting ``quiet_seconds``
after that only adds latency. :class:`ReleaseHints` is bound to pynetdicom's documented events:
``EVT_ESTABLISHED`` notes when an association opened, ``EVT_RELEASED`` (a normal A-RELEASE, not
an abort) marks in the index the series that association delivered whole
(:meth:`dicomnode.store.index.Index.mark_released`). The completion sweep
(:mod:`dicomnode.select.completion`) then starts a study early only if the selected series is
also geometrically complete; everything else still waits for the quiet period.

Not marked: an association from a peer that still has another association open in this
process (parallel senders split one study), an aborted association, a series begun earlier.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Callable, Iterable

LOG = logging.getLogger("dicomnode.receive.release")


class ReleaseHints:
    """EVT_ESTABLISHED / EVT_RELEASED handlers; ``mark(calling_ae, since, now)`` writes the hint."""

    def __init__(self, mark: Callable[[str, float, float], int], active: Callable[[], Iterable],
                 calling_ae: Callable[[object], str], on_marked: Callable[[], None] | None = None) -> None:
        self.mark = mark
        self.active = active            # the AE's live associations
        self.calling_ae = calling_ae
        self.on_marked = on_marked      # e.g. wake the sweep (same process only)
        self._opened: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def on_established(self, event) -> None:
        with self._lock:
            self._opened[event.assoc] = time.time()

    def on_released(self, event) -> None:
        assoc = event.assoc
        with self._lock:
            since = self._opened.pop(assoc, None)
        if since is None or not assoc.is_released:
            return
        try:
            ae, address = self.calling_ae(assoc), assoc.requestor.address
            for other in self.active():
                if other is not assoc and other.is_established and self.calling_ae(other) == ae \
                        and other.requestor.address == address:
                    return  # parallel associations from one sender: its other ones may carry the rest
            marked = self.mark(ae, since, time.time())
        except Exception:  # noqa: BLE001 - a hint; the quiet period still completes the study
            LOG.exception("release hint not recorded")
            return
        if marked and self.on_marked is not None:
            self.on_marked()
