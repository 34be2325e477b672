"""Placement of RAFS v6 metadata: where each inode, its inline tail and its full data blocks go.

This reproduces the reference builder's allocator byte for byte (builder/src/core/context.rs
``BootstrapContext::{allocate_available_block, append_available_block, align_offset}`` and
builder/src/core/v6.rs ``Node::{v6_set_offset, v6_set_dir_offset, v6_set_offset_with_tail}``), so that
a tree placed here gets the same nids as with ``nydus-image``:

* a cursor starts at 4096 (the first metadata block is left free so the root nid is never 0);
* objects are placed in the build's index order, and after each one the cursor is aligned to 32 bytes
  (an EROFS inode slot);
* the free tail of a block the cursor leaves behind is remembered in one of 128 queues indexed by the
  number of free 32-byte slots; a later object smaller than a block takes the first remembered block,
  searching upward from the smallest that can hold it, and the rest of that block is queued again.

Offsets here are relative to the start of the bootstrap *before* the final shift (see
:func:`rafs.v6.writer.write_bootstrap`); the caller adds the same amount to every offset.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from . import layout

SLOT_SIZE = layout.EROFS_INODE_SLOT_SIZE     # nids count these 32-byte slots
# The reference sizes its free-block queues for 4 KiB blocks whatever the block size
# (``EROFS_BLOCK_SIZE_4096 / EROFS_INODE_SLOT_SIZE``); with 512-byte (tarfs) blocks only the first
# 16 queues are used.
QUEUE_COUNT = 4096 // SLOT_SIZE
# Where the cursor starts: one block after offset 0 (``BootstrapContext::new``).
FIRST_OFFSET = 4096
# A chunk-based inode's index array starts at the inode end (with xattrs) rounded up to one entry.
CHUNK_ADDR_SIZE = layout.EROFS_CHUNK_INDEX_SIZE
FLAT_PLAIN = layout.EROFS_INODE_FLAT_PLAIN
FLAT_INLINE = layout.EROFS_INODE_FLAT_INLINE
CHUNK_BASED = layout.EROFS_INODE_CHUNK_BASED


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


@dataclass(slots=True)
class Placement:
    """Where one object went.

    ``offset`` is the inode's offset; ``data_offset`` (directories and symlinks only) is where the
    first full data block goes, or for a purely inline object just the cursor at that moment (the
    reference stores its block number in ``i_u`` even though nothing reads it).
    """

    offset: int
    layout: int
    data_offset: int = 0


class MetaAllocator:
    """The cursor and the free-fragment queues of one bootstrap's metadata area."""

    def __init__(self, block_size: int = 4096):
        if block_size not in (512, 4096):
            raise ValueError(f"EROFS block size {block_size} is neither 512 nor 4096")
        self.block_size = block_size
        self.cursor = FIRST_OFFSET
        self._free: list[collections.deque[int]] = [collections.deque() for _ in range(QUEUE_COUNT)]
        self._nonempty = 0                  # bit n set <=> queue n holds a block
        self._limit = -(-block_size // SLOT_SIZE)   # queues at or above this are never searched

    # -- the reference's primitives --------------------------------------------------------------

    def align(self, unit: int) -> None:
        """Move the cursor up to a multiple of ``unit`` (``align_offset``)."""
        self.cursor = round_up(self.cursor, unit)

    def release_tail(self, offset: int) -> None:
        """Remember the free rest of the block holding ``offset`` (``append_available_block``).

        The slot count is rounded down, so an unaligned ``offset`` never hands out a used byte.
        """
        bs = self.block_size
        rest = offset % bs
        if rest:
            slots = (bs - rest) // SLOT_SIZE
            self._free[slots].append(offset - rest)
            self._nonempty |= 1 << slots

    def take_fragment(self, size: int) -> int:
        """Offset of ``size`` bytes inside a remembered block, or 0 when none fits
        (``allocate_available_block``). Only objects smaller than a block are placed this way."""
        bs = self.block_size
        if size >= bs:
            return 0
        need = -(-size // SLOT_SIZE)
        candidates = self._nonempty >> need
        if not candidates:
            return 0
        slots = need + (candidates & -candidates).bit_length() - 1     # the first non-empty queue
        if slots >= self._limit:
            return 0
        queue = self._free[slots]
        offset = queue.popleft() + bs - slots * SLOT_SIZE
        if not queue:
            self._nonempty &= ~(1 << slots)
        self.release_tail(offset + need * SLOT_SIZE)
        return offset

    def _append(self, size: int) -> int:
        offset = self.cursor
        self.cursor += size
        return offset

    # -- objects ---------------------------------------------------------------------------------

    def place_file(self, inode_size: int, chunk_entries: int) -> Placement:
        """A chunk-based regular file: inode (+ xattrs), then its chunk index array. (Hardlinks take
        the first link's place and no space of their own: the writer only aligns the cursor.)"""
        return Placement(self.file_offset(inode_size, chunk_entries), CHUNK_BASED)

    def file_offset(self, inode_size: int, chunk_entries: int) -> int:
        """Where :meth:`place_file` puts a file of its own, as a bare offset: the writer calls this once
        per regular file and keeps the offset, so no :class:`Placement` is made for each."""
        # round_up and align inlined (every regular file comes here); the units are powers of two
        total = ((inode_size + CHUNK_ADDR_SIZE - 1) & -CHUNK_ADDR_SIZE) + chunk_entries * CHUNK_ADDR_SIZE
        offset = 0
        if self._nonempty >> -(-total // SLOT_SIZE):        # a remembered block may fit it
            offset = self.take_fragment(total)
        if not offset:
            offset = self.cursor
            self.cursor += total
        self.cursor = (self.cursor + SLOT_SIZE - 1) & -SLOT_SIZE
        return offset

    def place_special(self, inode_size: int) -> Placement:
        """A device, fifo or socket: the inode (+ xattrs) at the cursor, never in a fragment."""
        offset = self._append(inode_size)
        self.align(SLOT_SIZE)
        return Placement(offset, FLAT_PLAIN)

    def place_with_tail(self, inode_size: int, data_size: int) -> Placement:
        """A directory (``data_size`` = dirent bytes) or symlink (target length).

        The tail (``data_size % block_size``) is inlined after the inode when inode + tail fit in
        one block; full blocks always start block-aligned at the cursor.
        """
        bs = self.block_size
        tail = data_size % bs
        if tail and inode_size + tail <= bs:
            offset = self.take_fragment(inode_size + tail)
            if not offset:
                if bs - self.cursor % bs < inode_size + tail:
                    self.release_tail(self.cursor)
                    self.align(bs)
                offset = self._append(inode_size + tail)
            if data_size != tail:
                self.release_tail(self.cursor)
                self.align(bs)
            placement = Placement(offset, FLAT_INLINE, self.cursor)
            self.cursor += data_size - tail
        else:
            offset = self.take_fragment(inode_size) or self._append(inode_size)
            self.release_tail(self.cursor)
            self.align(bs)
            placement = Placement(offset, FLAT_PLAIN, self.cursor)
            self.cursor += data_size
            self.align(bs)
        self.align(SLOT_SIZE)
        return placement
