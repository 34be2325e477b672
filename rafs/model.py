"""The version-neutral model of a RAFS filesystem: inodes, chunks, blobs and build-tree nodes.

Readers of every version (``rafs.v5.reader``, ``rafs.v6.reader``) answer the :class:`ImageReader`
questions with these objects, and writers consume :class:`Node` trees made of them, so layering,
merging, comparison and conversion are written once rather than per version.
"""

from __future__ import annotations

import abc
import enum
import os
import stat as _stat
from dataclasses import dataclass, field
from typing import Callable, Iterator, BinaryIO, Protocol, Sequence

from . import display
from .errors import InvalidImageError
# the format limits, read from here by many modules
from .limits import (DEFAULT_CHUNK_SIZE, MAX_BLOBS, MAX_CHUNK_SIZE, MAX_CHUNKS_PER_BLOB, MAX_DEPTH,  # noqa: F401
                     MAX_NAME_SIZE, MAX_XATTR_VALUE_SIZE, MIN_CHUNK_SIZE)

# Compressor ids as stored in blob tables and CI headers (utils/src/compress/mod.rs `Algorithm`).
COMPRESSOR_IDS = {"none": 0, "lz4_block": 1, "gzip": 2, "zstd": 3}
COMPRESSOR_NAMES = {v: k for k, v in COMPRESSOR_IDS.items()}
# Digester ids (utils/src/digest.rs `Algorithm`); every digest is 32 bytes.
DIGESTER_IDS = {"blake3": 0, "sha256": 1}
DIGESTER_NAMES = {v: k for k, v in DIGESTER_IDS.items()}
DIGEST_SIZE = 32
# Cipher ids (utils/src/crypt.rs `Algorithm`).
CIPHER_IDS = {"none": 0, "aes128xts": 1, "aes256xts": 2, "aes256gcm": 3}
CIPHER_NAMES = {v: k for k, v in CIPHER_IDS.items()}

# Blob index of chunks stored in the image itself (plain EROFS flat/inline data, device 0 chunks):
# their offsets address the bootstrap's own bytes, and there is no digest to verify.
META_BLOB_INDEX = -1
# Blob index of compressed EROFS extents (mkfs.erofs -z): decoded from the image by the v6 reader's
# zdata chunk reader; ``index`` is the file's nid (see rafs/v6/zdata.py).
ZDATA_BLOB_INDEX = -2
# Xattr name prefixes RAFS stores (rafs/src/metadata/layout/mod.rs `RAFS_XATTR_PREFIXES`).
XATTR_PREFIXES = (b"user.", b"security.", b"trusted.", b"system.posix_acl_access",
                  b"system.posix_acl_default")


_S_IFMT, _S_IFDIR = 0o170000, _stat.S_IFDIR


class SuperFlags(enum.IntFlag):
    """``RafsSuperFlags`` (rafs/src/metadata/mod.rs): the superblock-wide feature bits."""

    COMPRESSION_NONE = 0x1
    COMPRESSION_LZ4 = 0x2
    HASH_BLAKE3 = 0x4
    HASH_SHA256 = 0x8
    EXPLICIT_UID_GID = 0x10
    HAS_XATTR = 0x20
    COMPRESSION_GZIP = 0x40
    COMPRESSION_ZSTD = 0x80
    INLINED_CHUNK_DIGEST = 0x100
    TARTFS_MODE = 0x200
    ENCRYPTION_NONE = 0x0100_0000
    ENCRYPTION_ASE_128_XTS = 0x0200_0000
    PRESERVED_COMPAT_5 = 0x0400_0000
    PRESERVED_COMPAT_4 = 0x0800_0000
    PRESERVED_COMPAT_3 = 0x1000_0000
    PRESERVED_COMPAT_2 = 0x2000_0000
    PRESERVED_COMPAT_1 = 0x4000_0000
    PRESERVED_COMPAT_0 = 0x8000_0000

    @classmethod
    def known_mask(cls) -> int:
        """All bits this flag type defines, OR-ed: any other bit is unknown to rafs."""
        mask = 0
        for member in cls:
            mask |= member.value
        return mask

    @property
    def compressor(self) -> str:
        """First compression bit present wins; none present means lz4_block (the v5 default)."""
        for bit, name in ((self.COMPRESSION_NONE, "none"), (self.COMPRESSION_LZ4, "lz4_block"),
                          (self.COMPRESSION_GZIP, "gzip"), (self.COMPRESSION_ZSTD, "zstd")):
            if self & bit:
                return name
        return "lz4_block"

    @property
    def digester(self) -> str:
        """Digest algorithm the flags name: blake3 or sha256 (blake3 when neither bit is set)."""
        if self & self.HASH_BLAKE3:
            return "blake3"
        if self & self.HASH_SHA256:
            return "sha256"
        return "blake3"

    @classmethod
    def for_compressor(cls, name: str) -> "SuperFlags":
        """The flag bit naming compressor ``name`` (none, lz4_block, gzip, zstd)."""
        return {"none": cls.COMPRESSION_NONE, "lz4_block": cls.COMPRESSION_LZ4,
                "gzip": cls.COMPRESSION_GZIP, "zstd": cls.COMPRESSION_ZSTD}[name]

    @classmethod
    def for_digester(cls, name: str) -> "SuperFlags":
        """The flag bit naming digester ``name`` (blake3, sha256)."""
        return {"blake3": cls.HASH_BLAKE3, "sha256": cls.HASH_SHA256}[name]


