"""Progress bars of the ``rafs`` command (issue 16): drawn on a terminal, absent through a pipe and with
``--quiet``; the library's ``progress(done, total)`` callbacks behind them; the stdin prompt."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

import rafs
from rafs.progress import Ticker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "COLUMNS": "100"}
BAR_MARKS = ("%|", "B/s", "it/s")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tree of some thousand small files and a few larger ones."""
    root = tmp_path_factory.mktemp("src")
    for d in range(20):
        sub = root / f"d{d}"
        sub.mkdir()
        for i in range(100):
            (sub / f"f{i}").write_bytes(os.urandom(64) * (i + 1))
    (root / "big").write_bytes(os.urandom(1 << 20) * 4)
    return root


def run_on_pty(argv, *, stdin_data: bytes | None = None, timeout: float = 120) -> tuple[int, str]:
    """Run ``rafs argv`` with stdin, stdout and stderr on a pseudo-terminal; its exit code and output."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))     # a terminal's size
    try:
        proc = subprocess.Popen([sys.executable, "-m", "rafs", *argv], stdin=slave, stdout=slave, stderr=slave,
                                env=ENV, cwd=ROOT, close_fds=True)
    finally:
        os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    sent = stdin_data is None
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:             # EIO: the child closed the terminal
                    break
                if not data:
                    break
                output += data
                if not sent and b"Ctrl-D" in output:
                    os.write(master, stdin_data + b"\x04")
                    sent = True
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, output.decode("utf-8", "replace")


def run_piped(argv, *, stdin_data: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rafs", *argv], input=stdin_data, capture_output=True, env=ENV,
                          cwd=ROOT, timeout=120)


def test_create_on_a_terminal_draws_a_bar(source, tmp_path):
    code, out = run_on_pty(["create", "-B", str(tmp_path / "boot"), "-b", str(tmp_path / "blob"), str(source)])
    assert code == 0, out
    assert "building" in out and any(mark in out for mark in BAR_MARKS), out
    assert "100%|" in out, out


def test_create_through_a_pipe_prints_no_bar(source, tmp_path):
    done = run_piped(["create", "-B", str(tmp_path / "boot"), "-b", str(tmp_path / "blob"), str(source)])
    assert done.returncode == 0, done.stderr
    err = done.stderr.decode()
    assert not any(mark in err for mark in BAR_MARKS) and "building" not in err and "\r" not in err, err
    assert "meta blob path" in err


def test_quiet_silences_the_bar_on_a_terminal(source, tmp_path):
    code, out = run_on_pty(["create", "--quiet", "-B", str(tmp_path / "boot"), "-b", str(tmp_path / "blob"),
                            str(source)])
    assert code == 0, out
    assert "building" not in out and not any(mark in out for mark in BAR_MARKS), out
    # before the command too, as a global option
    code, out = run_on_pty(["-q", "build", "--name", "x", "--source-dir", str(source), "--output-dir",
                            str(tmp_path / "out")])
    assert code == 0, out
    assert "building" not in out and not any(mark in out for mark in BAR_MARKS), out


def test_build_on_a_terminal_draws_a_bar(source, tmp_path):
    code, out = run_on_pty(["build", "--name", "x", "--source-dir", str(source), "--output-dir", str(tmp_path)])
    assert code == 0, out
    assert "building" in out and "100%|" in out, out


def test_prefetch_patterns_on_a_terminal_are_prompted_for(source, tmp_path):
    code, out = run_on_pty(["create", "--prefetch-policy", "fs", "-B", str(tmp_path / "boot"), "-b",
                            str(tmp_path / "blob"), str(source)], stdin_data=b"/d1\n")
    assert code == 0, out
    assert "reading prefetch patterns from stdin, one per line; end with Ctrl-D" in out, out
    with rafs.open(tmp_path / "boot") as image:
        assert image.reader.prefetch_inodes() == [image.stat("/d1").st_ino]


def test_no_prompt_when_stdin_is_a_pipe(source, tmp_path):
    done = run_piped(["create", "--prefetch-policy", "fs", "-B", str(tmp_path / "boot"), "-b",
                      str(tmp_path / "blob"), str(source)], stdin_data=b"/d1\n")
    assert done.returncode == 0, done.stderr
    assert b"Ctrl-D" not in done.stderr


def test_builder_reports_bytes_of_file_data(source, tmp_path):
    calls = []
    rafs.Builder(source).write(bootstrap=tmp_path / "boot", blob=tmp_path / "blob",
                               progress=lambda done, total: calls.append((done, total)))
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))


def test_ticker_throttles_and_finishes():
    calls = []
    ticker = Ticker(lambda d, t: calls.append((d, t)), 0, interval=3600).start()
    for _ in range(1000):
        ticker.advance(2)
    ticker.finish()
    assert calls == [(0, 0), (2000, 2000)]
