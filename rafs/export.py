"""Export a RAFS v6 image as a raw EROFS disk image the kernel mounts without ``device=`` (nydus-image
``export --block``, service/src/block_device.rs in the reference), optionally with a dm-verity tree.

The disk is the image's unified block address space made real, in 4 KiB blocks:

- blocks ``[0, n)``: the bootstrap itself (its size must be a whole number of blocks);
- then, for each blob in blob-table order, the blob's *uncompressed* data (each chunk decompressed at its
  ``uncompressed_offset`` from the blob's chunk info array, zeros between) at the device slot's
  ``mapped_blkaddr``, ``uncompressed_size >> 12`` blocks long; zeros fill any gap before it;
- with verity, the hash tree (:mod:`rafs.verity`) right after the last block.

Block addresses must rise from blob to blob as in the reference (a slot below the end of the previous
region is an error). Zero runs are left as holes in the output, so a disk whose blobs declare more data
than they hold costs no space; the number of blocks is still what the image declares, checked against
what its chunks can fill (each chunk takes at most one chunk-size slot of the blob's address space).
Data streams through chunk by chunk; the tree is written page by page, so memory stays small.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from . import tempfiles
from .blob.layout import BLOB_CCT_HEADER_SIZE as CI_HEADER_SIZE
from .blob.meta import load_chunk_infos
from .io.cache import KnownEnd
from .errors import InvalidImageError, ParameterError, UnsupportedError
from .model import Chunk
from .verity import BLOCK_SIZE, SPARE_NYDUS, VerityWriter, tree_size, veritysetup_options

log = logging.getLogger(__name__)

_MAX_BLOCKS = (1 << 32) - 1      # block addresses are u32, as in the reference


@dataclasses.dataclass
class Region:
    """Blob ``blob_index``'s data at blocks ``[start, start + blocks)`` of the disk."""

    blob_index: int
    start: int
    blocks: int


