"""A call with nothing to do still ends as complete: the ticker tells its callable it finished, and the
``rafs`` command's bar shows 100% ("nothing to do") rather than a count stuck at 0 with no percentage
(the cause of a rare failure of test_fuse_mount_prefetches_with_a_bar when the cache was already full)."""

from __future__ import annotations

import io
import types

from rafs.progress import Ticker


class Recorder(list):
    """A progress callable with ``finish()``, recording both."""

    def __call__(self, done: int, total: int) -> None:
        self.append((done, total))

    def finish(self) -> None:
        self.append("finish")


def test_ticker_with_no_work_reports_the_end_and_calls_finish():
    calls = Recorder()
    ticker = Ticker(calls, 0).start()
    ticker.finish()
    assert calls == [(0, 0), (0, 0), "finish"]


def test_ticker_calls_finish_after_the_last_report_of_real_work():
    calls = Recorder()
    ticker = Ticker(calls, 10, interval=3600).start()
    ticker.advance(10)
    ticker.finish()
    assert calls[-2:] == [(10, 10), "finish"]


def test_plain_callables_still_work():
    calls = []
    Ticker(lambda d, t: calls.append((d, t)), 0).start().finish()
    assert calls == [(0, 0), (0, 0)]


def _bar_output(monkeypatch, work):
    """What a ``rafs`` bar draws on a (fake) terminal while ``work(report)`` runs."""
    from rafs.cli import progress
    stream = io.StringIO()
    stream.isatty = lambda: True
    monkeypatch.setattr("sys.stderr", stream)
    with progress.bar(types.SimpleNamespace(quiet=False), "prefetching") as report:
        assert report is not None
        work(report)
    return stream.getvalue()


def test_bar_with_nothing_to_do_shows_complete(monkeypatch):
    text = _bar_output(monkeypatch, lambda report: Ticker(report, 0).start().finish())
    assert "prefetching: 100%|" in text and "nothing to do" in text, text


def test_bar_with_work_shows_complete_and_no_nothing_to_do(monkeypatch):
    def work(report):
        ticker = Ticker(report, 5000).start()
        ticker.advance(5000)
        ticker.finish()
    text = _bar_output(monkeypatch, work)
    assert "100%|" in text and "nothing to do" not in text, text


def test_bar_shown_empty_then_given_work_counts_it(monkeypatch):
    """A long-lived bar (a mount's prefetches) drawn as "nothing to do" counts a later call's work."""
    def work(report):
        Ticker(report, 0).start().finish()
        ticker = Ticker(report, 3000).start()
        ticker.advance(3000)
        ticker.finish()
    text = _bar_output(monkeypatch, work)
    assert text.rstrip().endswith("]") and "3.00k/3.00k" in text.replace("kB", "k"), text


def test_only_finish_reports_the_end():
    """The last unit counted is not yet the end (a prefetch still writes its chunk maps after it): a
    bar reads 100% only once finish() has run."""
    calls = Recorder()
    ticker = Ticker(calls, 10, interval=0).start()
    ticker.advance(4)
    ticker.advance(6)
    assert calls[-1] == (9, 10)
    ticker.finish()
    assert calls[-2:] == [(10, 10), "finish"]


def test_bar_reads_100_percent_only_after_finish(monkeypatch):
    """tqdm would round 999 of 1000 up to "100%"; the bar shows 99% until the call ends."""
    def work(report):
        report(0, 1000)
        report(999, 1000)
        report.shown.refresh()                        # drawn now, whatever tqdm's redraw interval
        text = __import__("sys").stderr.getvalue()
        assert " 99%|" in text and "100%" not in text, text
        report(1000, 1000)
    text = _bar_output(monkeypatch, work)
    assert "100%|" in text
