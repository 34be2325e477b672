"""A prefetch blob for an image (``nydus-image optimize``, builder/src/optimize_prefetch.rs): the chunks of
the files a workload reads first, copied in that order into one new blob, so that they are contiguous and
one ranged request (or a few) fetches them all.

The new bootstrap keeps every blob of the source and appends the prefetch blob, marked
``IS_SEPARATED_WITH_PREFETCH_FILES``; the listed files' chunk records (those of every hard link too) point
into it, every other file is untouched. Files come in the order listed; a file listed again, a path that
is not in the image or not absolute is skipped with a warning, and only regular files count.

The list (``--prefetch-files``) is nydusify's JSON, ``{"version": "v1", "files": [{"path": "/abs",
"ranges": [[offset, size], ...] | null}]}`` (with ``ranges`` only the chunks overlapping them move), or
what ``rafs mount --access-pattern-file`` writes: absolute paths one a line, or its JSON access records.

Where rafs departs from the reference, and why:
- the listed files also become the bootstrap's prefetch table (the reference writes none), so a mount
  with ``fs_prefetch`` fetches exactly the prefetch blob's data;
- a range overlaps a chunk only when they share a byte (the reference also counts a range that ends
  where the chunk starts);
- a chunk repeated in the list is stored once (the reference stores it again each time);
- chunks of blobs with another compressor, encrypted or batched are stored again with the image's
  compressor (the reference copies their stored bytes, which the new blob's compressor cannot decode).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass

from ..errors import InvalidArgumentError, ParameterError
from ..model import BlobFeatures, Chunk, Node, SuperFlags
from ..patterns import read_list_file, read_pattern_file
from . import tree
from .outputs import write_whole
from .parent import load_bootstrap
from .report import BuildResult, Trace, output_document
from .rewrite import ChunkCopier
from .writers import write_bootstrap

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_BOOTSTRAP = "optimized_bootstrap"     # nydus-image optimize without --output-bootstrap


@dataclass(frozen=True)
class PrefetchFile:
    """One file to put in the prefetch blob: its absolute path and, optionally, the byte ranges
    ``(offset, size)`` whose chunks move (all its chunks when None)."""

    path: str
    ranges: tuple[tuple[int, int], ...] | None = None

    def wants(self, chunk: Chunk) -> bool:
        """Whether ``chunk`` of this file moves: it shares a byte with one of the ranges (or no ranges given)."""
        if self.ranges is None:
            return True
        start, end = chunk.file_offset, chunk.file_offset + chunk.uncompressed_size
        return any(offset < end and start < offset + size for offset, size in self.ranges)


def read_prefetch_files(path, *, option: str = "--prefetch-files") -> list[PrefetchFile]:
    """The files a prefetch list names (see the module docstring for the formats)."""
    data = read_list_file(path, option)
    if data.lstrip()[:1] == b"{":
        return _nydusify_list(data, f"{option} {path}")
    return [PrefetchFile(p) for p in read_pattern_file(path, option=option)]


def _nydusify_list(data: bytes, where: str) -> list[PrefetchFile]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise InvalidArgumentError(f"{where}: failed to parse prefetch file as JSON: {exc}") from None
    if document.get("version") != "v1":
        raise InvalidArgumentError(f"{where}: unsupported prefetch file version: {document.get('version')!r}")
    entries = document.get("files")
    if not isinstance(entries, list):
        raise InvalidArgumentError(f"{where}: \"files\" must be a list")
    files = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise InvalidArgumentError(f"{where}: files[{position}] needs a \"path\" string")
        ranges = entry.get("ranges")
        if ranges is not None:
            if not isinstance(ranges, list) or not all(
                    isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                and 0 <= v < 1 << 64 for v in r) for r in ranges):
                raise InvalidArgumentError(f"{where}: files[{position}].ranges must be [[offset, size], ...] of "
                                           "unsigned integers")
            ranges = tuple((offset, size) for offset, size in ranges)
        files.append(PrefetchFile(entry["path"], ranges))
    return files


def optimize(source, prefetch_files: list[PrefetchFile], *, output_blob_dir, output_bootstrap=None,
             blob_dir=None, blobs=None, config=None) -> BuildResult:
    """Write the prefetch blob of ``prefetch_files`` into ``output_blob_dir`` and the new bootstrap to
    ``output_bootstrap`` (default ``optimized_bootstrap``); the source's blobs come from ``blob_dir``,
    ``blobs`` or ``config`` (as :func:`rafs.open` takes them)."""
    if output_blob_dir is None or not os.path.isdir(output_blob_dir):
        raise ParameterError("{output_blob_dir} {path!r}: no such directory", path=output_blob_dir)
    output_bootstrap = output_bootstrap or DEFAULT_OUTPUT_BOOTSTRAP
    trace = Trace()
    import rafs
    with trace.timed("total_build"):
        layer = load_bootstrap(source)
        if not layer.blobs:
            raise InvalidArgumentError(f"{source}: the image has no data blob to take prefetch files from")
        paths = _paths(layer.root)
        links: dict[object, list[Node]] = {}
        for node in paths.values():
            if node.hardlink_key is not None:
                links.setdefault(node.hardlink_key, []).append(node)
        like = dataclasses.replace(layer.blobs[0], compressor=layer.flags.compressor, digester=layer.flags.digester,
                                   chunk_size=layer.chunk_size)
        prefetch: list[Node] = []
        with rafs.open(source, blob_dir=blob_dir, blobs=blobs, config=config) as image, \
                trace.timed("dump_blob"):
            copier = ChunkCopier(image, output_blob_dir, index=len(layer.blobs), like=like, version=layer.version,
                                 aligned=layer.version == 6 or layer.blobs[0].has(BlobFeatures.ALIGNED),
                                 features=BlobFeatures.IS_SEPARATED_WITH_PREFETCH_FILES)
            try:
                done: set[int] = set()
                for wanted in prefetch_files:
                    node = _node(paths, wanted.path)
                    if node is None or id(node.inode) in done:
                        continue
                    done.add(id(node.inode))
                    if not node.inode.is_reg:
                        continue
                    prefetch.append(node)
                    moving = [c for c in node.chunks if wanted.wants(c)]
                    moved = dict(zip(map(id, moving), copier.copy_all(moving)))
                    chunks = [moved.get(id(c), c) for c in node.chunks]
                    for other in links.get(node.hardlink_key, [node]):
                        other.chunks = [_at(old, new) for old, new in zip(other.chunks, chunks)]
            except BaseException:
                copier.discard()
                raise
            blob = copier.finish()
        table = [*layer.blobs, blob]
        with trace.timed("dump_bootstrap"):
            order = tree.number_tree(layer.root)
            data = write_bootstrap(layer.root, table, fs_version=layer.version, chunk_size=layer.chunk_size,
                                   flags=SuperFlags(layer.flags), prefetch=prefetch or None, order=order)
            path = write_whole(output_bootstrap, data)
    blob_ids = [b.blob_id for b in table]
    output = output_document(blob_ids, trace, layer.version, layer.flags.compressor)
    output["bootstrap"] = path or ""
    log.info("prefetch blob %s: %d chunks, %d bytes, for %d files", blob.blob_id, blob.chunk_count,
             blob.compressed_size, len(prefetch))
    return BuildResult(bootstrap=path, blob=os.path.join(os.fspath(output_blob_dir), blob.blob_id),
                       blob_ids=blob_ids, bootstrap_size=len(data), blob_size=blob.compressed_size,
                       fs_version=layer.version, compressor=layer.flags.compressor, blobs=table, output=output,
                       blob_id=blob.blob_id)


def _paths(root: Node) -> dict[bytes, Node]:
    """Every node by its absolute path."""
    found: dict[bytes, Node] = {}
    stack = [(b"", root)]
    while stack:
        prefix, node = stack.pop()
        path = prefix or b"/"
        found[path] = node
        stack.extend((prefix + b"/" + child.name, child) for child in node.children)
    return found


def _node(paths: dict[bytes, Node], path: str) -> Node | None:
    if not path.startswith("/"):
        log.warning("prefetch file path is not absolute, skipping: %s", path)
        return None
    node = paths.get(os.fsencode(os.path.normpath(path)).replace(b"//", b"/"))
    if node is None:
        log.warning("prefetch file %s is not in the image, skipped", path)
    return node


def _at(old: Chunk, new: Chunk) -> Chunk:
    """``old`` (a file's record) moved where ``new`` is, its own file offset kept."""
    if old is new:
        return old
    return dataclasses.replace(new, file_offset=old.file_offset)