@dataclasses.dataclass
class DiskLayout:
    """Where everything goes on the disk: the bootstrap's blocks, then each blob's region."""

    meta_blocks: int
    regions: list[Region]

    @property
    def blocks(self) -> int:
        """Data blocks of the disk (without the verity tree)."""
        return self.regions[-1].start + self.regions[-1].blocks if self.regions else self.meta_blocks


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_block` wrote: ``blocks`` data blocks, then (with verity) the tree at
    ``hash_offset`` whose root is ``root_digest``."""

    path: str
    blocks: int
    size: int
    hash_offset: int | None = None
    root_digest: bytes | None = None

    @property
    def veritysetup_options(self) -> str | None:
        """The veritysetup options that open the disk's verity tree, or None without one."""
        if self.root_digest is None:
            return None
        return veritysetup_options(self.blocks, self.hash_offset, self.root_digest)


def disk_layout(image) -> DiskLayout:
    """The block layout of ``image`` (a :class:`rafs.Image` of RAFS v6) as a disk; checks the image
    can be one."""
    reader = image.reader
    if getattr(reader, "version", None) != 6 or not getattr(reader, "is_rafs", False):
        raise UnsupportedError("only RAFS v6 images can be exported as block disks (the kernel reads EROFS)")
    if getattr(reader, "block_size", BLOCK_SIZE) != BLOCK_SIZE:
        raise UnsupportedError("only images with 4 KiB blocks can be exported (tarfs-mode images are not "
                               "supported yet)")
    size = len(reader.data)
    if size % BLOCK_SIZE:
        raise InvalidImageError(f"the bootstrap is {size} bytes, not a whole number of 4 KiB blocks",
                                structure="bootstrap")
    pos = size // BLOCK_SIZE
    regions = []
    for blob in image.blobs:
        if not blob.mapped_blkaddr:
            raise InvalidImageError(f"blob {blob.blob_id} has no mapped block address in the device table",
                                    structure="v6 device table")
        if blob.mapped_blkaddr < pos:
            raise InvalidImageError(f"blob {blob.blob_id} is mapped at block {blob.mapped_blkaddr}, inside the "
                                    f"blocks before it (which end at {pos})", structure="v6 device table")
        blocks = blob.uncompressed_size // BLOCK_SIZE
        if blob.uncompressed_size > blob.chunk_count * blob.chunk_size:
            raise InvalidImageError(f"blob {blob.blob_id} declares {blob.uncompressed_size} bytes of data, more "
                                    f"than its {blob.chunk_count} chunks of at most {blob.chunk_size} bytes hold",
                                    structure="v6 blob table")
        if blob.mapped_blkaddr + blocks > _MAX_BLOCKS:
            raise InvalidImageError(f"blob {blob.blob_id} ends beyond the 2^32 blocks a disk can address",
                                    structure="v6 blob table")
        regions.append(Region(blob.index, blob.mapped_blkaddr, blocks))
        pos = blob.mapped_blkaddr + blocks
    return DiskLayout(size // BLOCK_SIZE, regions)


class _Stream:
    """Writes the disk front to back into ``fd``, leaving zero runs as holes, feeding the verity tree."""

    def __init__(self, fd: int, verity: VerityWriter | None):
        self.fd, self.verity, self.pos = fd, verity, 0

    def write(self, data) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, self.pos)
            if self.verity is not None:
                self.verity.update(view[:done])
            self.pos += done
            view = view[done:]

    def skip(self, length: int) -> None:
        if self.verity is not None:
            self.verity.zeros(length)
        self.pos += length


def _blob_chunks(image, region: Region) -> list:
    """The blob's chunk records in address order, each checked to lie inside the region."""
    blob = image.blobs[region.blob_index]
    source = image.locator.open_ci(blob)      # SEPARATE (targz-ref) blobs: the meta blob
    if getattr(source, "size", None) is None:
        # a remote blob of unknown size: its chunk info ends where the blob table says (as the cache does)
        source = KnownEnd(source, blob.ci_offset + blob.ci_compressed_size + CI_HEADER_SIZE)
    infos = sorted(load_chunk_infos(blob, source), key=lambda ci: ci.uncompressed_offset)
    end, limit = 0, region.blocks * BLOCK_SIZE
    for ci in infos:
        if ci.uncompressed_offset < end or ci.uncompressed_offset + ci.uncompressed_size > limit:
            raise InvalidImageError(f"chunk [{ci.uncompressed_offset:#x}, +{ci.uncompressed_size:#x}) of blob "
                                    f"{blob.blob_id} overlaps another or lies outside the blob's "
                                    f"{limit} bytes of data", structure="chunk info")
        end = ci.uncompressed_offset + ci.uncompressed_size
    return infos


def _write_blob(image, region: Region, out: _Stream) -> None:
    reader = image.chunk_reader(region.blob_index)
    base = region.start * BLOCK_SIZE
    for index, ci in enumerate(_blob_chunks(image, region)):
        chunk = Chunk(digest=b"", blob_index=region.blob_index, compressed_offset=ci.compressed_offset,
                      compressed_size=ci.compressed_size, uncompressed_offset=ci.uncompressed_offset,
                      uncompressed_size=ci.uncompressed_size, file_offset=0, index=index, flags=int(ci.flags),
                      crc32=ci.crc32)
        out.skip(base + ci.uncompressed_offset - out.pos)
        out.write(reader.read(chunk))
    out.skip(base + region.blocks * BLOCK_SIZE - out.pos)


def export_block(image, output, *, verity: bool = False, spare: str = SPARE_NYDUS) -> ExportResult:
    """Write ``image`` (RAFS v6, its blobs reachable) as a raw EROFS disk to ``output``, atomically.

    With ``verity`` a dm-verity tree follows the data (``spare`` says what fills its unused digest
    slots, see :mod:`rafs.verity`); the result carries its root digest and veritysetup options.
    """
    layout = disk_layout(image)
    output = os.fspath(output)
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfiles.mkstemp(directory, ".disk")
    try:
        data_size = layout.blocks * BLOCK_SIZE
        writer = VerityWriter(fd, data_size, layout.blocks, spare=spare) if verity else None
        out = _Stream(fd, writer)
        out.write(image.reader.data)
        for region in layout.regions:
            out.skip(region.start * BLOCK_SIZE - out.pos)
            log.debug("blob %s: %d blocks at block %d", image.blobs[region.blob_index].blob_id, region.blocks,
                      region.start)
            _write_blob(image, region, out)
        size = data_size + (tree_size(layout.blocks) if verity else 0)
        os.ftruncate(fd, size)
        root = writer.finish() if writer is not None else None
        os.fchmod(fd, 0o666 & ~tempfiles.umask())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, output)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tempfiles.remove(tmp)
        raise
    return ExportResult(output, layout.blocks, size, data_size if verity else None, root)


def default_output(bootstrap: str, localfs_dir: str | None) -> str:
    """nydus-image's default output: ``<localfs dir>/<bootstrap file name>.disk``."""
    if localfs_dir is None:
        raise ParameterError("{output} is required unless {localfs_dir} is given")
    return os.path.join(localfs_dir, os.path.basename(bootstrap) + ".disk")
