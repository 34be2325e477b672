"""Progress bars of the ``rafs`` command, drawn by tqdm on standard error.

A bar is shown only when standard error is a terminal and ``--quiet`` is not given: through a pipe, in
a log file or under CI, the output is what it was without bars. tqdm rather than rich: it has no
dependencies of its own (rich pulls in pygments and markdown-it), draws one line, is safe to update
from worker threads, and keeps log lines readable through ``tqdm.external_write_mode`` (hooked into
:mod:`rafs.cli.logs` while a bar is up).

The library reports through ``progress(done, total)`` callables (:mod:`rafs.progress`);
:func:`bar` makes one for a command, or None when nothing is to be drawn.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator

from rafs.progress import Progress

# What stdin-fed options print before reading patterns from a terminal.
STDIN_PROMPT = "reading prefetch patterns from stdin, one per line; end with Ctrl-D"


def enabled(args) -> bool:
    """Bars are drawn: stderr is a terminal and the command line has no ``--quiet``."""
    stream = sys.stderr
    try:
        return not getattr(args, "quiet", False) and stream is not None and stream.isatty()
    except (AttributeError, ValueError):            # a closed or replaced stream
        return False


@contextlib.contextmanager
def bar(args, description: str, unit: str = "B", *, show: bool = True) -> Iterator[Progress | None]:
    """A ``progress(done, total)`` callable drawing a bar labelled ``description``, counting ``unit``
    (``"B"``: bytes, shown scaled as kB/MB), or None when ``show`` or :func:`enabled` is false."""
    if not (show and enabled(args)):
        yield None
        return
    from tqdm import tqdm

    from . import logs
    scaled = unit == "B"
    shown = tqdm(desc=description, total=None, unit=unit, unit_scale=scaled, unit_divisor=1000,
                 file=sys.stderr, leave=True, dynamic_ncols=True)
    report = _Bar(shown)

    previous = logs.set_console_guard(tqdm.external_write_mode)
    try:
        yield report
    finally:
        logs.set_console_guard(previous)
        report.close()


# What a bar shows after a call that had nothing to do (tqdm draws no percentage for a total of 0).
NOTHING_TO_DO = "{l_bar}{bar}| nothing to do"


class _Bar:
    """The ``progress(done, total)`` callable behind one tqdm bar (thread safe); its ``finish()`` shows a
    call with nothing to do as complete (100%, "nothing to do") rather than as a count stuck at 0."""

    def __init__(self, shown):
        self.shown = shown
        self._lock = threading.Lock()
        self._empty = False           # drawn as "nothing to do": reset when a later call reports work

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            shown = self.shown
            if self._empty:
                self._empty = False
                shown.bar_format, shown.total, shown.n = None, None, 0
            if total and shown.total != total:
                shown.total = total
            if total and done < total:
                # tqdm rounds 99.6% up to "100%": until the call has ended a bar shows at most 99%
                done = min(done, total * 99 // 100)
            shown.update(done - shown.n)
            if total and done >= total:
                shown.refresh()       # the end is drawn at once, not at tqdm's next redraw

    def finish(self) -> None:
        with self._lock:
            shown = self.shown
            if shown.total or shown.n:
                return
            self._empty = True
            shown.bar_format, shown.total, shown.n = NOTHING_TO_DO, 1, 1
            shown.refresh()

    def close(self) -> None:
        with self._lock:
            self.shown.close()


def prompt_if_terminal(args, option: str) -> None:
    """Tell a person at a terminal that ``option`` waits for patterns on stdin (not with ``--quiet``)."""
    stdin = sys.stdin
    try:
        interactive = stdin is not None and stdin.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if interactive and not getattr(args, "quiet", False):
        print(f"{option}: {STDIN_PROMPT}", file=sys.stderr, flush=True)


def echo(text: str) -> None:
    """Print ``text`` on stderr, above any bar being drawn rather than through it."""
    from . import logs
    guard = logs.console_guard()
    with guard() if guard is not None else contextlib.nullcontext():
        print(text, file=sys.stderr, flush=True)
