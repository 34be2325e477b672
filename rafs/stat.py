"""Chunk deduplication statistics of one or many images, as ``nydus-image stat`` computes them
(src/bin/nydus-image/stat.rs in the reference), with its JSON schema and its text report.

Per image (the *base* images are summed into one record, the *target* has its own):

- ``dirs``, ``files`` (every regular file entry, hardlinks included), ``symlinks``;
- for each regular file, once per inode (a hardlink's other names add nothing more): ``file_size``,
  ``padding_size`` (up to the next 4 KiB), ``chunks`` (chunk records), ``comp_size`` / ``uncomp_size``
  (their stored / data bytes; ``uncomp_size`` also takes the padding at the end), ``file_sizes[n]``
  (files whose size needs ``n`` bits, the last bucket 44 and up) and ``chunk_sizes[k]`` (how many chunks
  the files would have with ``2^(12+k)``-byte chunks);
- ``own_*``: the distinct chunks (by digest) of the image; for the target, those no base image has,
  and ``ref_*`` those a base image has (same digest and data size): what building the target with the
  bases as a chunk dictionary would store and reuse;
- ``dedup_*`` (base record): distinct chunks over all base images.

With a directory of images the report adds a table of global dedup thresholds: for threshold ``t``
(1-20), a chunk present in at least ``t`` images is stored once, others once per image.
As in the reference a chunk enters the cross-image dictionary only when the image's digester is the
one asked for (``--digester``, blake3 by default).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat

from .blob.ci import round_up_4k
from .display import Table

FILE_SIZE_BUCKETS = 45
CHUNK_SIZE_BITS = range(12, 21)
DEDUP_THRESHOLDS = 20


@dataclasses.dataclass
class ImageInfo:
    """One image's (or the sum of the base images') statistics; field order is the JSON's."""

    dirs: int = 0
    files: int = 0
    symlinks: int = 0
    chunks: int = 0
    file_size: int = 0
    comp_size: int = 0
    uncomp_size: int = 0
    padding_size: int = 0
    chunk_sizes: list = dataclasses.field(default_factory=lambda: [0] * len(CHUNK_SIZE_BITS))
    file_sizes: list = dataclasses.field(default_factory=lambda: [0] * FILE_SIZE_BUCKETS)
    dedup_chunks: int = 0
    dedup_comp_size: int = 0
    dedup_uncomp_size: int = 0
    own_chunks: int = 0
    own_comp_size: int = 0
    own_uncomp_size: int = 0
    ref_chunks: int = 0
    ref_comp_size: int = 0
    ref_uncomp_size: int = 0

    @property
    def dedup_ratio(self) -> float:
        """Distinct chunk data over all chunk data (1.0: nothing shared)."""
        raw = self.uncomp_size - self.padding_size
        return (self.own_uncomp_size + self.ref_uncomp_size) / raw if raw > 0 else 1.0


@dataclasses.dataclass
class DedupInfo:
    """Totals for one global dedup threshold (the text report's table; not in the JSON)."""

    raw_chunks: int = 0
    dedup_chunks: int = 0
    comp_content_size: int = 0
    comp_base_size: int = 0
    comp_image_size: int = 0
    uncomp_content_size: int = 0
    uncomp_base_size: int = 0
    uncomp_image_size: int = 0


