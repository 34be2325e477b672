"""The fast ``struct`` codecs of the RAFS v6 / EROFS records, derived once from ``layout`` and shared
by the reader, the writer and the dirent and xattr helpers (see :class:`rafs._records.FastRecord`)."""

from .. import _records
from . import layout

SUPERBLOCK = _records.FastRecord(layout.SuperBlock, "v6 superblock")
SUPERBLOCK_EXT = _records.FastRecord(layout.SuperBlockExt, "v6 superblock extension")
DEVICE = _records.FastRecord(layout.Device, "v6 device slot")
BLOB = _records.FastRecord(layout.Blob, "v6 blob table entry")
CHUNK_INFO = _records.FastRecord(layout.ChunkInfo, "v6 chunk info")
CHUNK_INDEX = _records.FastRecord(layout.ChunkIndex, "v6 chunk index")
DIRENT = _records.FastRecord(layout.Dirent, "v6 dirent")
XATTR_HEADER = _records.FastRecord(layout.XattrIbodyHeader, "v6 xattr body header")
XATTR_ENTRY = _records.FastRecord(layout.XattrEntry, "v6 xattr entry")
# compact and extended inodes, by the i_format layout bit
INODE_RECORDS = {version: _records.FastRecord(schema, f"v6 {name} inode") for (version, schema), name
                 in zip(layout.INODE_LAYOUTS.items(), ("compact", "extended"))}
INODE_EXTENDED = INODE_RECORDS[layout.EROFS_INODE_LAYOUT_EXTENDED]
