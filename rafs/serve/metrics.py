"""Per-file counters as nydusd's ``/api/v1/metrics/files`` serves them (utils/src/metrics.rs ``InodeIoStats``).

nydusd keeps them when its configuration's ``iostats_files`` is on (``--iostats-files``): a JSON object
keyed by inode number (as text), each value::

    {"total_fops": N, "data_read": BYTES, "block_count_read": [8 size buckets],
     "fop_hits": [15, by StatsFop], "fop_errors": [15]}

rafs counts the reads a mount answers (``fop_hits`` at ``Read``, which is all of ``total_fops``); nydusd
also counts lookups, getattrs and the other operations of a file there, and lists a file from its first
lookup, where rafs lists it from its first read.
"""

from __future__ import annotations

from .trace import FOP_READ, FOPS


def file_records(counters: dict, to_fuse) -> dict[str, dict]:
    """nydusd's per-file records of ``counters`` (:meth:`rafs.serve.trace.MountObserver.file_counters`),
    keyed by the inode number the mount shows (``to_fuse`` maps an image inode to it)."""
    records = {}
    for ino, (reads, size, buckets) in counters.items():
        hits = [0] * len(FOPS)
        hits[FOP_READ] = reads
        records[str(to_fuse(ino))] = {"total_fops": reads, "data_read": size, "block_count_read": list(buckets),
                                      "fop_hits": hits, "fop_errors": [0] * len(FOPS)}
    return records
