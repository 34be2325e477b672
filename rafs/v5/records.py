"""The fast ``struct`` codecs of the RAFS v5 tables, derived once from ``layout`` and shared by the
reader and the writer (see :class:`rafs._codec.FastRecord`)."""

from .. import _codec
from . import layout

SUPERBLOCK = _codec.FastRecord(layout.SuperBlock, "v5 superblock")
INODE = _codec.FastRecord(layout.Inode, "v5 inode")
CHUNK = _codec.FastRecord(layout.ChunkInfo, "v5 chunk info")
EXT_BLOB = _codec.FastRecord(layout.ExtBlobEntry, "v5 extended blob entry")
BLOB_HEADER = _codec.FastRecord(layout.BlobTableEntryHeader, "v5 blob table entry")
