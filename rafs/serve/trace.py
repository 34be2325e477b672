"""What a mount did: read counters for nydusd's metrics API and the access trace (nydusd's ``access_pattern``).

:class:`MountObserver` is what ``rafs mount`` hands to the FUSE adapter when the user asks to observe the
mount (``--apisock`` or ``--access-pattern-file``); without it the adapter pays one ``is None`` check
per read. The adapter calls :meth:`MountObserver.read` once per answered read, from its loop thread for
data at hand and from a fetch worker for data a backend delivered. Each side counts into its own
:class:`ReadCounters`, so the loop thread never waits on a lock; the workers, already waiting on the
network, share theirs under one.

The trace keeps, per inode, the wall time of its first read and how many reads it got (nydusd's
``AccessPattern``: ``ino``, ``nr_read``, ``first_access_time_secs``, ``first_access_time_nanos``,
utils/src/metrics.rs), in first-read order. :func:`write_pattern_file` turns it into nydus-image's
prefetch pattern format (absolute paths, one a line, in that order), which ``rafs create
--prefetch-patterns`` and ``nydus-image create --prefetch-policy fs`` read back; a name ending in
``.json`` gets the records themselves, each with its ``path``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from .. import tempfiles
from ..io.latency import BUCKETS, SIZE_BUCKET_BY_BITS, micros_bucket, size_bucket  # noqa: F401
from ..patterns import read_pattern_file  # noqa: F401 - its home before rafs.patterns

log = logging.getLogger(__name__)

# nydusd's StatsFop, in its order: the index of each operation in fop_hits / fop_errors
FOPS = ("Getattr", "Readlink", "Open", "Release", "Read", "Statfs", "Getxattr", "Listxattr", "Opendir", "Lookup",
        "Readdir", "Readdirplus", "Access", "Forget", "BatchForget")
FOP_READ = FOPS.index("Read")
# read sizes by bucket, as nydusd's block_count_read (rafs.io.latency holds nydusd's buckets)
BLOCK_BUCKETS = BUCKETS
_BUCKET_BY_BITS = SIZE_BUCKET_BY_BITS


class ReadCounters:
    """Reads answered, bytes, size buckets, failures, read latencies; per inode the first read and the
    number of reads, and with per-file accounting each file's reads, bytes and size buckets."""

    __slots__ = ("reads", "data_read", "errors", "buckets", "first", "per_inode", "latency_us", "latency_dist",
                 "files")

    def __init__(self):
        self.reads = 0
        self.data_read = 0
        self.errors = 0
        self.buckets = [0] * BLOCK_BUCKETS
        self.first: dict[int, int] = {}        # inode -> wall time (ns) of its first read, in read order
        self.per_inode: dict[int, int] = {}    # inode -> reads
        self.latency_us = 0                    # microseconds spent answering reads, all added up
        self.latency_dist = [0] * BLOCK_BUCKETS
        self.files: dict[int, list] = {}       # inode -> [reads, bytes, size buckets] (iostats_files)

    def count(self, ino: int, size: int, trace: bool, files: bool = False, elapsed_ns: int | None = None) -> None:
        self.reads += 1
        self.data_read += size
        bucket = _BUCKET_BY_BITS[min(size.bit_length(), 21)]
        self.buckets[bucket] += 1
        if elapsed_ns is not None:
            elapsed_us = elapsed_ns // 1000
            self.latency_us += elapsed_us
            self.latency_dist[micros_bucket(elapsed_us)] += 1
        if trace:
            seen = self.per_inode.get(ino)
            if seen is None:
                self.first[ino] = time.time_ns()
                self.per_inode[ino] = 1
            else:
                self.per_inode[ino] = seen + 1
        if files:
            counters = self.files.get(ino)
            if counters is None:
                counters = self.files[ino] = [0, 0, [0] * BLOCK_BUCKETS]
            counters[0] += 1
            counters[1] += size
            counters[2][bucket] += 1