class ImageStat:
    """Accumulates :class:`ImageInfo` over base images and a target; :meth:`finalize` once, then report."""

    def __init__(self, digester: str = "blake3"):
        self.digester = digester
        self.dedup_enabled = False
        self.target_enabled = False
        self.base_image = ImageInfo()
        self.target_image = ImageInfo()
        # digest -> [uncompressed size, compressed size, images holding it]
        self._dict: dict[bytes, list[int]] = {}
        self.dedup_info = [DedupInfo() for _ in range(DEDUP_THRESHOLDS)]
        self._final = False

    def add(self, image, *, base: bool = True) -> None:
        """Count ``image`` (a :class:`rafs.Image`) as a base image, or as the target."""
        info = self.base_image if base else self.target_image
        if not base:
            self.target_enabled = True
        reader = image.reader
        seen_links: set[int] = set()
        own: dict[bytes, tuple[int, int]] = {}
        for _path, inode in image.iter_entries():
            if inode.is_reg:
                info.files += 1
                chunks = reader.chunks(inode.ino)
                for chunk in chunks:      # the reference fills its dictionary before skipping hardlinks
                    own.setdefault(bytes(chunk.digest), (chunk.uncompressed_size, chunk.compressed_size))
                if inode.nlink > 1:
                    if inode.ino in seen_links:
                        continue
                    seen_links.add(inode.ino)
                size = inode.size
                info.file_sizes[min(size.bit_length(), FILE_SIZE_BUCKETS - 1)] += 1
                info.file_size += size
                info.padding_size += round_up_4k(size) - size
                info.chunks += len(chunks)
                info.comp_size += sum(c.compressed_size for c in chunks)
                info.uncomp_size += sum(c.uncompressed_size for c in chunks)
                for k, bits in enumerate(CHUNK_SIZE_BITS):
                    info.chunk_sizes[k] += -(-size >> bits)
            elif inode.is_dir:
                info.dirs += 1
            elif inode.is_symlink:
                info.symlinks += 1
        shared = self._dict if image.blobs and image.blobs[0].digester == self.digester else None
        for digest, (usize, csize) in own.items():
            entry = self._dict.get(digest)
            if not base and entry is not None and (entry[0] == 0 or entry[0] == usize):
                info.ref_chunks += 1
                info.ref_comp_size += csize
                info.ref_uncomp_size += usize
                continue
            info.own_chunks += 1
            info.own_comp_size += csize
            info.own_uncomp_size += usize
            if base and shared is not None:
                if entry is None:
                    shared[digest] = [usize, csize, 1]
                else:
                    entry[2] += 1

    def finalize(self) -> None:
        """Add the padding to the data sizes and count the global dedup (once)."""
        if self._final:
            return
        self._final = True
        self.base_image.uncomp_size += self.base_image.padding_size
        if self.target_enabled:
            self.target_image.uncomp_size += self.target_image.padding_size
        if not self.dedup_enabled:
            return
        for usize, csize, count in self._dict.values():
            for t, info in enumerate(self.dedup_info):
                info.raw_chunks += count
                info.uncomp_content_size += count * usize
                info.comp_content_size += count * csize
                if t < count:            # present in more than t images: stored once
                    info.dedup_chunks += 1
                    info.uncomp_base_size += usize
                    info.comp_base_size += csize
                else:
                    info.dedup_chunks += count
                    info.uncomp_image_size += count * usize
                    info.comp_image_size += count * csize
            self.base_image.dedup_chunks += 1
            self.base_image.dedup_comp_size += csize
            self.base_image.dedup_uncomp_size += usize

    def to_json(self) -> dict:
        """The reference's ``-J`` document."""
        self.finalize()
        return {"dedup_enabled": self.dedup_enabled, "target_enabled": self.target_enabled,
                "base_image": dataclasses.asdict(self.base_image),
                "target_image": dataclasses.asdict(self.target_image)}

    def dump_json(self, path) -> None:
        """Write :meth:`to_json` as nydus-image does (compact JSON, no newline)."""
        with open(path, "w") as f:
            json.dump(self.to_json(), f, separators=(",", ":"))

    def report(self) -> str:
        """The reference's text report."""
        self.finalize()
        parts = []
        if self.target_enabled:
            parts.append("Target Image Statistics:\n" + _image_report(self.target_image))
        parts.append("\n\nBase Image Statistics:\n" + _image_report(self.base_image))
        if self.dedup_enabled:
            lines = ["\n\nChunk Deduplication Statistics:",
                     "Global Dedup Thresh:\tRaw Chunks:\tDedup Chunks:\tComp Content Size:\tComp Base Size:\t"
                     "Comp Image Size:\tUncomp Content Size:\tUncomp Base Size\tUncomp Image Size"]
            for t, info in enumerate(self.dedup_info):
                if info.dedup_chunks == 0:
                    break
                lines.append(f"{t + 1:<24}" + "".join(f"0x{value:<14x}" for value in dataclasses.astuple(info)))
            parts.append("\n".join(lines) + "\n")
        return "".join(parts)

    # -- tables for notebooks --------------------------------------------------------------------

    def summary_table(self) -> Table:
        """One row per record (base, and target when given): counts, sizes and dedup ratio."""
        self.finalize()
        rows = []
        for name, info in (("base", self.base_image), ("target", self.target_image)):
            if name == "target" and not self.target_enabled:
                continue
            row = {"image": name}
            for key in ("dirs", "files", "symlinks", "chunks", "file_size", "comp_size", "uncomp_size",
                        "own_chunks", "own_comp_size", "ref_chunks", "ref_comp_size", "dedup_chunks"):
                row[key] = getattr(info, key)
            row["dedup_ratio"] = round(info.dedup_ratio, 4)
            rows.append(row)
        return Table(rows, title="Image statistics")

    def dedup_table(self) -> Table:
        """The global dedup thresholds (directory mode), one row per threshold."""
        self.finalize()
        rows = [{"threshold": t + 1, **dataclasses.asdict(info)}
                for t, info in enumerate(self.dedup_info) if info.dedup_chunks]
        return Table(rows, columns=["threshold"] + [f.name for f in dataclasses.fields(DedupInfo)],
                     title="Chunk deduplication by global threshold")


