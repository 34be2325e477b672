"""Run every read path of rafs over an image, under a time and a memory bound.

:func:`exercise` opens an image and, step by step, walks it, stats every entry, reads its xattrs and
symlink targets, reads every regular file, builds the model tree, runs ``check(verify_data=True)``,
writes the whole tree as a tar to a null sink and describes the image as ``rafs inspect`` does;
:func:`exercise_blob` runs every blob parser. Each step either succeeds or raises a
:class:`rafs.RafsError`; anything else (``IndexError``, ``struct.error``, ``RecursionError``,
``MemoryError``, ...) is a bug and raises :class:`EscapedError`. :func:`check_mutant` wraps it with a
wall-clock limit and, optionally, a memory limit (tracemalloc or peak RSS).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat as _stat
import threading
import time
import tracemalloc
from dataclasses import dataclass, field

from ..errors import RafsError

READ_BLOCK = 1 << 20
MAX_READ_PER_FILE = 64 * READ_BLOCK
# Bytes written to the null sink before unpacking is cut short: a hostile image may declare files of
# any size (a sparse exabyte is legal), and the tar stream grows with what the image declares.
UNPACK_OUTPUT_LIMIT = 64 << 20
# Entries deeper than this are stat-ed by inode, not by resolving their path again.
MAX_PATH_DEPTH = 64
STEPS = ("walk", "stat", "read", "tree", "check", "unpack", "inspect")


class EscapedError(AssertionError):
    """A step raised something that is not a :class:`rafs.RafsError`: a bug in the reader."""


class OutOfTimeError(AssertionError):
    """A step ran past its wall-clock limit: a hang or a loop over hostile counts."""


class OutOfMemoryError(AssertionError):
    """The exercise allocated more (tracemalloc peak) than its budget."""


class BytesSource:
    """A blob held in memory, served as a :class:`rafs.ranges.RangeReader` (``blobs={id: ...}``)."""

    def __init__(self, data: bytes, name: str = "<bytes>"):
        self.data = bytes(data)
        self.size = len(self.data)
        self.name = name

    def read_range(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; a read past the end is a :class:`~rafs.errors.BackendError`, as
        a real backend's is."""
        if offset < 0 or size < 0 or offset + size > self.size:
            from ..errors import BackendError
            raise BackendError(f"{self.name}: read of {size} bytes at {offset} past the end ({self.size})")
        return self.data[offset:offset + size]

    def close(self) -> None:
        """Nothing to release: the bytes are the caller's."""
        pass


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise :class:`OutOfTimeError` inside the block once ``seconds`` have passed (main thread only;
    elsewhere the block runs unbounded)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise OutOfTimeError(f"{what}: took longer than {seconds}s (hang?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_limit(max_bytes: int | None, what: str, *, method: str = "tracemalloc"):
    """Fail with :class:`OutOfMemoryError` when the block's memory peak exceeds ``max_bytes``.

    ``method="tracemalloc"`` measures the Python heap peak (every allocation as requested, untouched
    zero pages included; slows the block down 2-4x). ``method="rss"`` resets the kernel's peak
    resident set size (``/proc/self/clear_refs``) and compares it after the block with the resident
    size before: cheap, and it also sees memory allocated by C libraries, but not pages never
    touched. Either check is after the fact: it catches allocations proportional to a hostile size
    field, not ones that would exhaust the machine (use resource limits for those).
    """
    if max_bytes is None:
        yield
        return
    if method == "rss":
        base = _reset_peak_rss()
        try:
            yield
        finally:
            peak = _status_kib("VmHWM") * 1024 - base
    elif method == "tracemalloc":
        started = not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            yield
        finally:
            peak = tracemalloc.get_traced_memory()[1] - base
            if started:
                tracemalloc.stop()
    else:
        raise ValueError(f"unknown memory measure {method!r}")
    if peak > max_bytes:
        raise OutOfMemoryError(f"{what}: memory peak {peak} bytes ({method}) exceeds the budget of {max_bytes}")


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field_name}")