class MountObserver:
    """Counters and the access trace of one mount, and the in-flight backend reads.

    ``trace``: keep the per-inode access trace (the config's ``access_pattern``, or a pattern file asked
    for); ``files``: keep per-file read counters (nydusd's ``iostats_files``); without them only the
    totals and the latencies are counted.
    """

    def __init__(self, *, trace: bool = True, files: bool = False):
        self.trace = trace
        self.files = files
        self.started = time.time()
        self._local = ReadCounters()           # the FUSE loop thread's, lock-free
        self._remote = ReadCounters()          # the fetch workers', under _lock
        self._lock = threading.Lock()
        self._inflight: dict[int, tuple[int, int]] = {}    # token -> (inode, start time s)
        self._tokens = iter(range(1, 1 << 62))

    # -- the adapter's calls ---------------------------------------------------------------------

    def read(self, ino: int, size: int, *, remote: bool = False, started: int | None = None) -> None:
        """One read of ``size`` bytes of inode ``ino`` answered; ``started`` is when the request arrived
        (``time.monotonic_ns()``), for the read latency."""
        elapsed = time.monotonic_ns() - started if started is not None else None
        if remote:
            with self._lock:
                self._remote.count(ino, size, self.trace, self.files, elapsed)
        else:
            self._local.count(ino, size, self.trace, self.files, elapsed)

    def failed(self) -> None:
        """One read failed (rare: counted under the lock from either side)."""
        with self._lock:
            self._remote.errors += 1

    def begin_remote(self, ino: int) -> int:
        """A read now waits on the backend; returns a token for :meth:`end_remote`."""
        with self._lock:
            token = next(self._tokens)
            self._inflight[token] = (ino, int(time.time()))
        return token

    def end_remote(self, token: int) -> None:
        with self._lock:
            self._inflight.pop(token, None)

    # -- what was seen ---------------------------------------------------------------------------

    def totals(self) -> dict:
        """reads, data_read, errors, the size buckets, read latency (µs) and its buckets over both sides."""
        with self._lock:
            sides = (self._local, self._remote)
            return {"reads": sum(s.reads for s in sides), "data_read": sum(s.data_read for s in sides),
                    "errors": sum(s.errors for s in sides),
                    "buckets": [a + b for a, b in zip(self._local.buckets, self._remote.buckets)],
                    "latency_us": sum(s.latency_us for s in sides),
                    "latency_dist": [a + b for a, b in zip(self._local.latency_dist, self._remote.latency_dist)]}

    def file_counters(self) -> dict[int, tuple[int, int, list[int]]]:
        """{inode: (reads, bytes read, reads by size bucket)} of every file read (with ``files`` only)."""
        with self._lock:
            sides = [dict(self._local.files), dict(self._remote.files)]
            merged: dict[int, tuple[int, int, list[int]]] = {}
            for side in sides:
                for ino, (reads, size, buckets) in side.items():
                    had = merged.get(ino, (0, 0, [0] * BLOCK_BUCKETS))
                    merged[ino] = (had[0] + reads, had[1] + size, [a + b for a, b in zip(had[2], buckets)])
        return merged

    def inflight(self) -> list[tuple[int, int, int]]:
        """(token, inode, start second) of each read waiting on the backend."""
        with self._lock:
            return [(token, ino, since) for token, (ino, since) in self._inflight.items()]

    def accesses(self) -> list[tuple[int, int, int]]:
        """(inode, first read wall time in ns, reads) of every inode read, in first-read order."""
        with self._lock:
            local_first, remote_first = dict(self._local.first), dict(self._remote.first)
            local_n, remote_n = dict(self._local.per_inode), dict(self._remote.per_inode)
        first = dict(local_first)
        for ino, when in remote_first.items():
            if ino not in first or when < first[ino]:
                first[ino] = when
        return [(ino, when, local_n.get(ino, 0) + remote_n.get(ino, 0))
                for ino, when in sorted(first.items(), key=lambda item: item[1])]


def pattern_records(accesses, fuse_ino, path_of) -> list[dict]:
    """nydusd's ``/api/v1/metrics/pattern`` records (with each file's ``path`` besides) for
    :meth:`MountObserver.accesses`; ``fuse_ino`` maps an image inode to the number the mount shows,
    ``path_of`` gives its path (or None)."""
    records = []
    for ino, when, reads in accesses:
        secs, nanos = divmod(when, 1_000_000_000)
        records.append({"ino": fuse_ino(ino), "nr_read": reads, "first_access_time_secs": secs,
                        "first_access_time_nanos": nanos, "path": path_of(ino)})
    return records


def pattern_lines(records) -> list[bytes]:
    """The prefetch pattern lines of ``records``: each path once, in order. A path holding a newline
    cannot be written in the one-path-a-line format and is left out with a warning."""
    lines, seen = [], set()
    for record in records:
        path = record.get("path")
        if path is None or path in seen:
            continue
        seen.add(path)
        raw = os.fsencode(path)
        if b"\n" in raw or b"\r" in raw:
            log.warning("access trace: %r holds a line break, which a prefetch pattern file cannot hold: left out",
                        path)
            continue
        lines.append(raw)
    return lines


def write_pattern_file(path, records) -> None:
    """Write the trace atomically: JSON records when ``path`` ends in ``.json``, else pattern lines."""
    path = os.fspath(path)
    if path.endswith(".json"):
        data = json.dumps(records, indent=1).encode() + b"\n"
    else:
        data = b"".join(line + b"\n" for line in pattern_lines(records))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfiles.mkstemp(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tempfiles.remove(tmp)
        raise


def paths_of(image, inos) -> dict[int, str]:
    """{inode: its absolute path} for the image inodes ``inos`` (a hardlinked file: its first path in
    directory order), found by walking the tree breadth first until all are named."""
    wanted = set(inos)
    found: dict[int, str] = {}
    root = image.root_ino
    if root in wanted:
        found[root] = "/"
    queue = [(root, b"")]
    seen = {root}
    while queue and len(found) < len(wanted):
        next_queue = []
        for dir_ino, prefix in queue:
            for name, child in image.dir_entries(dir_ino):
                path = prefix + b"/" + name
                if child in wanted and child not in found:
                    found[child] = os.fsdecode(path)
                if child not in seen and image.get_inode(child).is_dir:
                    seen.add(child)
                    next_queue.append((child, path))
        queue = next_queue
    return found