class BlobFeatures(enum.IntFlag):
    """``BlobFeatures`` (storage/src/device.rs): per-blob feature bits in blob tables and CI headers."""

    ALIGNED = 0x1
    INLINED_FS_META = 0x2
    CHUNK_INFO_V2 = 0x4
    ZRAN = 0x8
    SEPARATE = 0x10
    INLINED_CHUNK_DIGEST = 0x20
    TARFS = 0x40
    BATCH = 0x80
    ENCRYPTED = 0x100
    IS_CHUNKDICT_GENERATED = 0x200
    IS_SEPARATED_WITH_PREFETCH_FILES = 0x400
    EXTERNAL = 0x800
    HAS_TAR_HEADER = 0x1000_0000
    HAS_TOC = 0x2000_0000
    CAP_TAR_TOC = 0x4000_0000
    _V5_NO_EXT_BLOB_TABLE = 0x8000_0000


# Bits the reference rejects on disk (`BlobFeatures::try_from`): 0xf000 and the internal bit 31.
BLOB_FEATURES_INVALID_MASK = 0x0000_F000 | 0x8000_0000


class ChunkFlags(enum.IntFlag):
    """``BlobChunkFlags`` (storage/src/device.rs) as stored in v5/v6 chunk records."""

    COMPRESSED = 0x1
    HOLECHUNK = 0x2
    ENCRYPTED = 0x4
    BATCH = 0x8
    HAS_CRC32 = 0x10


class InodeFlags(enum.IntFlag):
    """``RafsInodeFlags`` (rafs/src/metadata/inode.rs), stored in v5 inodes."""

    SYMLINK = 0x1
    HARDLINK = 0x2
    XATTR = 0x4
    HAS_HOLE = 0x8


def flag_words(flags: type[enum.IntFlag], value: int) -> list[str]:
    """Names of the bits set in ``value``, plus a hex remainder for bits the enum does not know."""
    words, rest = [], value
    for member in flags:
        if member.value and value & member.value == member.value:
            words.append(member.name)
            rest &= ~member.value
    if rest:
        words.append(f"{rest:#x}")
    return words


@dataclass(slots=True, repr=False)
class Chunk(display.Described):
    """One chunk of a regular file: where its bytes live in a blob and what they hash to.

    Offsets are those of the reference's ``BlobChunkInfo``: ``compressed_*`` address the blob file,
    ``uncompressed_*`` the blob's decompressed address space (the nydusd cache file), ``file_offset`` the
    position inside the file, ``index`` the chunk's number within its blob.
    """

    digest: bytes
    blob_index: int
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    file_offset: int
    index: int
    flags: int = 0
    crc32: int = 0

    @property
    def is_compressed(self) -> bool:
        """Whether the stored bytes are compressed (``COMPRESSED`` flag); if not they are the data itself."""
        return bool(self.flags & ChunkFlags.COMPRESSED)

    @property
    def has_crc32(self) -> bool:
        """Whether the record carries a CRC-32C of the chunk's data (nydus-image 2.3.1 and later)."""
        return bool(self.flags & ChunkFlags.HAS_CRC32)

    def __repr__(self) -> str:
        return (f"<Chunk {self.index} of blob {self.blob_index} at file offset {self.file_offset:#x}: "
                f"{self.uncompressed_size} B ({self.compressed_size} B stored) digest {display.digest(self.digest)}>")

    def _display_title(self) -> str:
        return f"Chunk {self.index} of blob {self.blob_index}"

    def _display_fields(self) -> list[tuple[str, str]]:
        return [("file offset", f"{self.file_offset:#x}"),
                ("compressed", f"{self.compressed_offset:#x} + {self.compressed_size}"),
                ("uncompressed", f"{self.uncompressed_offset:#x} + {self.uncompressed_size}"),
                ("flags", ", ".join(flag_words(ChunkFlags, self.flags)) or "-"),
                ("digest", display.digest(self.digest)),
                ("crc32", f"{self.crc32:#010x}" if self.has_crc32 else "-")]


