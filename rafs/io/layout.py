"""On-disk layouts of the nydusd blob cache (``filecache`` / ``blobcache``) in its ``work_dir``.

Defined by storage/src/cache/filecache/mod.rs and storage/src/cache/state/persist_map.rs:

* ``<blob id>.blob.data``: the blob's chunks, decompressed, each at its ``uncompressed_offset``; a
  sparse file as long as the blob's ``uncompressed_size``.
* ``<blob id>.blob.data.chunk_map``: a 4096-byte :data:`CHUNK_MAP_HEADER` then a bitmap of
  ``ceil(chunk_count / 8)`` bytes, chunk ``i`` at byte ``i >> 3`` with mask ``0x80 >> (i & 7)``
  (MSB first). A file of any other size is refused.
* ``<blob id>.blob.meta``: the decompressed CI array padded to 4 KiB then the CI header (v6 blobs);
  its format belongs to :mod:`rafs.blob.meta`.
"""

from construct import Bytes, Const, Int32ul, Struct

DATA_SUFFIX = ".blob.data"
CHUNK_MAP_SUFFIX = ".blob.data.chunk_map"
META_SUFFIX = ".blob.meta"

CHUNK_MAP_MAGIC = 0x424D_4150        # MAGIC1
CHUNK_MAP_MAGIC2 = 0x434D_4150       # MAGIC2
CHUNK_MAP_ALL_READY = 0x4D4D_4150    # MAGIC_ALL_READY, set once every chunk is cached
CHUNK_MAP_VERSION = 1
CHUNK_MAP_HEADER_SIZE = 4096

CHUNK_MAP_HEADER = Struct(
    "magic" / Const(CHUNK_MAP_MAGIC, Int32ul),
    "version" / Int32ul,
    "magic2" / Int32ul,         # MAGIC2 from version 1 on
    "all_ready" / Int32ul,      # CHUNK_MAP_ALL_READY or 0
    "reserved" / Bytes(CHUNK_MAP_HEADER_SIZE - 16),
)
assert CHUNK_MAP_HEADER.sizeof() == CHUNK_MAP_HEADER_SIZE
