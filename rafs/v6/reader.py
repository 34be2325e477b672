"""Read a RAFS v6 bootstrap or a plain EROFS image lazily into the version-neutral model.

Inode numbers are EROFS nids, as nydusd and the kernel report them. Only the superblocks, the device
table and the blob table are decoded when the reader is made (and the root inode, to refuse images
whose root is not a directory); inodes, directories and chunk indexes are decoded on demand, with every
offset and count checked against the image size first.

:class:`V6Reader` composes one helper per concern, each given the image's bytes and its
:class:`rafs.v6.superblock.Geometry` rather than the reader:

* :mod:`rafs.v6.superblock` and :mod:`rafs.v6.tables`: the superblocks, device table, blob table, chunk
  info table and prefetch table, checked;
* :mod:`rafs.v6.inodes`: the one inode decoder (stat fields, records, model inodes, bulk stats);
* :mod:`rafs.v6.extents`: where a plain EROFS inode's data lies (flat, inline, chunk-based, devices);
* :mod:`rafs.v6.chunks`: RAFS chunk indexes resolved through the chunk info table or a blob's CI array;
* :mod:`rafs.v6.directories`: listings and lookups; :mod:`rafs.v6.checks`: whole-image checks;
* :mod:`rafs.v6.zmap` and :mod:`rafs.v6.zdata`: compressed EROFS (``mkfs.erofs -z``), one chunk per
  extent of the pseudo blob :data:`rafs.model.ZDATA_BLOB_INDEX` (:attr:`V6Reader.zdata` is also that
  pseudo blob's chunk reader).

Where file data lives:

* RAFS v6 (``COMPAT_RAFS_V6``): every regular file is chunk-based; each 8-byte chunk index names a blob
  and an index into that blob's CI array, resolved through the bootstrap's chunk info table or the
  blob's CI array, which the ``chunk_info_source`` given to the reader loads on demand. In tarfs mode
  the tar is the blob.
* plain EROFS: flat data and chunk-based data with device id 0 live in the image itself, returned as
  chunks of the pseudo blob :data:`rafs.model.META_BLOB_INDEX` addressed by image byte offset; chunks
  on an extra device (``mkfs.erofs --blobdev``) belong to blob ``device - 1``.

Plain EROFS images carry no compressor or digester: their ``flags`` are reported as
``COMPRESSION_NONE | HASH_SHA256`` and their chunks have no digests (nothing to verify).
"""

from __future__ import annotations

import functools
import stat as _stat
from typing import Iterator

from ..errors import InvalidImageError
from ..model import Chunk, ImageReader, Inode, SuperFlags
from . import checks, extents, layout, superblock, tables
from .chunks import ChunkInfoSource, RafsChunks
from .directories import Directories
from .inodes import InodeDecoder, Record
from .superblock import PLAIN_EROFS_FLAGS, Geometry, erofs_sb_checksum, is_erofs

# is_erofs and erofs_sb_checksum live in rafs.v6.superblock; importers have long found them here
__all__ = ["V6Reader", "is_erofs", "erofs_sb_checksum"]

_CHUNK_BASED = layout.EROFS_INODE_CHUNK_BASED
_COMPRESSED_LAYOUTS = layout.EROFS_COMPRESSED_LAYOUTS


