"""Pushing small files into the kernel's page cache before they are asked for (FUSE notify store).

A cold read of a tree through FUSE costs one request per small file, and each request costs the
daemon far more than the bytes it carries (about 80 us of Python against a few for the copy). Readers
of a tree mostly read a directory's files one after another, and a RAFS builder lays a directory's
files out next to each other in the blob. So when the first small file of a listed directory is read,
:class:`SiblingPusher` reads the directory's other small files in one go (adjacent chunks merge into
few ranged reads, decompressed off the request thread by the FUSE workers) and stores each one in the
kernel's page cache with ``fuse_lowlevel_notify_store``; the reader then finds them there and the
daemon hears nothing more of them.

Limits: only files of at most :data:`PUSH_FILE_MAX` bytes held by one chunk, at most
:data:`PUSH_DIR_BYTES` per directory, each directory once per mount, and only data that needs no
remote backend (in memory, in the blob cache or in a local blob): a lazily loaded image fetches
nothing it was not asked for. Mounts that trace reads (``--access-pattern-file``) push nothing, since
pushed files are then read without the daemon seeing it.
"""

from __future__ import annotations

import ctypes
import logging
import threading

from .. import _libfuse as ll

log = logging.getLogger(__name__)

PUSH_FILE_MAX = 128 << 10     # larger files are read with the kernel's 1 MiB read-ahead anyway
PUSH_DIR_BYTES = 8 << 20      # per directory: a bound on page cache filled ahead of readers
PUSH_BATCH_BYTES = 1 << 20    # read together (one merged range when the files are adjacent)
PUSH_FIRST_BYTES = 64 << 10   # the first batch of a directory
MAX_REMEMBERED = 1 << 20      # files whose directory is remembered (then started afresh)


class SiblingPusher:
    """Pushes the small files of a directory into the page cache when one of them is first read.

    ``listed`` is called by the request loop for each directory listing it serves, ``after_read`` after
    a read answered from local data; the pushing itself runs on ``pool`` (the FUSE workers).
    """

    def __init__(self, image, lib, session, to_fuse, pool):
        self.image = image
        self.lib = lib
        self.session = session
        self.to_fuse = to_fuse
        self.pool = pool
        self._parent_of: dict[int, int] = {}
        self._entries: dict[int, list] = {}
        self._done: set[int] = set()
        self._closed = threading.Event()
        self.pushed = 0                    # files stored in the page cache so far

    def listed(self, dir_ino: int, entries: list) -> None:
        """A listing of ``dir_ino`` was served: its files may be read next."""
        if dir_ino in self._done or dir_ino in self._entries:
            return
        if len(self._parent_of) > MAX_REMEMBERED:
            self._parent_of.clear()
            self._entries.clear()
        self._entries[dir_ino] = entries
        self._parent_of.update(dict.fromkeys((child for _, child in entries), dir_ino))

    def after_read(self, ino: int, size: int, nbytes: int) -> None:
        """A read of ``nbytes`` at offset 0 of image inode ``ino`` (``size`` bytes long) was answered.

        The first batch of siblings is read and decoded here, on the thread that answered (the reader
        comes back for the next file at once, and the worker that stores it in the page cache must
        be there first); storing it, and the rest of the directory, goes to a worker."""
        if nbytes != size or size > PUSH_FILE_MAX:
            return
        dir_ino = self._parent_of.get(ino)
        if dir_ino is None or dir_ino in self._done:
            return
        self._done.add(dir_ino)
        entries = self._entries.pop(dir_ino, None)
        if not entries or self._closed.is_set():
            return
        try:
            batches = self._plan(entries, ino)
            if batches:
                first = self._decode(batches[0])
                if first is not None:
                    self.pool.submit(self._deliver, batches[0], first, batches[1:])
        except Exception as exc:  # noqa: BLE001 - a push is only ever a head start: readers ask anyway
            log.debug("pushing files into the page cache failed: %r", exc, exc_info=True)

    def close(self) -> None:
        """Push nothing more (the session is about to go)."""
        self._closed.set()

    def _plan(self, entries: list, skip: int) -> list[list]:
        """Batches of (ino, size, chunk) of the small files to push, in listing order from the file
        read on (a reader goes through a directory in that order), the first batch small."""
        at = next((i for i, (_, child) in enumerate(entries) if child == skip), 0)
        batches, batch, batch_bytes, total, limit = [], [], 0, 0, PUSH_FIRST_BYTES
        for _, child in entries[at + 1:] + entries[:at]:
            if total >= PUSH_DIR_BYTES:
                break
            found = self._candidate(child, skip)
            if found is None:
                continue
            batch.append(found)
            batch_bytes += found[1]
            total += found[1]
            if batch_bytes >= limit:
                batches.append(batch)
                batch, batch_bytes, limit = [], 0, PUSH_BATCH_BYTES
        if batch:
            batches.append(batch)
        return batches

    def _deliver(self, batch: list, datas: list, rest: list) -> None:
        try:
            self._notify(batch, datas)
            for batch in rest:
                if self._closed.is_set():
                    return
                datas = self._decode(batch)
                if datas is None:
                    return
                self._notify(batch, datas)
        except Exception as exc:  # noqa: BLE001
            log.debug("pushing files into the page cache stopped: %r", exc, exc_info=True)

    def _candidate(self, ino: int, skip: int):
        """(ino, size, chunk) of a small regular file held by one chunk, else None."""
        if ino == skip:
            return None
        inode = self.image.get_inode(ino)
        if not inode.is_reg or not 0 < inode.size <= PUSH_FILE_MAX:
            return None
        chunks = self.image.open_inode(ino).chunks
        if len(chunks) != 1 or chunks[0].file_offset != 0 or chunks[0].uncompressed_size < inode.size:
            return None
        return ino, inode.size, chunks[0]

    def _decode(self, batch: list) -> list | None:
        """The data of each file of ``batch``; None when some would come from a remote backend (not
        worth a fetch nobody asked for)."""
        return self.image.read_chunks([chunk for _, _, chunk in batch], local_only=True)

    def _notify(self, batch: list, datas: list) -> None:
        store = self.lib.fuse_lowlevel_notify_store
        for (ino, size, _), data in zip(batch, datas):
            if self._closed.is_set():
                return
            data = bytes(data[:size])
            address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
            vector = ll.bufvec(1, 0, 0, (ll.buf * 1)(ll.buf(size, 0, address, -1, 0)))
            # 0, or -ENOENT when the kernel has forgotten the inode meanwhile: either way, fine
            if store(self.session, self.to_fuse(ino), 0, ctypes.byref(vector), 0) == 0:
                self.pushed += 1