@dataclass(slots=True, repr=False)
class Blob(display.Described):
    """A data blob as the bootstrap describes it (v5 blob + extended table, v6 blob table + device).

    ``cipher_key`` and ``cipher_iv`` are the blob's encryption secrets: no repr or display shows them.
    """

    index: int
    blob_id: str
    compressor: str = "none"
    digester: str = "blake3"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_count: int = 0
    compressed_size: int = 0
    uncompressed_size: int = 0
    features: int = 0
    readahead_offset: int = 0
    readahead_size: int = 0
    # v6 blob meta (CI array) location and properties
    ci_compressor: str = "none"
    ci_offset: int = 0
    ci_compressed_size: int = 0
    ci_uncompressed_size: int = 0
    toc_digest: bytes = b""
    toc_size: int = 0
    meta_digest: bytes = b""
    meta_size: int = 0
    cipher: str = "none"
    cipher_key: bytes = b""
    cipher_iv: bytes = b""
    # v6 device slot
    mapped_blkaddr: int = 0

    @property
    def feature_words(self) -> list[str]:
        """The names of the blob's feature bits (``BlobFeatures``)."""
        return flag_words(BlobFeatures, self.features)

    def has(self, feature: BlobFeatures) -> bool:
        """Whether the blob has ``feature`` (a :class:`BlobFeatures` bit)."""
        return bool(self.features & feature)

    def __repr__(self) -> str:
        return (f"<Blob {self.index} {display.text(self.blob_id)!r} {self.compressor}/{self.digester} "
                f"{self.chunk_count} chunks {self.compressed_size} B stored, {self.uncompressed_size} B data>")

    def _display_title(self) -> str:
        return f"Blob {self.index}: {self.blob_id}"

    def _display_fields(self) -> list[tuple[str, str]]:
        fields = [("compressor", self.compressor), ("digester", self.digester),
                  ("chunk size", f"{self.chunk_size:#x}"), ("chunks", str(self.chunk_count)),
                  ("stored size", display.size(self.compressed_size)),
                  ("data size", display.size(self.uncompressed_size)),
                  ("features", ", ".join(self.feature_words) or "-")]
        if self.ci_offset or self.ci_uncompressed_size:
            fields.append(("chunk info", f"{self.ci_compressor} at {self.ci_offset:#x}, "
                                         f"{self.ci_compressed_size} B stored, {self.ci_uncompressed_size} B"))
        if self.toc_size:
            fields.append(("ToC", f"{self.toc_size} B, digest {display.digest(self.toc_digest)}"))
        if self.cipher != "none":
            fields.append(("cipher", self.cipher))          # never the key or IV
        if self.mapped_blkaddr:
            fields.append(("mapped block address", str(self.mapped_blkaddr)))
        return fields


