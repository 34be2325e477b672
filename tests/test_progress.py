"""Progress bars of the ``rafs`` command (issue 16): drawn on a terminal, absent through a pipe and with
``--quiet``; the library's ``progress(done, total)`` callbacks behind them; the stdin prompt."""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

import rafs
from s3server import moto_server, s3, s3_proxy  # noqa: F401  (pytest fixtures)
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


# -- the library's callbacks behind the other commands ----------------------------------------------------

class Calls(list):
    """A progress callable recording its calls."""

    def __call__(self, done: int, total: int) -> None:
        self.append((done, total))

    def check(self, total: int | None = None) -> None:
        """Started at 0, never going back, ended at the total (``total`` if given)."""
        assert self and self[0][0] == 0, self
        assert all(a[0] <= b[0] for a, b in zip(self, self[1:])), self
        assert self[-1][0] == self[-1][1], self
        if total is not None:
            assert self[-1] == (total, total), self


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    """``source`` built once: (bootstrap, blob dir)."""
    out = tmp_path_factory.mktemp("built")
    (out / "blobs").mkdir()
    rafs.Builder(source, compressor="zstd").write(bootstrap=out / "boot", blob_dir=out / "blobs")
    return out / "boot", out / "blobs"


def test_check_reports_bytes_verified(built):
    boot, blobs = built
    calls = Calls()
    with rafs.open(boot, blob_dir=blobs) as image:
        assert list(image.check(verify_data=True, progress=calls)) == []
        total = sum(b.uncompressed_size for b in image.blobs)
        calls.check(total)
        quiet = Calls()
        assert list(image.check(progress=quiet)) == [] and quiet == []      # no data read, nothing to report


def test_unpack_reports_entries(built):
    from rafs.image.unpack import write_tar
    boot, blobs = built
    calls = Calls()
    with rafs.open(boot, blob_dir=blobs) as image, open(os.devnull, "wb") as sink:
        count = write_tar(image, sink, progress=calls)
    calls.check(count)
    assert count == 20 * 101 + 1


def test_prefetch_reports_bytes_fetched(built, tmp_path):
    boot, blobs = built
    config = {"device": {"backend": {"type": "localfs", "config": {"dir": str(blobs)}},
                         "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}}},
              "mode": "direct"}
    calls = Calls()
    with rafs.open(boot, config=config) as image:
        handle = image.prefetch(all=True, progress=calls)
        assert not handle.errors and handle.fetched
        planned = calls[0][1]
        assert 0 < planned <= sum(b.compressed_size for b in image.blobs)     # chunks, not the blob's metadata
        calls.check(planned)
        again = Calls()
        assert image.prefetch(all=True, progress=again).fetched == 0
        again.check(0)


def test_convert_reports_bytes_of_layers(tmp_path):
    from oci_layers import make_layers, oci_image, oci_layout
    from rafs.oci import convert
    layout = str(tmp_path / "oci")
    tars = make_layers(str(tmp_path / "layers"), compress="gzip")
    oci_layout(layout, [oci_image(layout, tars)])
    for workers in (1, 2):
        calls = Calls()
        convert(layout, tmp_path / f"nydus{workers}", workers=workers, progress=calls)
        calls.check(sum(os.path.getsize(t) for t in tars))
        assert len({done for done, _ in calls}) >= 2


def test_push_reports_bytes_uploaded(s3, built):
    from rafs.io.push import Pusher
    boot, blobs = built
    (blob,) = blobs.iterdir()
    calls = Calls()
    pushed = Pusher("s3", s3.backend_config()).push(bootstrap=boot, name="img", blob=blob, blob_id=blob.name,
                                                    progress=calls)
    calls.check(os.path.getsize(boot) + os.path.getsize(blob))
    assert s3.fs.cat_file(pushed.bootstrap_url) == boot.read_bytes()


def test_unpack_and_check_with_data_draw_bars_on_a_terminal(built, tmp_path):
    boot, blobs = built
    code, out = run_on_pty(["unpack", str(boot), "--blob-dir", str(blobs), "--output", str(tmp_path / "t.tar")])
    assert code == 0, out
    assert "unpacking" in out and "entries/s" in out, out
    code, out = run_on_pty(["check", str(boot), "-D", str(blobs)])
    assert code == 0 and "check passed" in out, out
    assert "checking" in out and "100%|" in out, out
    # without blobs only metadata is checked: quick, no bar
    code, out = run_on_pty(["check", str(boot)])
    assert code == 0 and "checking" not in out, out
    for argv in (["unpack", str(boot), "--blob-dir", str(blobs), "--output", str(tmp_path / "u.tar")],
                 ["check", str(boot), "-D", str(blobs)]):
        done = run_piped(argv)
        assert done.returncode == 0, done.stderr
        assert b"%|" not in done.stderr and b"\r" not in done.stderr, done.stderr


def test_log_lines_are_written_around_a_bar(monkeypatch, capsys):
    """While a bar is up, each console log line goes through tqdm's external write mode (the bar is
    cleared, the line written, the bar drawn again), so lines never land inside the bar."""
    import contextlib
    import logging

    from rafs.cli import logs, progress
    entered = []

    @contextlib.contextmanager
    def guard():
        entered.append(True)
        yield

    root = logging.getLogger()
    level = root.level
    logs.configure("info")
    try:
        previous = logs.set_console_guard(guard)
        try:
            logging.getLogger("rafs.test").warning("a line")
            progress.echo("FAULT: x")
        finally:
            logs.set_console_guard(previous)
        assert entered == [True, True]
        assert capsys.readouterr().err == "[WARNING] a line\nFAULT: x\n"
        logging.getLogger("rafs.test").warning("after")
        assert entered == [True, True]
    finally:
        root.removeHandler(logs._console)
        logs._console = None
        root.setLevel(level)


@pytest.mark.privileged
def test_fuse_mount_prefetches_with_a_bar(built, tmp_path):
    """``rafs mount`` with fs_prefetch enabled fills the blob cache once the mount answers, as nydusd
    does, and on a terminal shows it as a bar."""
    from test_fuse_support import need_fuse

    from rafs.io.preflight import fully_cached
    need_fuse()
    boot, blobs = built
    cache, mnt = tmp_path / "cache", tmp_path / "mnt"
    mnt.mkdir()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "device": {"backend": {"type": "localfs", "config": {"dir": str(blobs)}},
                   "cache": {"type": "blobcache", "config": {"work_dir": str(cache)}}},
        "mode": "direct", "fs_prefetch": {"enable": True, "threads_count": 2, "prefetch_all": True}}))
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "rafs", "mount", "--config", str(config), "--bootstrap",
                             str(boot), "--mountpoint", str(mnt)], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env=ENV, cwd=ROOT)
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while b"100%|" not in output and time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.2)[0]:
                output += os.read(master, 65536)
        text = output.decode("utf-8", "replace")
        assert "prefetching" in text and "100%|" in text, text
        with rafs.open(boot) as image:
            assert all(fully_cached(cache, blob) for blob in image.blobs)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
    assert proc.returncode == 0
