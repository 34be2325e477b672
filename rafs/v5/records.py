"""The fast ``struct`` codecs of the RAFS v5 tables, derived once from ``layout`` and shared by the
reader and the writer (see :class:`rafs._records.FastRecord`)."""

from .. import _records
from . import layout

SUPERBLOCK = _records.FastRecord(layout.SuperBlock, "v5 superblock")
INODE = _records.FastRecord(layout.Inode, "v5 inode")
CHUNK = _records.FastRecord(layout.ChunkInfo, "v5 chunk info")
EXT_BLOB = _records.FastRecord(layout.ExtBlobEntry, "v5 extended blob entry")
BLOB_HEADER = _records.FastRecord(layout.BlobTableEntryHeader, "v5 blob table entry")
