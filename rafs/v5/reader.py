"""Read a RAFS v5 bootstrap lazily into the version-neutral model.

Only the superblock and the blob tables are decoded when the reader is made; inode records are decoded
on demand through the inode table (``offset = table[index - 1] << 3``), with every offset and count
checked against the bootstrap's size first.
"""

from __future__ import annotations

import functools
import stat as _stat
import struct
from typing import Iterator

from .. import _records
from ..errors import InvalidImageError, UnsupportedError
from ..limits import CHUNK_SIZE_RULE, is_chunk_size
from ..model import (BLOB_FEATURES_INVALID_MASK, Blob, BlobFeatures, Chunk, ImageReader, Inode,
                     InodeFlags, MAX_CHUNK_SIZE, SuperFlags)
from ..blob import codecs
from ..blob.ids import INLINE_BLOB_ID, blob_table_faults
from ..table_checks import ascii_blob_id, first_overlap
from . import layout

from .records import CHUNK, EXT_BLOB, INODE
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _align8(n: int) -> int:
    return (n + 7) & ~7


def is_v5(head: bytes) -> bool:
    return len(head) >= 8 and _U32.unpack_from(head, 0)[0] == layout.RAFSV5_SUPER_MAGIC


class V5Reader(ImageReader):
    """A RAFS v5 bootstrap held in ``data`` (bytes, mmap or memoryview)."""

    version = 5

    def __init__(self, data, *, inode_cache_size: int = 4096, blob_id_hint: str | None = None):
        self.data = data
        self.size = len(data)
        if self.size < layout.RAFSV5_SUPERBLOCK_SIZE:
            raise InvalidImageError(f"bootstrap of {self.size} bytes is smaller than the 8192-byte "
                                    "superblock", structure="v5 superblock", offset=0)
        self.superblock = sb = _records.parse(layout.SuperBlock, data, 0, structure="v5 superblock")
        self._validate_superblock(sb)
        self.flags = SuperFlags(sb.s_flags)
        self.chunk_size = sb.s_block_size
        self.root_ino = 1
        self.inode_count = sb.s_inode_table_entries
        self.blobs = self._read_blobs(sb)
        if blob_id_hint:       # a bootstrap carried by its own blob: the builder wrote a placeholder id
            for blob in self.blobs:
                if blob.blob_id == INLINE_BLOB_ID:
                    blob.blob_id = blob_id_hint
        self._cached_inode = functools.lru_cache(maxsize=inode_cache_size)(self._inode)
        self.inode_uncached = self._inode

    # -- superblock and tables -------------------------------------------------------------------

    def _validate_superblock(self, sb) -> None:
        def bad(message, offset=0):
            raise InvalidImageError(message, structure="v5 superblock", offset=offset)

        if sb.s_fs_version != layout.RAFSV5_SUPER_VERSION:
            if sb.s_fs_version == layout.RAFSV4_SUPER_VERSION:
                raise UnsupportedError("RAFS v4 bootstraps are not supported")
            bad(f"s_fs_version {sb.s_fs_version:#x} is not {layout.RAFSV5_SUPER_VERSION:#x}", 4)
        if sb.s_sb_size != layout.RAFSV5_SUPERBLOCK_SIZE:
            bad(f"s_sb_size {sb.s_sb_size} is not {layout.RAFSV5_SUPERBLOCK_SIZE}", 8)
        bs = sb.s_block_size
        if not (bs == layout.RAFSV5_STARGZ_CHUNK_SIZE or is_chunk_size(bs)):
            bad(f"s_block_size {bs:#x} is not {CHUNK_SIZE_RULE}", 12)
        unknown = sb.s_flags & ~SuperFlags.known_mask()
        if unknown:
            bad(f"s_flags has unknown bits {unknown:#x}", 16)
        if self.size % layout.RAFSV5_ALIGNMENT:
            bad(f"bootstrap size {self.size} is not a multiple of 8")
        if sb.s_inodes_count > sb.s_inode_table_entries:
            bad(f"s_inodes_count {sb.s_inodes_count} exceeds s_inode_table_entries "
                f"{sb.s_inode_table_entries}", 24)
        if sb.s_inode_table_entries == 0:
            bad("the inode table is empty (no root inode)", 56)
        sections = [
            ("inode table", sb.s_inode_table_offset, _align8(4 * sb.s_inode_table_entries)),
            ("prefetch table", sb.s_prefetch_table_offset, _align8(4 * sb.s_prefetch_table_entries)),
            ("blob table", sb.s_blob_table_offset, sb.s_blob_table_size),
            ("extended blob table", sb.s_extended_blob_table_offset,
             layout.RAFSV5_EXT_BLOB_ENTRY_SIZE * sb.s_extended_blob_table_entries),
        ]
        spans = []
        for name, offset, size in sections:
            if size == 0:
                continue
            if offset < layout.RAFSV5_SUPERBLOCK_SIZE or offset + size > self.size:
                bad(f"{name} [{offset:#x}, +{size:#x}) lies outside the bootstrap ({self.size} bytes)")
            if offset % layout.RAFSV5_ALIGNMENT:
                bad(f"{name} offset {offset:#x} is not 8-byte aligned")
            spans.append((offset, offset + size, name))
        overlap = first_overlap(spans)
        if overlap:
            bad("{} overlaps {}".format(*overlap))

    def _read_blobs(self, sb) -> list[Blob]:
        offset, size = sb.s_blob_table_offset, sb.s_blob_table_size
        raw = bytes(self.data[offset:offset + size])
        blobs, pos = [], 0
        # entries: u32 readahead_offset, u32 readahead_size, id bytes, separated by a NUL; zero padding
        while pos + 8 <= len(raw):
            ra_offset, ra_size = struct.unpack_from("<II", raw, pos)
            end = raw.find(b"\0", pos + 8)
            if end < 0:
                end = len(raw)
            blob_id = raw[pos + 8:end]
            if not blob_id:
                if ra_offset or ra_size or raw[pos:].strip(b"\0"):
                    raise InvalidImageError("blob table entry with an empty blob id",
                                            structure="v5 blob table", offset=offset + pos)
                break
            text = ascii_blob_id(blob_id, "v5 blob table", offset + pos)
            if len(blobs) >= 256:
                raise InvalidImageError("more than 256 blobs", structure="v5 blob table", offset=offset)
            blobs.append(Blob(index=len(blobs), blob_id=text, compressor=self.flags.compressor,
                              digester=self.flags.digester, chunk_size=sb.s_block_size,
                              readahead_offset=ra_offset, readahead_size=ra_size,
                              features=BlobFeatures._V5_NO_EXT_BLOB_TABLE))
            pos = end + 1
        entries = sb.s_extended_blob_table_entries
        if entries:
            if entries != len(blobs):
                raise InvalidImageError(f"{entries} extended blob entries for {len(blobs)} blobs",
                                        structure="v5 extended blob table",
                                        offset=sb.s_extended_blob_table_offset)
            for blob, ext in zip(blobs, EXT_BLOB.iter_unpack(self.data, sb.s_extended_blob_table_offset,
                                                             entries)):
                if ext.features & BLOB_FEATURES_INVALID_MASK:
                    raise InvalidImageError(f"blob {blob.blob_id} has invalid feature bits "
                                            f"{ext.features:#x}", structure="v5 extended blob table",
                                            offset=sb.s_extended_blob_table_offset + 64 * blob.index)
                blob.chunk_count = ext.chunk_count
                blob.features = ext.features
                blob.uncompressed_size = ext.uncompressed_size
                blob.compressed_size = ext.compressed_size
        return blobs

    def prefetch_inodes(self) -> list[int]:
        sb = self.superblock
        result = []
        for (ino,) in _U32.iter_unpack(bytes(self.data[sb.s_prefetch_table_offset:
                                                        sb.s_prefetch_table_offset + 4 * sb.s_prefetch_table_entries])):
            if ino == 0:
                break
            result.append(ino)
        return result

    # -- inode records ---------------------------------------------------------------------------

    def record_offset(self, index: int) -> int:
        """Byte offset of the inode record with 1-based table ``index``."""
        if not 1 <= index <= self.inode_count:
            raise InvalidImageError(f"inode index {index} outside 1..{self.inode_count}",
                                    structure="v5 inode table", offset=self.superblock.s_inode_table_offset)
        table = self.superblock.s_inode_table_offset
        offset = _U32.unpack_from(self.data, table + 4 * (index - 1))[0] << 3
        if offset < layout.RAFSV5_SUPERBLOCK_SIZE or offset + layout.RAFSV5_INODE_SIZE > self.size:
            raise InvalidImageError(f"inode {index} record offset {offset:#x} lies outside the bootstrap",
                                    structure="v5 inode table", offset=table + 4 * (index - 1))
        return offset

    def record(self, index: int):
        """(raw inode fields, record offset) of table index ``index``."""
        offset = self.record_offset(index)
        return INODE.unpack_from(self.data, offset), offset

    def _name_at(self, raw, offset: int) -> bytes:
        start = offset + layout.RAFSV5_INODE_SIZE
        if raw.i_name_size == 0 or start + raw.i_name_size > self.size:
            raise InvalidImageError(f"inode {raw.i_ino} name of {raw.i_name_size} bytes is empty or runs "
                                    "past the end", structure="v5 inode", offset=offset)
        return bytes(self.data[start:start + raw.i_name_size])

    def record_sections(self, raw, offset: int) -> tuple[int, int, int]:
        """(symlink offset, xattr offset, chunk array offset) of the record ``raw`` at ``offset`` (as
        :meth:`record` returns them): where its variable-length sections start."""
        symlink_at = offset + layout.RAFSV5_INODE_SIZE + _align8(raw.i_name_size)
        xattr_at = symlink_at + _align8(raw.i_symlink_size)
        chunks_at = xattr_at
        if raw.i_flags & InodeFlags.XATTR:
            if xattr_at + 8 > self.size:
                raise InvalidImageError("xattr table runs past the end", structure="v5 inode xattrs",
                                        offset=xattr_at)
            total = _U64.unpack_from(self.data, xattr_at)[0]
            if total > self.size:
                raise InvalidImageError(f"xattr table size {total} exceeds the bootstrap",
                                        structure="v5 inode xattrs", offset=xattr_at)
            chunks_at = xattr_at + 8 + _align8(total)
        return symlink_at, xattr_at, chunks_at

    def inode(self, ino: int) -> Inode:
        return self._cached_inode(ino)

    def _inode(self, ino: int) -> Inode:
        raw, offset = self.record(ino)
        if raw.i_ino != ino:
            raise InvalidImageError(f"inode table entry {ino} holds a record for inode {raw.i_ino}",
                                    structure="v5 inode", offset=offset)
        return self._to_inode(raw, offset)

    def _to_inode(self, raw, offset: int) -> Inode:
        mode = raw.i_mode
        symlink_at, xattr_at, chunks_at = self.record_sections(raw, offset)
        symlink = None
        if _stat.S_ISLNK(mode):
            if raw.i_symlink_size == 0 or symlink_at + raw.i_symlink_size > self.size:
                raise InvalidImageError(f"inode {raw.i_ino} symlink of {raw.i_symlink_size} bytes is empty "
                                        "or runs past the end", structure="v5 inode", offset=offset)
            symlink = bytes(self.data[symlink_at:symlink_at + raw.i_symlink_size])
        xattrs = self._xattrs(raw, xattr_at) if raw.i_flags & InodeFlags.XATTR else {}
        chunk_count = 0
        if _stat.S_ISREG(mode):
            chunk_count = raw.i_child_count
            if chunks_at + chunk_count * layout.RAFSV5_CHUNK_INFO_SIZE > self.size:
                raise InvalidImageError(f"inode {raw.i_ino} has {chunk_count} chunks running past the end",
                                        structure="v5 inode", offset=offset)
        rdev = raw.i_rdev
        if rdev == 0xFFFF_FFFF or not (_stat.S_ISCHR(mode) or _stat.S_ISBLK(mode)):
            rdev = 0       # tar builds write u32::MAX for entries that are not devices
        if raw.i_mtime_nsec >= 1_000_000_000:
            raise InvalidImageError(f"inode {raw.i_ino} i_mtime_nsec {raw.i_mtime_nsec} out of range",
                                    structure="v5 inode", offset=offset)
        if _stat.S_IFMT(mode) not in _FILE_TYPES:
            raise InvalidImageError(f"inode {raw.i_ino} has unknown file type in mode {mode:#o}",
                                    structure="v5 inode", offset=offset)
        return Inode(ino=raw.i_ino, mode=mode, uid=raw.i_uid, gid=raw.i_gid, size=raw.i_size,
                     mtime=raw.i_mtime, mtime_nsec=raw.i_mtime_nsec, nlink=raw.i_nlink, rdev=rdev,
                     blocks=raw.i_blocks, flags=raw.i_flags, symlink=symlink, xattrs=xattrs,
                     digest=raw.i_digest, chunk_count=chunk_count)

    def _xattrs(self, raw, xattr_at: int) -> dict[bytes, bytes]:
        total = _U64.unpack_from(self.data, xattr_at)[0]
        pos, end = xattr_at + 8, xattr_at + 8 + total
        result = {}
        while pos < end:
            if pos + 4 > end:
                raise InvalidImageError("truncated xattr pair header", structure="v5 inode xattrs", offset=pos)
            size = _U32.unpack_from(self.data, pos)[0]
            pair = bytes(self.data[pos + 4:pos + 4 + size])
            if len(pair) != size or pos + 4 + size > end:
                raise InvalidImageError(f"xattr pair of {size} bytes runs past the table",
                                        structure="v5 inode xattrs", offset=pos)
            key, sep, value = pair.partition(b"\0")
            if not sep or not key:
                raise InvalidImageError("xattr pair without a NUL-terminated name",
                                        structure="v5 inode xattrs", offset=pos)
            result[key] = value
            pos += 4 + size
        return result

    def entries(self, ino: int) -> Iterator[tuple[bytes, int]]:
        raw, offset = self.record(ino)
        if not _stat.S_ISDIR(raw.i_mode):
            return
        first, count = self._child_range(raw, ino, offset)
        for index in range(first, first + count):
            child, child_offset = self.record(index)
            yield self._name_at(child, child_offset), child.i_ino

    def _child_range(self, raw, ino: int, offset: int) -> tuple[int, int]:
        first, count = raw.i_child_index, raw.i_child_count
        if count == 0:
            return first, 0
        # The builder numbers children after their parent, so a child index never points back up:
        # refusing anything else makes every walk terminate, whatever the bytes say.
        if first <= ino or first + count - 1 > self.inode_count:
            raise InvalidImageError(f"directory inode {ino} children {first}..{first + count - 1} are not "
                                    f"after it and within 1..{self.inode_count}", structure="v5 inode",
                                    offset=offset)
        return first, count

    def lookup(self, ino: int, name: bytes) -> int | None:
        raw, offset = self.record(ino)
        if not _stat.S_ISDIR(raw.i_mode):
            return None
        first, count = self._child_range(raw, ino, offset)
        lo, hi = first, first + count - 1
        while lo <= hi:            # children are sorted by raw name bytes
            mid = (lo + hi) // 2
            child, child_offset = self.record(mid)
            child_name = self._name_at(child, child_offset)
            if child_name == name:
                return child.i_ino
            if child_name < name:
                lo = mid + 1
            else:
                hi = mid - 1
        return None

    def chunks(self, ino: int) -> list[Chunk]:
        raw, offset = self.record(ino)
        if not _stat.S_ISREG(raw.i_mode):
            return []
        inode = self.inode(ino)
        _, _, chunks_at = self.record_sections(raw, offset)
        result = []
        blob_count = len(self.blobs)
        for position, c in enumerate(CHUNK.iter_unpack(self.data, chunks_at, inode.chunk_count)):
            at = chunks_at + position * layout.RAFSV5_CHUNK_INFO_SIZE
            if c.blob_index >= blob_count:
                raise InvalidImageError(f"chunk {position} of inode {ino} names blob {c.blob_index} of "
                                        f"{blob_count}", structure="v5 chunk info", offset=at)
            if c.uncompressed_size > MAX_CHUNK_SIZE or c.compressed_size > MAX_CHUNK_SIZE * 2:
                raise InvalidImageError(f"chunk {position} of inode {ino} sizes {c.compressed_size}/"
                                        f"{c.uncompressed_size} exceed the 16 MiB chunk limit",
                                        structure="v5 chunk info", offset=at)
            result.append(Chunk(digest=c.block_id, blob_index=c.blob_index,
                                compressed_offset=c.compressed_offset, compressed_size=c.compressed_size,
                                uncompressed_offset=c.uncompressed_offset,
                                uncompressed_size=c.uncompressed_size, file_offset=c.file_offset,
                                index=c.index, flags=c.flags, crc32=c.crc32))
        return result

    # -- checks ----------------------------------------------------------------------------------

    def expected_digest(self, ino: int) -> bytes:
        """The i_digest the reference would compute for ``ino`` from what it references."""
        inode = self.inode(ino)
        digester = self.flags.digester
        if inode.is_reg:
            return codecs.digest(digester, b"".join(c.digest for c in self.chunks(ino)))
        if inode.is_symlink:
            return codecs.digest(digester, inode.symlink or b"")
        if inode.is_dir:
            raw, offset = self.record(ino)
            first, count = self._child_range(raw, ino, offset)
            return codecs.digest(digester, b"".join(self.record(i)[0].i_digest
                                                    for i in range(first, first + count)))
        return codecs.digest(digester, b"")

    def verify_structure(self) -> Iterator[str]:
        """Check every table entry decodes and every record's digest matches what it references."""
        yield from blob_table_faults(blob.blob_id for blob in self.blobs)
        for index in range(1, self.inode_count + 1):
            try:
                raw, offset = self.record(index)
                self._name_at(raw, offset)
                inode = self._to_inode(raw, offset)
                if inode.ino != index:
                    # a hardlink path: the record for its ino must exist and agree
                    self.inode(inode.ino)
                    continue
                if _stat.S_ISDIR(raw.i_mode):
                    self._child_range(raw, index, offset)
                if inode.is_reg:
                    self.chunks(index)
                expected = self.expected_digest(index)
                if expected != inode.digest:
                    yield (f"inode {index}: i_digest {inode.digest.hex()} != computed {expected.hex()}")
            except InvalidImageError as exc:
                yield f"inode {index}: {exc}"


_FILE_TYPES = {_stat.S_IFREG, _stat.S_IFDIR, _stat.S_IFLNK, _stat.S_IFCHR, _stat.S_IFBLK,
               _stat.S_IFIFO, _stat.S_IFSOCK}