def _reset_peak_rss() -> int:
    """Reset the peak RSS (Linux >= 4.0) and return the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def memory_budget(*inputs, per_byte: int = 16, slack: int = 48 << 20) -> int:
    """A budget proportional to what the inputs declare: ``slack`` plus ``per_byte`` times their
    total length (inputs are bytes, or ints counting bytes)."""
    total = sum(x if isinstance(x, int) else len(x) for x in inputs)
    return slack + per_byte * total


class _NullSink:
    """A write-only file that discards bytes and stops the writer after ``limit`` bytes."""

    class Full(Exception):
        pass

    def __init__(self, limit: int):
        self.limit, self.written = limit, 0

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise self.Full()
        return len(data)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.written


@dataclass
class Outcome:
    """What each step of :func:`exercise` did: ``"ok"``, ``"limit"`` (cut at a documented bound) or the
    name of the :class:`rafs.RafsError` it raised. ``entries`` and ``bytes_read`` count the work done."""

    steps: dict = field(default_factory=dict)
    entries: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    problems: list = field(default_factory=list)

    @property
    def summary(self) -> str:
        """``"ok"`` when every step succeeded, else the first error class name."""
        for result in self.steps.values():
            if result not in ("ok", "limit"):
                return result
        return "ok"

    @property
    def verdict(self) -> str:
        """As :attr:`summary`, but ``"problems"`` when every step ran and ``check`` found faults."""
        summary = self.summary
        return "problems" if summary == "ok" and self.problems else summary


def exercise(source, *, steps=STEPS, max_read_per_file: int = MAX_READ_PER_FILE,
             unpack_limit: int = UNPACK_OUTPUT_LIMIT, what: str = "image", **open_kwargs) -> Outcome:
    """Open ``source`` with :func:`rafs.open` (``open_kwargs`` passed on) and run every read path.

    Steps run independently, so a fault in one (a bad file) does not hide faults in the next. Raises
    :class:`EscapedError` when any step raises something other than a :class:`rafs.RafsError`.
    """
    import rafs
    from ..image.unpack import write_tar

    outcome = Outcome()
    started = time.monotonic()

    def run(name, step):
        try:
            result = step()
            outcome.steps[name] = result or "ok"
        except RafsError as exc:
            outcome.steps[name] = type(exc).__name__
        except (OutOfTimeError, OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - catching what is not ours is the point
            raise EscapedError(f"{what}: step {name!r} let {type(exc).__name__} escape: {exc}") from exc

    image = None

    def do_open():
        nonlocal image
        image = rafs.open(source, **open_kwargs)

    run("open", do_open)
    if image is None:
        outcome.seconds = time.monotonic() - started
        return outcome
    try:
        entries = []

        def walk():
            for path, inode in image.iter_entries("/"):
                entries.append((path, inode))
            outcome.entries = len(entries)
            for _ in image.iter_stats("/"):
                pass
            for _ in image.walk("/"):
                pass

        def stat_all():
            for path, inode in entries:
                if path.count(b"/") > MAX_PATH_DEPTH:
                    image.get_inode(inode.ino)        # resolving every deep path would be quadratic
                    continue
                image.lstat(path)
                for name in image.listxattr(path, follow_symlinks=False):
                    image.getxattr(path, name, follow_symlinks=False)
                if _stat.S_ISLNK(inode.mode):
                    image.readlink(path)
                    # following the link is allowed to fail as a path error, never otherwise
                    try:
                        image.stat(path)
                    except rafs.errors.PathError:
                        pass

        def read_all():
            first_error = None
            for path, inode in entries:
                if not _stat.S_ISREG(inode.mode):
                    continue
                try:
                    with image.open_inode(inode.ino) as f:
                        pos = 0
                        while pos < min(inode.size, max_read_per_file):
                            data = f.pread(READ_BLOCK, pos)
                            if not data:
                                break
                            outcome.bytes_read += len(data)
                            pos += len(data)
                except RafsError as exc:
                    first_error = first_error or exc
            if first_error is not None:
                raise first_error

        def tree():
            image.tree("/")

        def check():
            outcome.problems.extend(image.check(verify_data=True))

        def unpack():
            try:
                write_tar(image, _NullSink(unpack_limit))
            except _NullSink.Full:
                return "limit"

        def inspect():
            import json
            from ..image.inspect import describe
            json.dumps(describe(image), default=str)       # what ``rafs inspect`` prints

        table = {"walk": walk, "stat": stat_all, "read": read_all, "tree": tree, "check": check,
                 "unpack": unpack, "inspect": inspect}
        for name in steps:
            if name in ("stat", "read") and "walk" not in outcome.steps:
                run("walk", walk)
            run(name, table[name])
    finally:
        run("close", image.close)
    outcome.seconds = time.monotonic() - started
    return outcome


def exercise_blob(source, blob=None, *, what: str = "blob") -> Outcome:
    """Run every blob parser over a data blob (bytes, path or RangeReader): its description (sections,
    ToC, CI header and records, inline bootstrap, blob id), and with ``blob`` (its
    :class:`rafs.model.Blob` from a bootstrap) the strict CI load, the located and digest-checked ToC
    and the extraction of every ToC entry. Same contract as :func:`exercise`."""
    from ..blob import layout, meta, toc
    from ..blob.describe import describe_blob

    outcome = Outcome()
    started = time.monotonic()
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = BytesSource(bytes(source), what)
    elif isinstance(source, (str, os.PathLike)):
        from ..io.source import open_range_reader
        with contextlib.closing(open_range_reader(source)) as reader:
            return exercise_blob(reader, blob, what=what)

    def run(name, step):
        try:
            outcome.steps[name] = step() or "ok"
        except RafsError as exc:
            outcome.steps[name] = type(exc).__name__
        except (OutOfTimeError, OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise EscapedError(f"{what}: blob step {name!r} let {type(exc).__name__} escape: {exc}") from exc

    def describe():
        info = describe_blob(source, blob, chunks=True)
        return "ok" if not info["problems"] else "problems"

    found = []

    def read_toc():
        found.extend(toc.read_toc(source, digest=blob.toc_digest or None, size=blob.toc_size or None))

    run("describe", describe)
    run("inline bootstrap", lambda: toc.extract_inline_bootstrap(source, what) and None)
    if blob is not None:
        if blob.ci_compressed_size or blob.ci_uncompressed_size:
            run("blob meta", lambda: meta.load_blob_meta(blob, source) and None)
        if blob.toc_size:
            run("toc", read_toc)
        for entry in found:
            # the chunk data is no unit to extract (and pre-2.2 builders recorded its sizes wrongly)
            if entry.name != layout.TOC_ENTRY_BLOB_RAW:
                run(f"toc entry {entry.name!r}", lambda entry=entry: toc.extract_entry(source, entry) and None)
                outcome.entries += 1
    outcome.seconds = time.monotonic() - started
    return outcome


def check_mutant(description: str, source, *, seconds: float | None = 10.0, max_memory: int | None = None,
                 memory: str = "tracemalloc", verdict: bool = False, **kwargs) -> str:
    """:func:`exercise` a (mutated) image within ``seconds`` and ``max_memory`` bytes of heap peak.

    Returns :attr:`Outcome.summary` (``"ok"`` or the first rafs error class name), or with ``verdict``
    :attr:`Outcome.verdict` (also ``"problems"`` when ``check`` found faults); ``memory`` is how the
    peak is measured (see :func:`memory_limit`); raises
    :class:`EscapedError`, :class:`OutOfTimeError` or :class:`OutOfMemoryError` naming
    ``description`` otherwise.
    """
    with time_limit(seconds, description), memory_limit(max_memory, description, method=memory):
        outcome = exercise(source, what=description, **kwargs)
    return outcome.verdict if verdict else outcome.summary


def check_blob_mutant(description: str, source, blob=None, *, seconds: float | None = 10.0,
                      max_memory: int | None = None, memory: str = "tracemalloc") -> str:
    """:func:`exercise_blob` under the same bounds as :func:`check_mutant`."""
    with time_limit(seconds, description), memory_limit(max_memory, description, method=memory):
        outcome = exercise_blob(source, blob, what=description)
    for result in outcome.steps.values():
        if result not in ("ok", "problems"):
            return result
    return "problems" if "problems" in outcome.steps.values() else "ok"
