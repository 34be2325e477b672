"""nydusd's size and latency buckets (utils/src/metrics.rs), and the backend read counters built on them.

Every distribution nydusd's metrics API serves has eight buckets:

- request sizes (``request_size_index``): <1K, 1K~, 4K~, 16K~, 64K~, 128K~, 512K~, 1M~;
- backend latencies in milliseconds (``latency_millis_range_index``): <=1, <=20, <=50, <=100, <=500,
  <=1000, <=2000, more;
- filesystem operation latencies in microseconds (``latency_micros_range_index``): <=200, <=1000,
  <=20000, <=50000, <=500000, <=1000000, <=2000000, more.

:class:`BackendLatency` is nydusd's ``BackendMetrics``: one call of :meth:`BackendLatency.record` per
request a fetcher sends to a blob's backend, as ``BackendMetrics::end`` is called once per backend read.
"""

from __future__ import annotations

import bisect
import threading

BUCKETS = 8
_SIZE_START = (0, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 128 << 10, 512 << 10, 1 << 20)
# the size bucket by a size's bit length (a table, so counting a read costs one look-up)
SIZE_BUCKET_BY_BITS = tuple(sum(1 for start in _SIZE_START[1:] if (1 << bits) >> 1 >= start) for bits in range(22))
_MILLIS_BOUNDS = (1, 20, 50, 100, 500, 1000, 2000)
_MICROS_BOUNDS = (200, 1_000, 20_000, 50_000, 500_000, 1_000_000, 2_000_000)


def size_bucket(size: int) -> int:
    """nydusd's ``request_size_index``: which of the eight size buckets a read of ``size`` bytes is in."""
    return SIZE_BUCKET_BY_BITS[min(size.bit_length(), 21)]


def millis_bucket(elapsed_ms: int) -> int:
    """nydusd's ``latency_millis_range_index`` (upper bounds inclusive)."""
    return bisect.bisect_left(_MILLIS_BOUNDS, elapsed_ms)


def micros_bucket(elapsed_us: int) -> int:
    """nydusd's ``latency_micros_range_index`` (upper bounds inclusive)."""
    return bisect.bisect_left(_MICROS_BOUNDS, elapsed_us)


class BackendLatency:
    """Backend reads: how many, failures, bytes, and their latency by size (nydusd's ``BackendMetrics``).

    Milliseconds are whole ones, as nydusd's ``saturating_duration_millis`` counts them.
    """

    __slots__ = ("read_count", "read_errors", "read_amount_total", "read_cumulative_latency_millis_total",
                 "read_cumulative_latency_millis_dist", "read_count_block_size_dist", "read_latency_sizes_dist",
                 "_lock")

    def __init__(self):
        self.read_count = self.read_errors = self.read_amount_total = 0
        self.read_cumulative_latency_millis_total = 0
        self.read_cumulative_latency_millis_dist = [0] * BUCKETS
        self.read_count_block_size_dist = [0] * BUCKETS
        self.read_latency_sizes_dist = [[0] * BUCKETS for _ in range(BUCKETS)]
        self._lock = threading.Lock()

    def record(self, size: int, seconds: float, *, error: bool = False) -> None:
        """One backend read of ``size`` bytes that took ``seconds`` (failed when ``error``)."""
        elapsed = int(seconds * 1000)
        by_size = size_bucket(size)
        with self._lock:
            self.read_count += 1
            if error:
                self.read_errors += 1
            self.read_amount_total += size
            self.read_cumulative_latency_millis_total += elapsed
            self.read_cumulative_latency_millis_dist[by_size] += elapsed
            self.read_count_block_size_dist[by_size] += 1
            self.read_latency_sizes_dist[by_size][millis_bucket(elapsed)] += 1

    def fields(self) -> dict:
        """The counters under nydusd's field names (``backend_type`` is the caller's)."""
        with self._lock:
            return {"read_count": self.read_count, "read_errors": self.read_errors,
                    "read_amount_total": self.read_amount_total,
                    "read_cumulative_latency_millis_total": self.read_cumulative_latency_millis_total,
                    "read_cumulative_latency_millis_dist": list(self.read_cumulative_latency_millis_dist),
                    "read_count_block_size_dist": list(self.read_count_block_size_dist),
                    "read_latency_sizes_dist": [list(row) for row in self.read_latency_sizes_dist]}


def sum_fields(many) -> dict:
    """:meth:`BackendLatency.fields` of several backends (a mount's blobs) added up."""
    total = BackendLatency().fields()
    for fields in many:
        for name, value in fields.items():
            if name == "read_latency_sizes_dist":
                total[name] = [[a + b for a, b in zip(x, y)] for x, y in zip(total[name], value)]
            elif isinstance(value, list):
                total[name] = [a + b for a, b in zip(total[name], value)]
            else:
                total[name] += value
    return total
