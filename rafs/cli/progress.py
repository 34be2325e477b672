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
    lock = threading.Lock()
    scaled = unit == "B"
    shown = tqdm(desc=description, total=None, unit=unit, unit_scale=scaled, unit_divisor=1000,
                 file=sys.stderr, leave=True, dynamic_ncols=True)

    def report(done: int, total: int) -> None:
        with lock:
            if total and shown.total != total:
                shown.total = total
            shown.update(done - shown.n)

    previous = logs.set_console_guard(tqdm.external_write_mode)
    try:
        yield report
    finally:
        logs.set_console_guard(previous)
        with lock:
            shown.close()


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