@dataclass(slots=True, repr=False)
class Inode(display.Described):
    """Attributes of one inode, as ``stat`` reports them, plus what RAFS stores beside them."""

    ino: int
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    nlink: int = 1
    rdev: int = 0
    blocks: int = 0
    flags: int = 0
    symlink: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    digest: bytes | None = None          # v5 i_digest
    chunk_count: int = 0                 # number of chunk records of a regular file

    @property
    def is_dir(self) -> bool:
        """Whether this is a directory."""
        return _stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        """Whether this is a regular file."""
        return _stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        """Whether this is a symbolic link."""
        return _stat.S_ISLNK(self.mode)

    @property
    def mtime_ns(self) -> int:
        """The modification time in nanoseconds since the epoch."""
        return self.mtime * 1_000_000_000 + self.mtime_nsec

    def __repr__(self) -> str:
        target = f" -> {display.text(self.symlink)!r}" if self.symlink is not None else ""
        return (f"<Inode {self.ino} {display.filemode(self.mode)} {self.uid}:{self.gid} {self.size} B "
                f"{display.timestamp(self.mtime_ns)}{target}>")

    def _display_title(self) -> str:
        return f"Inode {self.ino} ({display.file_type(self.mode)})"

    def _display_fields(self) -> list[tuple[str, str]]:
        fields = [("mode", f"{display.filemode(self.mode)} ({self.mode:#o})"), ("links", str(self.nlink)),
                  ("owner", f"{self.uid}:{self.gid}"), ("size", display.size(self.size)),
                  ("modified", display.timestamp(self.mtime_ns))]
        if self.rdev and not (self.is_reg or self.is_dir or self.is_symlink):
            fields.append(("device", f"{os.major(self.rdev)}:{os.minor(self.rdev)}"))
        if self.symlink is not None:
            fields.append(("target", display.text(self.symlink)))
        if self.is_reg:
            fields.append(("chunks", str(self.chunk_count)))
        if self.flags:
            fields.append(("flags", ", ".join(flag_words(InodeFlags, self.flags))))
        for name, value in self.xattrs.items():
            fields.append((f"xattr {display.text(name)}", display.text(value)))
        if self.digest:
            fields.append(("digest", display.digest(self.digest)))
        return fields


@dataclass(eq=False, repr=False)
class Node:
    """A node of a build or merge tree: a name, its inode, children (directories) and file data.

    ``data`` opens the file's bytes for a build (a path on disk or a callable returning a binary
    stream); ``chunks`` holds the chunk records once the blob writer has placed them, or those read
    from an existing image. ``hardlink_key`` groups the paths that share one regular-file inode.
    """

    name: bytes
    inode: Inode
    children: list["Node"] = field(default_factory=list)
    data: str | Callable[[], BinaryIO] | None = None
    chunks: list[Chunk] = field(default_factory=list)
    hardlink_key: object = None
    layer: int = 0

    def walk(self, path: bytes = b"/") -> Iterator[tuple[bytes, "Node"]]:
        """Pre-order (path, node) pairs; children in their stored (name) order."""
        yield path, self
        for child in self.children:
            yield from child.walk(path.rstrip(b"/") + b"/" + child.name)

    def child(self, name: bytes) -> "Node | None":
        """The child named ``name`` (bytes), or None."""
        for candidate in self.children:
            if candidate.name == name:
                return candidate
        return None

    def __repr__(self) -> str:
        kind = display.file_type(self.inode.mode)
        extra = f", {len(self.children)} children" if self.inode.is_dir else ""
        return f"<Node {display.text(self.name)!r} {kind}{extra}>"

    def __str__(self) -> str:
        return "\n".join(display.tree_lines(self))

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        """IPython's text display: the tree drawn as ``tree`` draws it."""
        printer.text(str(self))

    def _repr_html_(self) -> str:
        """A notebook's display: the drawn tree, escaped, in a ``<pre>`` block."""
        import html
        return f"<pre>{html.escape(str(self))}</pre>"


@dataclass(frozen=True, slots=True)
class TreeIndex:
    """A tree in the reference's inode index order (builder/src/core/bootstrap.rs ``build_rafs``).

    ``nodes[i - 1]`` is the node with index ``i`` (the root is 1): a directory gives consecutive
    indexes to all its children (name order, every hardlink path its own index), then its
    subdirectories are processed the same way, depth first. ``parents[i - 1]`` is the parent's
    index (0 for the root); ``child_index[i - 1]`` the index of a directory's first child (the next
    free index when it has none; 0 for other nodes). v5 records and v6 metadata follow this order.
    """

    nodes: list[Node]
    parents: list[int]
    child_index: list[int]


def index_order(root: Node) -> TreeIndex:
    """Number ``root``'s tree as the reference does; iterative, so any depth works."""
    nodes, parents, child_index = [root], [0], [0]
    stack = [0]                          # positions of directories still to process, next on top
    # the hot loop tests file types on ``mode`` directly: the ``is_dir`` property costs a call per child
    while stack:
        position = stack.pop()
        directory = nodes[position]
        if directory.inode.mode & _S_IFMT != _S_IFDIR:
            continue
        first = len(nodes)
        child_index[position] = first + 1
        children = directory.children
        nodes += children
        parents += [position + 1] * len(children)
        child_index += [0] * len(children)
        subdirs = [at for at, child in enumerate(children, first) if child.inode.mode & _S_IFMT == _S_IFDIR]
        stack.extend(reversed(subdirs))
    return TreeIndex(nodes, parents, child_index)


