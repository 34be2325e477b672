"""dm-verity hash trees (sha256, 4 KiB data and hash blocks, empty salt, format 1), as nydus-image
``export --block --verity`` appends them to a disk image (utils/src/verity.rs in the reference).

The tree's geometry is dm-verity's: level 1 holds one sha256 per data block, 128 digests to a 4 KiB
page; each level above holds the digests of the pages below, until one page is left; that page's
sha256 is the root digest. Levels are stored top first (the single top page, then level n-1, ...,
then the leaf level), which is where the kernel's dm-verity and ``veritysetup`` look for them with
``--no-superblock --format=1 -s "" --hash-offset <where the tree starts>``. With one data block there
is no tree: the root is that block's digest.

The one freedom is what fills the unused digest slots at the end of each level's last page:
nydus-image fills them with the sha256 of a zero page (``SPARE_NYDUS``, the default, so the output is
byte-identical to the reference's), ``veritysetup format`` with zero bytes (``SPARE_ZERO``).
The kernel never looks at those slots, so both trees verify there; ``veritysetup verify`` also insists
that they are zero ("Spare area is not zeroed") and so only accepts ``SPARE_ZERO`` trees.

:class:`VerityWriter` builds the tree while the data streams past, writing each finished page into the
output file at once, so memory stays at a few pages whatever the disk's size.
"""

from __future__ import annotations

import hashlib
import os

from .errors import InvalidArgumentError
from .options import VERITY_SPARES

BLOCK_SIZE = 4096
DIGEST_SIZE = 32
DIGESTS_PER_PAGE = BLOCK_SIZE // DIGEST_SIZE
ZERO_BLOCK_DIGEST = hashlib.sha256(bytes(BLOCK_SIZE)).digest()
SPARE_NYDUS, SPARE_ZERO = VERITY_SPARES
SPARE_FILLS = {SPARE_NYDUS: ZERO_BLOCK_DIGEST, SPARE_ZERO: bytes(DIGEST_SIZE)}


def _pages_for(entries: int) -> int:
    return -(-entries // DIGESTS_PER_PAGE)


def level_pages(data_blocks: int) -> list[int]:
    """Pages of each tree level, leaf level first (empty when there is at most one data block)."""
    pages, count = [], data_blocks
    while count > 1:
        count = _pages_for(count)
        pages.append(count)
    return pages


def tree_size(data_blocks: int) -> int:
    """Bytes of the hash tree of ``data_blocks`` 4 KiB blocks."""
    return sum(level_pages(data_blocks)) * BLOCK_SIZE


def veritysetup_options(data_blocks: int, hash_offset: int, root_digest: bytes) -> str:
    """The ``veritysetup`` options (and root digest) that open or verify such a tree, in the words
    nydus-image prints them after an export."""
    return (f'--no-superblock --format=1 -s "" --hash=sha256 --data-block-size={BLOCK_SIZE} '
            f"--hash-block-size={BLOCK_SIZE} --data-blocks {data_blocks} --hash-offset {hash_offset} "
            f"{root_digest.hex()}")


class VerityWriter:
    """Builds the hash tree of ``data_blocks`` blocks fed in order, into ``fd`` at ``offset``.

    Feed the data with :meth:`update` (any lengths) and runs of zero bytes with :meth:`zeros` (their
    digests are known, nothing is read or hashed), then call :meth:`finish` for the root digest. The
    file must be open for reading and writing: upper levels are computed from the pages written below.
    """

    def __init__(self, fd: int, offset: int, data_blocks: int, *, spare: str = SPARE_NYDUS):
        if spare not in SPARE_FILLS:
            raise InvalidArgumentError(f"verity spare fill must be one of {', '.join(SPARE_FILLS)}, not {spare!r}")
        if data_blocks < 1:
            raise InvalidArgumentError("a verity tree needs at least one data block")
        self.fd, self.offset, self.data_blocks = fd, offset, data_blocks
        self.fill = SPARE_FILLS[spare]
        self.pages = level_pages(data_blocks)
        # byte offset of each level inside the tree, leaf level first; the top level comes first on disk
        self.bases, at = [0] * len(self.pages), 0
        for level in reversed(range(len(self.pages))):
            self.bases[level] = at
            at += self.pages[level] * BLOCK_SIZE
        self.size = at
        self._partial = bytearray()       # data of the block being fed
        self._leaf = bytearray()          # digests of the leaf page being filled
        self._leaf_page = 0
        self._blocks = 0
        self._single = None               # the root when the disk is a single block

    def update(self, data) -> None:
        """Feed the next bytes of the data."""
        view = memoryview(data)
        if self._partial:
            take = min(len(view), BLOCK_SIZE - len(self._partial))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) < BLOCK_SIZE:
                return
            self._add(hashlib.sha256(self._partial).digest())
            self._partial.clear()
        whole = len(view) - len(view) % BLOCK_SIZE
        for at in range(0, whole, BLOCK_SIZE):
            self._add(hashlib.sha256(view[at:at + BLOCK_SIZE]).digest())
        if whole < len(view):
            self._partial += view[whole:]

    def zeros(self, length: int) -> None:
        """Feed ``length`` zero bytes."""
        if self._partial:
            take = min(length, BLOCK_SIZE - len(self._partial))
            self.update(bytes(take))
            length -= take
        for _ in range(length // BLOCK_SIZE):
            self._add(ZERO_BLOCK_DIGEST)
        if length % BLOCK_SIZE:
            self._partial += bytes(length % BLOCK_SIZE)

    def _add(self, digest: bytes) -> None:
        if self._blocks >= self.data_blocks:
            raise InvalidArgumentError(f"more than the {self.data_blocks} data blocks the verity tree was made for")
        self._blocks += 1
        if not self.pages:
            self._single = digest
            return
        self._leaf += digest
        if len(self._leaf) == BLOCK_SIZE:
            self._write_page(0, self._leaf_page, self._leaf)
            self._leaf_page += 1
            self._leaf.clear()

    def _write_page(self, level: int, index: int, page) -> None:
        if len(page) < BLOCK_SIZE:
            page = bytes(page) + self.fill * ((BLOCK_SIZE - len(page)) // DIGEST_SIZE)
        os.pwrite(self.fd, page, self.offset + self.bases[level] + index * BLOCK_SIZE)

    def finish(self) -> bytes:
        """Write the rest of the tree and return the root digest."""
        if self._partial:
            raise InvalidArgumentError("the verity data does not end on a 4 KiB block boundary")
        if self._blocks != self.data_blocks:
            raise InvalidArgumentError(f"the verity tree was made for {self.data_blocks} data blocks, "
                                       f"{self._blocks} were fed")
        if not self.pages:
            return self._single
        if self._leaf:
            self._write_page(0, self._leaf_page, self._leaf)
        for level in range(1, len(self.pages)):
            below = self.offset + self.bases[level - 1]
            page, index = bytearray(), 0
            for i in range(self.pages[level - 1]):
                page += hashlib.sha256(os.pread(self.fd, BLOCK_SIZE, below + i * BLOCK_SIZE)).digest()
                if len(page) == BLOCK_SIZE:
                    self._write_page(level, index, page)
                    page, index = bytearray(), index + 1
            if page:
                self._write_page(level, index, page)
        return hashlib.sha256(os.pread(self.fd, BLOCK_SIZE, self.offset)).digest()
