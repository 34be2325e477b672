"""The option vocabularies: every named choice a caller of rafs may pass, in one public place.

The library checks its arguments against these tuples and the ``rafs`` command offers them as its
``choices=``, so ``--help`` lists exactly what the library accepts. The order is the order ``--help``
prints. This module imports nothing, so a command's ``--help`` stays cheap.
"""

from __future__ import annotations

#: RAFS format versions rafs builds (``Builder(fs_version=)``; 6 is the kernel's EROFS).
FS_VERSIONS = (5, 6)
#: Compressors a build writes chunks with (``compressor=``); gzip chunks are read, never written.
COMPRESSORS = ("none", "lz4_block", "zstd")
#: Chunk digest algorithms (``digester=``); every digest is 32 bytes.
DIGESTERS = ("blake3", "sha256")
#: Source types that read a path (``source_type=``; the ``--type`` of nydus-image create): a directory
#: (``directory`` is the reference's older name for ``dir-rafs``) or a tar layer, plain or compressed
#: (gzip and zstd found by magic, as the reference does; an eStargz is a tar.gz).
SOURCE_TYPES = ("dir-rafs", "directory", "tar-rafs", "targz-rafs", "estargz-rafs")
#: Source types read from a tarball.
TAR_SOURCE_TYPES = ("tar-rafs", "targz-rafs", "estargz-rafs")
#: How a layer marks deletions and opaque directories (``whiteout_spec=``): OCI ``.wh.`` files,
#: overlayfs character devices and xattrs, or none (such entries are kept as they are).
WHITEOUT_SPECS = ("oci", "overlayfs", "none")
#: What a build or merge prefetches (``prefetch_policy=``): nothing, the files named by patterns
#: (``fs``), or whole blobs (``blob``).
PREFETCH_POLICIES = ("none", "fs", "blob")
#: Optional build features (``features=``): ``blob-toc`` adds chunk digests and a ToC to the blob.
FEATURES = ("blob-toc",)
#: How chunks are laid out in a data blob (``blob_layout=``): ``packed`` back to back as nydus-image
#: writes them; ``mapped`` uncompressed v6 chunks at their block addresses (the kernel mounts the blob).
BLOB_LAYOUTS = ("packed", "mapped")
#: Compatibility modes of a build (``compat=``): none, or nydus-image 2.2's output.
COMPAT_MODES = (None, "2.2")
#: How ``rafs mount`` serves an image: FUSE, or the kernel's EROFS filled on demand (fanotify).
FS_DRIVERS = ("fuse", "erofs")
#: Storage backends named by type that blobs are read through (``rafs unpack --backend-type``; a
#: localfs backend is a blob directory, and the registry backend comes with ``docker://`` references).
BACKEND_TYPES = ("s3", "http-proxy")
#: Storage backends a build can push its bootstrap and blob to (nydusify's ``--backend-type``).
PUSH_BACKEND_TYPES = ("s3",)
#: Fills of a dm-verity tree's unused digest slots: ``nydus`` (as nydus-image) or ``zero`` (as
#: veritysetup format).
VERITY_SPARES = ("nydus", "zero")
