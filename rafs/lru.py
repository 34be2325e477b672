"""The one bounded cache of rafs: a thread-safe mapping that forgets its least recently used entries.

Every in-memory cache of decoded data (an image's chunks, a blob's decompressed batches, compressed
EROFS extents, a FUSE mount's listings and open files) is an :class:`LRU` with an explicit bound, so
what each one holds and how much is said where it is made. ``max_bytes`` bounds the summed ``len()``
of the values as well; the newest entry is kept even when it alone is larger.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

V = TypeVar("V")

_MISSING = object()


class LRU(Generic[V]):
    """At most ``max_items`` entries (and, with ``max_bytes``, at most that many bytes of values)."""

    __slots__ = ("max_items", "max_bytes", "_entries", "_bytes", "_lock")

    def __init__(self, max_items: int | None = None, *, max_bytes: int | None = None):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, default=None) -> V | None:
        """The value of ``key``, now the most recently used; ``default`` when absent."""
        with self._lock:
            value = self._entries.get(key, _MISSING)
            if value is _MISSING:
                return default
            self._entries.move_to_end(key)
            return value

    def peek(self, key: Hashable, default=None) -> V | None:
        """The value of ``key`` without making it recent (for a reader that must not reorder)."""
        return self._entries.get(key, default)

    def put(self, key: Hashable, value: V) -> None:
        """Keep ``value`` under ``key`` as the most recent entry, forgetting the oldest beyond the bounds."""
        with self._lock:
            entries = self._entries
            old = entries.pop(key, _MISSING)
            if old is not _MISSING and self.max_bytes is not None:
                self._bytes -= len(old)
            entries[key] = value
            if self.max_bytes is not None:
                self._bytes += len(value)
                while len(entries) > 1 and self._bytes > self.max_bytes:
                    self._bytes -= len(entries.popitem(last=False)[1])
            if self.max_items is not None:
                while len(entries) > self.max_items:
                    dropped = entries.popitem(last=False)[1]
                    if self.max_bytes is not None:
                        self._bytes -= len(dropped)

    def items(self) -> list[tuple[Hashable, V]]:
        """A snapshot of the (key, value) pairs, oldest first, none made recent."""
        with self._lock:
            return list(self._entries.items())

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