def _image_report(info: ImageInfo) -> str:
    lines = ["", f"Directories:            {info.dirs}", f"Files:                  {info.files}",
             f"Symlinks:               {info.symlinks}", f"Chunks:                 {info.chunks}",
             f"File Size:              {info.file_size}", f"Padding Size:           {info.padding_size}",
             f"Uncompressed Size:      {info.uncomp_size}", f"Compressed Size:        {info.comp_size}",
             "", "File Size Bits:\t\tFile Count:"]
    lines += [f"{bits}:\t\t\t{count}" for bits, count in enumerate(info.file_sizes)]
    lines += ["", "Chunk Size Bits:\tChunk Count:"]
    lines += [f"{bits}:\t\t\t{count}" for bits, count in zip(CHUNK_SIZE_BITS, info.chunk_sizes)]
    lines += ["", f"Raw Content Size:\t{info.file_size}", f"Comp Content Size:\t{info.comp_size}",
              f"Raw Chunk Count:\t{info.chunks}", f"Dedup Comp Size:\t{info.dedup_comp_size}",
              f"Dedup Uncomp Size:\t{info.dedup_uncomp_size}", f"Dedup Chunk Count:\t{info.dedup_chunks}",
              f"Owned Comp Size:\t{info.own_comp_size}", f"Owned Uncomp Size:\t{info.own_uncomp_size}",
              f"Owned Chunk Count:\t{info.own_chunks}", f"Referenced Comp Size:\t{info.ref_comp_size}",
              f"Referenced Uncomp Size:\t{info.ref_uncomp_size}", f"Referenced Chunk Count:\t{info.ref_chunks}"]
    return "\n".join(lines) + "\n"


def images_in(directory) -> list[str]:
    """The bootstraps ``stat -D`` looks at: regular files of ``directory`` without an extension that
    start like a bootstrap (a directory of data blobs is not read whole just to be refused)."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=True) and not os.path.splitext(entry.name)[1] and \
                    _looks_like_bootstrap(entry.path):
                found.append(entry.path)
    return sorted(found)


def _looks_like_bootstrap(path: str) -> bool:
    """Whether the file has a RAFS v5 or EROFS (v6) superblock, by its first 1028 bytes."""
    from .v5.reader import is_v5
    from .v6.reader import is_erofs
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)      # a FIFO swapped in never blocks us
    except OSError:
        return False
    try:
        head = os.pread(fd, 1028, 0) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        head = b""
    finally:
        os.close(fd)
    return is_v5(head[:8]) or (len(head) == 1028 and is_erofs(head))