class ChunkInfoSource(Protocol):
    """The decoded CI records (:class:`rafs.blob.meta.ChunkInfo`) of a blob, from its blob meta: given to
    the v6 reader when it is made (``chunk_info_source=``) to resolve chunks its chunk table does not
    hold; :class:`rafs.image.chunks.BlobMetaChunkInfos` implements it over a blob locator."""

    def __call__(self, blob: Blob) -> Sequence | None:
        """The CI array of ``blob`` (a record of the reader's blob table), or None when it has none."""


class ImageReader(abc.ABC):
    """What every version's bootstrap reader answers; :class:`rafs.image.Image` asks only this.

    Inode numbers are whatever the format uses at run time (v5 ``i_ino``, v6 nid). Readers decode
    lazily: nothing beyond the superblock and blob table is parsed before it is asked for.
    """

    version: int
    superblock: object
    blobs: list[Blob]
    root_ino: int
    chunk_size: int
    flags: SuperFlags
    size: int
    #: the bootstrap's bytes (bytes, mmap or memoryview), where data kept in the image is read from
    data: object
    #: the number of inodes, as the superblock declares it (what statfs reports as f_files)
    inode_count: int = 0

    @property
    def compressor(self) -> str:
        """Compression algorithm of the image's data chunks, from the superblock flags."""
        return self.flags.compressor

    @property
    def digester(self) -> str:
        """Digest algorithm of the image (from the superblock flags): blake3 or sha256."""
        return self.flags.digester

    @abc.abstractmethod
    def inode(self, ino: int) -> Inode:
        """The inode ``ino``; InvalidImageError if it does not exist or is malformed."""

    def inode_uncached(self, ino: int) -> Inode:
        """The inode ``ino`` decoded afresh, without touching the inode cache: a bulk walk visits each
        inode once, so caching would only cost time and evict what lookups keep there."""
        return self.inode(ino)

    def stat_values(self, ino: int) -> tuple:
        """(st_mode, st_ino, st_nlink, st_uid, st_gid, st_size, st_mtime_ns, st_rdev, st_blocks, st_dev)
        of ``ino``, in the order of :class:`rafs.Stat`'s fields. A reader may answer from the raw record
        without making an :class:`Inode`, for walks that stat a whole tree."""
        inode = self.inode_uncached(ino)
        return (inode.mode, inode.ino, inode.nlink, inode.uid, inode.gid, inode.size,
                inode.mtime * 1_000_000_000 + inode.mtime_nsec, inode.rdev, inode.blocks, 0)

    def stat_list(self, inos) -> list[tuple]:
        """:meth:`stat_values` of every inode in ``inos``; a reader may decode them in bulk."""
        return [self.stat_values(ino) for ino in inos]

    @abc.abstractmethod
    def entries(self, ino: int) -> Iterator[tuple[bytes, int]]:
        """(name, ino) of the directory's children in name order, without ``.`` and ``..``."""

    def listing(self, ino: int) -> tuple[list[bytes], list[int]]:
        """The names and inode numbers of :meth:`entries`, as two lists."""
        pairs = list(self.entries(ino))
        return [name for name, _ in pairs], [child for _, child in pairs]

    def lookup(self, ino: int, name: bytes) -> int | None:
        """The inode number of ``name`` in directory ``ino``, or None (a linear scan; formats override it)."""
        for child_name, child_ino in self.entries(ino):
            if child_name == name:
                return child_ino
        return None

    @abc.abstractmethod
    def chunks(self, ino: int) -> list[Chunk]:
        """The chunk records of a regular file, in file order (holes leave gaps in file_offset)."""

    def prefetch_inodes(self) -> list[int]:
        """Inodes named by the bootstrap's prefetch table, in table order."""
        return []

    def verify_structure(self) -> Iterator[str]:
        """Problems in the metadata beyond what reading the tree finds (empty when sound)."""
        return iter(())

    def describe_extra(self) -> dict:
        """Format-specific fields for ``rafs inspect`` beyond the common summary (none by default)."""
        return {}

    def zdata_chunk_reader(self):
        """The chunk source of :data:`ZDATA_BLOB_INDEX` (compressed EROFS data): only EROFS has one."""
        raise InvalidImageError(f"a chunk refers to compressed EROFS data, which a RAFS v{self.version} image "
                                "cannot hold", structure="chunk info")

    def close(self) -> None:
        """Release what the reader holds (mapped files); a no-op unless a format needs it."""
        pass
