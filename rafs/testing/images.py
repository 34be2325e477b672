"""Build options as a strategy, and images built from tree descriptions or hand-made model trees.

:func:`build_options` draws keyword arguments for :class:`rafs.Builder` (version, compressor, digester,
chunk size, inline meta, blob ToC, and when asked batch size and encryption) that the builder accepts.
:func:`build_tree` materialises a tree description and builds it; :func:`build_node` builds a
:class:`rafs.model.Node` tree as it is, names and all, which is how hostile images (``..``, ``/`` or NUL
in names) are made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from hypothesis import strategies as st

from ..model import Node
from ..options import COMPRESSORS, DIGESTERS, FS_VERSIONS
from .tree_io import materialise
from .trees import ROOT, with_parents, without

CHUNK_SIZES = (0x1000, 0x2000, 0x10000, 0x100000)
BATCH_SIZES = (0, 0x1000, 0x2000, 0x10000, 0x100000)


@st.composite
def build_options(draw, *, versions=FS_VERSIONS, compressors=COMPRESSORS, digesters=DIGESTERS,
                  chunk_sizes=CHUNK_SIZES, inline_meta: bool | None = None, blob_toc: bool | None = None,
                  repeatable: bool = True, batch_sizes=(0,), encrypt: bool | None = False) -> dict:
    """Keyword arguments for :class:`rafs.Builder`: ``fs_version``, ``compressor``, ``digester``,
    ``chunk_size``, ``repeatable`` and, for v6, ``blob_inline_meta`` and ``features=("blob-toc",)``.
    Pass ``inline_meta``/``blob_toc`` True or False to pin them instead of drawing.

    v6 only, and off unless asked (so the draws of existing callers do not change): ``batch_sizes``
    (e.g. :data:`BATCH_SIZES`) draws ``batch_size`` among those not above the chunk size;
    ``encrypt=None`` draws ``encrypt``, True pins it."""
    version = draw(st.sampled_from(versions))
    options = {"fs_version": version, "compressor": draw(st.sampled_from(compressors)),
               "digester": draw(st.sampled_from(digesters)), "chunk_size": draw(st.sampled_from(chunk_sizes)),
               "repeatable": repeatable}
    if version == 6:
        options["blob_inline_meta"] = draw(st.booleans()) if inline_meta is None else inline_meta
        toc = draw(st.booleans()) if blob_toc is None else blob_toc
        options["features"] = ("blob-toc",) if toc else ()
        fitting = [size for size in batch_sizes if size <= options["chunk_size"]]
        if fitting != [0] and fitting:
            options["batch_size"] = draw(st.sampled_from(fitting))
        if encrypt is None:
            options["encrypt"] = draw(st.booleans())
        elif encrypt:
            options["encrypt"] = True
    return options


@dataclass
class Built:
    """Where a build put its outputs: open the image with ``rafs.open(built.source, **built.open_kwargs)``."""

    source: str
    blob_dir: str | None
    result: object = None

    @property
    def open_kwargs(self) -> dict:
        """``blob_dir`` for a separate bootstrap; nothing for a blob carrying its bootstrap (inline
        meta), which is also where the data is read from."""
        return {"blob_dir": self.blob_dir} if self.blob_dir is not None else {}

    def open(self, **kwargs):
        """The built image opened with :func:`rafs.open` (``kwargs`` added to :attr:`open_kwargs`)."""
        import rafs
        return rafs.open(self.source, **{**self.open_kwargs, **kwargs})


def _write(builder_obj, workdir: str, options: dict) -> Built:
    blob_dir = os.path.join(workdir, "blobs")
    os.makedirs(blob_dir, exist_ok=True)
    if options.get("blob_inline_meta"):
        blob = os.path.join(workdir, "image.blob")
        result = builder_obj.write(blob=blob)
        return Built(blob, None, result)
    bootstrap = os.path.join(workdir, "image.boot")
    result = builder_obj.write(bootstrap=bootstrap, blob_dir=blob_dir)
    return Built(bootstrap, blob_dir, result)


def build_tree(tree: dict, workdir, **options) -> Built:
    """Materialise ``tree`` under ``workdir/src`` and build it with :class:`rafs.Builder` ``options``
    into ``workdir`` (bootstrap ``image.boot`` and ``blobs/``, or ``image.blob`` with inline meta)."""
    workdir = os.fspath(workdir)
    source = materialise(tree, os.path.join(workdir, "src"))
    import rafs
    return _write(rafs.Builder(source, source_type="dir-rafs", **options), workdir, options)


def build_node(root: Node, workdir, **options) -> Built:
    """Build a hand-made :class:`rafs.model.Node` tree as it is (the tree is consumed: the builder
    numbers it and fills in chunks). Names are not checked, so hostile images can be made."""
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    import rafs
    return _write(rafs.Builder.from_tree(root, **options), workdir, options)


def as_built(tree: dict, *, repeatable: bool = True, whiteout_spec: str = "oci") -> dict:
    """The tree a directory build of ``tree`` should read back as: the root's mtime is 0 (as in the
    reference), uid/gid are 0 when ``repeatable``, and a single-layer build leaves out whiteouts
    (``.wh.*`` names for ``oci``, 0/0 character devices for ``overlayfs``)."""
    out = with_parents(tree)
    out[ROOT] = replace(out[ROOT], mtime=0, mtime_nsec=0)
    if repeatable:
        out = {p: e if e.kind == "hardlink" else replace(e, uid=0, gid=0) for p, e in out.items()}
    if whiteout_spec == "oci":
        out = without(out, lambda p, e: p.rsplit(b"/", 1)[-1].startswith(b".wh."))
    elif whiteout_spec == "overlayfs":
        out = without(out, lambda p, e: e.kind == "char" and e.rdev == 0)
    return out


def blob_devices(image, workdir) -> list[str]:
    """Files holding each blob's decompressed address space (what nydusd's ``.blob.data`` cache
    holds): every chunk at its ``uncompressed_offset``, holes elsewhere. A RAFS v6 bootstrap mounts
    with the kernel's EROFS over these as extra devices, in blob-table order."""
    workdir = os.fspath(workdir)
    paths = []
    for blob in image.blobs:
        path = os.path.join(workdir, f"blob{blob.index}.data")
        with open(path, "wb") as f:
            f.truncate(blob.uncompressed_size)
        paths.append(path)
    seen = set()
    fds = [os.open(p, os.O_WRONLY) for p in paths]
    try:
        for _, inode in image.iter_entries("/"):
            if not inode.is_reg:
                continue
            for chunk in image.reader.chunks(inode.ino):
                key = (chunk.blob_index, chunk.uncompressed_offset)
                if key in seen or not 0 <= chunk.blob_index < len(fds):
                    continue
                seen.add(key)
                os.pwrite(fds[chunk.blob_index], image.read_chunk(chunk), chunk.uncompressed_offset)
    finally:
        for fd in fds:
            os.close(fd)
    return paths