class V6Reader(ImageReader):
    """A RAFS v6 bootstrap or plain EROFS image held in ``data`` (bytes, mmap or memoryview).

    ``blob_id_hint`` is the id of the blob the bootstrap was extracted from (``--blob-inline-meta``):
    it replaces the placeholder id the builder wrote, as the reference's ``BlobInfo::blob_id`` does.
    ``chunk_info_source`` (a :class:`rafs.model.Blob` of this image -> its CI array, or None) resolves
    chunks the chunk info table does not hold; without one such chunks are an error.
    """

    version = 6

    def __init__(self, data, *, blob_id_hint: str | None = None, inode_cache_size: int = 4096,
                 chunk_info_source: ChunkInfoSource | None = None):
        self.data = data
        self.size = size = len(data)
        self.blob_id_hint = blob_id_hint
        self.superblock = sb = superblock.read_superblock(data, size)
        self.is_rafs = is_rafs = superblock.is_rafs(sb)
        self.block_bits = sb.s_blkszbits
        self.block_size = superblock.block_size_of(sb)
        self.meta_base = sb.s_meta_blkaddr * self.block_size
        self.root_ino = sb.s_root_nid
        self.extra_devices = superblock.extra_devices(sb)
        self.device_id_mask = (1 << self.extra_devices.bit_length()) - 1 if self.extra_devices else 0
        self.devices = tables.read_devices(data, size, sb, self.extra_devices, is_rafs)
        self.superblock_ext = None
        if is_rafs:
            self.superblock_ext = ext = superblock.read_superblock_ext(data, size, self.extra_devices)
            self.flags = SuperFlags(ext.s_flags)
            self.chunk_size = ext.s_chunk_size
            self.blobs = tables.read_blob_table(data, ext, self.devices, chunk_size=self.chunk_size,
                                                tarfs=bool(self.flags & SuperFlags.TARTFS_MODE),
                                                blob_id_hint=blob_id_hint)
        else:
            self.flags = PLAIN_EROFS_FLAGS
            self.chunk_size = self.block_size
            self.blobs = tables.device_blobs(self.devices, self.block_size)
        self.geometry = geo = Geometry(
            size=size, block_bits=self.block_bits, block_size=self.block_size, meta_base=self.meta_base,
            is_rafs=is_rafs, flags=int(self.flags), chunk_size=self.chunk_size, build_time=sb.s_build_time,
            build_time_nsec=sb.s_build_time_nsec,
            shared_xattr_base=None if is_rafs else sb.s_xattr_blkaddr * self.block_size,
            devices=tuple(self.devices), device_id_mask=self.device_id_mask)
        self.inode_count = sb.s_inos            # what statfs reports as f_files
        self._chunk_table: dict | None = None
        self._zdata = None
        self.decoder = decoder = InodeDecoder(data, geo, self._read_meta)
        self._record = functools.lru_cache(maxsize=inode_cache_size)(decoder.record)
        self._cached_inode = functools.lru_cache(maxsize=inode_cache_size)(decoder.inode)
        self.rafs_chunks = RafsChunks(data, geo, self.blobs, self.chunk_table, chunk_info_source)
        self.directories = dirs = Directories(data, geo, decoder.attributes, self._record,
                                              lambda nid, offset, length: self.zdata.read_range(nid, offset, length))
        # the helpers' own functions, bound here: walks and lookups make no extra call per inode
        self.inode_uncached = decoder.inode
        self.inode = self._cached_inode
        self.record = self._record
        self.stat_list = decoder.stat_list
        self.listing, self.entries, self.lookup = dirs.listing, dirs.entries, dirs.lookup
        if not self.inode(self.root_ino).is_dir:
            raise InvalidImageError(f"root nid {self.root_ino} is not a directory", structure="v6 superblock",
                                    offset=layout.EROFS_SUPER_OFFSET + 14)

    @property
    def chunk_info_source(self) -> ChunkInfoSource | None:
        """What resolves chunks the chunk info table does not hold (given when the reader was made)."""
        return self.rafs_chunks.chunk_info_source

    # -- tables ----------------------------------------------------------------------------------

    def prefetch_inodes(self) -> list[int]:
        """The nids of the RAFS prefetch table, in table order."""
        return tables.prefetch_nids(self.data, self.superblock_ext)

    def chunk_table(self) -> dict:
        """{(blob index, CI index): chunk info record} of the bootstrap's chunk info table, built once."""
        if self._chunk_table is None:
            self._chunk_table = tables.read_chunk_table(self.data, self.superblock_ext)
        return self._chunk_table

    # -- inodes ----------------------------------------------------------------------------------

    def inode_offset(self, nid: int) -> int:
        """Byte offset of inode ``nid`` in the image."""
        return self.geometry.inode_offset(nid)

    def record(self, nid: int) -> Record:
        """The decoded on-disk record of nid ``nid`` (cached); every instance binds the cache itself."""
        return self._record(nid)

    def inode(self, ino: int) -> Inode:
        """The inode ``ino`` (an nid); every instance replaces this with its cached decoder."""
        return self._cached_inode(ino)

    def stat_values(self, ino: int) -> tuple:
        """The stat fields of nid ``ino`` straight from its record: no xattrs, symlink target or chunk
        count decoded, no :class:`Inode` made (what a bulk walk such as :meth:`rafs.Image.iter_stats`
        needs)."""
        return self.decoder.attributes(ino)[:10]

    def stat_list(self, inos) -> list[tuple]:
        """:meth:`stat_values` of every nid in ``inos``, in bulk (:meth:`rafs.v6.inodes.InodeDecoder.stat_list`)."""
        return self.decoder.stat_list(inos)

    # -- data ------------------------------------------------------------------------------------

    @property
    def zdata(self):
        """The mapper and decoder of compressed inodes (:class:`rafs.v6.zdata.ZDataReader`), made on first
        use: most images have none."""
        if self._zdata is None:
            from .zdata import ZDataReader
            self._zdata = ZDataReader(self)
        return self._zdata

    def zdata_chunk_reader(self):
        """The chunk reader of :data:`rafs.model.ZDATA_BLOB_INDEX` (compressed EROFS extents)."""
        return self.zdata

    def flat_extents(self, rec: Record) -> list[tuple[int, int, int, int]]:
        """(file offset, length, blob index, offset) of a non-RAFS-chunked inode's data
        (:func:`rafs.v6.extents.extents`)."""
        return extents.extents(self.geometry, self.data, rec)

    def _read_meta(self, rec: Record) -> bytes:
        """All bytes of a directory or symlink, which must live in the image itself."""
        return extents.meta_data(self.geometry, self.data, rec, lambda rec: self.zdata.read_all(rec))

    def chunks(self, ino: int) -> list[Chunk]:
        """The chunks of a regular file: compressed extents, RAFS chunk indexes or plain EROFS extents."""
        rec = self._record(ino)
        if not _stat.S_ISREG(rec.mode):
            return []
        if rec.datalayout in _COMPRESSED_LAYOUTS:
            return self.zdata.chunks(rec)
        if self.is_rafs and rec.datalayout == _CHUNK_BASED:
            return self.rafs_chunks.chunks(rec)
        return extents.flat_chunks(self.geometry, self.data, rec)

    # -- directories -----------------------------------------------------------------------------

    def entries(self, ino: int) -> Iterator[tuple[bytes, int]]:
        """(name, nid) of every entry but ``.`` and ``..``; every instance binds
        :meth:`rafs.v6.directories.Directories.entries` itself."""
        return self.directories.entries(ino)

    def listing(self, ino: int) -> tuple[list[bytes], list[int]]:
        """The names and nids of a directory's entries but ``.`` and ``..``, as two lists."""
        return self.directories.listing(ino)

    def lookup(self, ino: int, name: bytes) -> int | None:
        """The nid of ``name`` in directory ``ino``, or None."""
        return self.directories.lookup(ino, name)

    # -- checks and description ------------------------------------------------------------------

    def verify_structure(self) -> Iterator[str]:
        """Walk every inode reachable from the root and report what does not decode or agree
        (:func:`rafs.v6.checks.verify_structure`)."""
        return checks.verify_structure(self)

    def describe_extra(self) -> dict:
        """What ``rafs inspect`` shows of the superblocks and devices (:func:`rafs.v6.checks.describe_extra`)."""
        return checks.describe_extra(self)
