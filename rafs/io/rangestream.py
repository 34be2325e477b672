"""A seekable stream over a range of a range reader (anything with ``read_range(offset, size)``), read
on demand: how a tar member's data, an OCI layout's blob or a registry layer is handed out as a file
object. It does no I/O of its own, so every package may build on it."""

from __future__ import annotations

import io


class RangeStream(io.RawIOBase):
    """A seekable stream of ``size`` bytes at ``offset`` of a RangeReader, read on demand (one per
    ``node.data()``); with ``close_reader`` closing the stream closes the reader too."""

    def __init__(self, reader, offset: int, size: int, *, close_reader: bool = False):
        self._reader, self._offset, self._size, self._pos = reader, offset, size, 0
        self._close_reader = close_reader

    def close(self) -> None:
        if not self.closed and self._close_reader:
            self._reader.close()
        super().close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._size - self._pos)
        if count <= 0:
            return 0
        buffer[:count] = self._reader.read_range(self._offset + self._pos, count)
        self._pos += count
        return count
