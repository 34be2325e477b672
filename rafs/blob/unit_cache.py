"""A small thread-safe LRU of decoded units (batches, ZRAN contexts) bounded by their total bytes.

The latest unit is always kept, however large: a reader cutting several chunks out of one unit must
not decode it once per chunk.
"""

from __future__ import annotations

import collections
import threading


class UnitCache:
    def __init__(self, budget: int):
        self.budget = budget
        self._lock = threading.Lock()
        self._units: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._bytes = 0

    def __bool__(self) -> bool:
        return bool(self._units)

    def get(self, key: int) -> bytes | None:
        with self._lock:
            data = self._units.get(key)
            if data is not None:
                self._units.move_to_end(key)
            return data

    def put(self, key: int, data: bytes) -> None:
        with self._lock:
            old = self._units.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._units[key] = data
            self._bytes += len(data)
            while len(self._units) > 1 and self._bytes > self.budget:
                self._bytes -= len(self._units.popitem(last=False)[1])
