"""Progress reports from the library's long calls, for whoever shows them (the ``rafs`` command's bars).

The library never prints. An entry point that may take long (``Builder.write``, ``Converter.run``,
``Pusher.push``, ``Image.prefetch``, ``Image.check``, ``write_tar``) takes ``progress``: a callable it
calls as ``progress(done, total)`` with the units finished so far and the units planned (0 when not
known), in the unit that entry point documents (bytes, or entries). Calls come at cheap points (per
file, layer or request, and at most every :data:`INTERVAL` seconds in between), from whichever thread
does the work, and a last one at the end with ``done == total``; only that last one has ``done`` reach
a known ``total`` (so "100%" means the call has ended, its results written, not only its units counted).
A progress callable that raises stops the call, as an exception from the work would.

The last report of a call with nothing to do is ``(0, 0)``, which reads the same as a start whose
total is not known yet; so that a display can still show such a call complete, a callable may have a
``finish()`` method, called once after the last report (:meth:`Ticker.finish`).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

#: ``progress(done, total)``: units done so far, units planned (0: not known).
Progress = Callable[[int, int], None]

#: Shortest time between two reports of one :class:`Ticker` (but its last).
INTERVAL = 0.1


class Ticker:
    """Counts the units of one call and reports them to ``progress`` at most every ``interval`` seconds.

    ``advance`` may be called from several threads; with ``progress`` None it only counts.
    """

    def __init__(self, progress: Optional[Progress], total: int = 0, *, interval: float = INTERVAL):
        self.progress = progress
        self.total = max(0, int(total))
        self.done = 0
        self.interval = interval
        self._last = float("-inf")
        self._lock = threading.Lock()

    def start(self) -> "Ticker":
        """Report the start (0 done), so a display appears before the first unit ends."""
        if self.progress is not None:
            self.progress(self.done, self.total)
            self._last = time.monotonic()
        return self

    def advance(self, units: int = 1) -> None:
        """Count ``units`` more done; report them unless the last report is under ``interval`` old."""
        if self.progress is None:
            return
        with self._lock:
            self.done += units
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
            done, total = self.done, self.total
        if total and done >= total:
            done = total - 1            # the end is finish()'s to report
        self.progress(done, total)

    def finish(self) -> None:
        """The last report: everything done (a total that was an estimate becomes what was done)."""
        if self.progress is None:
            return
        with self._lock:
            if self.done > self.total or not self.total:
                self.total = self.done
            self.done = self.total
        self.progress(self.done, self.total)
        finish = getattr(self.progress, "finish", None)
        if callable(finish):
            finish()
