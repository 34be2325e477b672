"""The public :class:`Image`: browse a RAFS (v5, v6) or EROFS image like a read-only filesystem.

An :class:`Image` joins a bootstrap reader (:class:`rafs.model.ImageReader`: the format questions), a
blob locator (where the data blobs are) and the :class:`~rafs.image.chunks.ChunkStore` that reads their
chunks. Its verbs are :mod:`os`'s: ``stat``/``lstat``, ``readlink``, ``listxattr``/``getxattr``, and
one family to list a tree: ``listdir`` (names), ``scandir`` (entries with their inodes), ``walk``
(os.walk's triples), plus the pre-order walks ``iter_entries`` (path, inode) and ``iter_stats`` (path,
Stat, the fast way to stat a tree). ``dir_entries``, ``lookup`` and ``get_inode`` take inode numbers,
for inode-level servers such as :mod:`rafs.fuse`. Paths are ``str`` as in :mod:`os` (names that are
not UTF-8 come back as surrogate escapes, so none is lost) and ``bytes`` paths are accepted too.
"""

from __future__ import annotations

from typing import Iterator

from .. import display, errors, tables
from ..errors import InvalidArgumentError
from ..limits import BLOCK_SIZE, DEFAULT_MERGE_SIZE
from ..io.blobs import BlobLocator as DirectoryLocator
from ..model import META_BLOB_INDEX, ZDATA_BLOB_INDEX, Chunk, ImageReader, Inode
from ..progress import Progress
from . import check as _check, walks
from .chunks import ChunkStore, image_data_reader
from .file import MAX_READ_SIZE, ImageFile
from .paths import check_name, fsdecode, fsencode, resolve
from .protocols import BlobLocator, ChunkSource
from .stat import Stat, StatFs
from .walks import DirEntry


class Image:
    """A read-only view of a RAFS or EROFS image; a context manager.

    Use :func:`rafs.open` to make one. ``reader`` answers the format questions, ``locator`` finds the
    blobs, ``store`` reads and keeps their chunks (at most ``chunk_cache_size`` decoded chunks).
    """

    def __init__(self, reader: ImageReader, locator: BlobLocator | None = None, *, validate: bool = False,
                 name: str = "<image>", chunk_cache_size: int = 64):
        self.reader = reader
        self.locator = locator or DirectoryLocator()
        self.validate = validate
        self.name = name
        self.store = ChunkStore(reader.blobs, self.locator, validate=validate, cache_size=chunk_cache_size,
                                inline={META_BLOB_INDEX: lambda: image_data_reader(reader.data),
                                        ZDATA_BLOB_INDEX: reader.zdata_chunk_reader})

    # -- the image as a whole --------------------------------------------------------------------

    @property
    def version(self) -> int:
        """RAFS version of the bootstrap: 5, or 6 (EROFS-based)."""
        return self.reader.version

    @property
    def superblock(self):
        """The parsed on-disk superblock (v5 or v6/EROFS fields as the format names them)."""
        return self.reader.superblock

    @property
    def blobs(self):
        """The blob table: :class:`rafs.model.Blob` records, in blob index order."""
        return self.reader.blobs

    @property
    def chunk_size(self) -> int:
        """Default size of a data chunk in bytes (the last chunk of a file may be shorter)."""
        return self.reader.chunk_size

    @property
    def compressor(self) -> str:
        """Compression algorithm the superblock names for data chunks (none, lz4_block, zstd, ...)."""
        return self.reader.compressor

    @property
    def digester(self) -> str:
        """Digest algorithm of chunks and the bootstrap (blake3 or sha256)."""
        return self.reader.digester

    def __repr__(self) -> str:
        if self.closed:
            return f"<rafs.Image {self.name!r} closed>"
        return (f"<rafs.Image {self.name!r} v{self.version} {self.compressor}/{self.digester} "
                f"chunk_size={self.chunk_size:#x} blobs={len(self.blobs)}>")

    def _display_fields(self) -> list[tuple[str, str]]:
        from .inspect import describe
        info = describe(self, with_stats=False)
        fields = [("version", f"RAFS v{info['version']}"), ("bootstrap size", display.size(info["bootstrap_size"])),
                  ("flags", ", ".join(info["flag_words"]) or "-"), ("compressor", info["compressor"]),
                  ("digester", info["digester"]), ("chunk size", f"{info['chunk_size']:#x}"),
                  ("inodes", str(self.statfs().f_files))]
        fields += [(f"blob {blob.index}", f"{blob.blob_id} ({blob.compressor}, {blob.chunk_count} chunks, "
                                          f"{display.size(blob.compressed_size)})") for blob in self.blobs]
        return fields

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        """IPython's text display: the superblock summary, flags in words, and the blobs."""
        if self.closed:
            printer.text(repr(self))
            return
        printer.text(display.fields_text(f"rafs.Image {self.name}", self._display_fields()))

    def _repr_html_(self) -> str:
        """A notebook's display: the superblock summary and blobs as a table (no cipher keys)."""
        if self.closed:
            return f"<code>{display.html_text(repr(self))}</code>"
        return display.fields_html(f"rafs.Image {self.name}", self._display_fields())

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called; a closed image refuses every read with ``ValueError``."""
        return isinstance(self.reader, _Closed)

    def close(self) -> None:
        """Release the bootstrap and blob handles. Using the image afterwards raises ``ValueError``, as a
        closed file does; closing twice is harmless."""
        if self.closed:
            return
        locator, reader = self.locator, self.reader
        self.reader = self.locator = self.store = _Closed(self.name)
        try:
            locator.close()
        finally:
            reader.close()

    # -- table views (rafs.tables): records pandas.DataFrame takes as they are ---------------------

    def inodes_table(self, top="/") -> "display.Table":
        """One record per path under ``top``: type, mode, owner, size, time, chunks, xattrs, target."""
        return tables.inodes(self, top)

    def chunks_table(self, top="/") -> "display.Table":
        """One record per chunk of every regular file under ``top``: where it lives and its digest."""
        return tables.chunks(self, top)

    def blobs_table(self) -> "display.Table":
        """One record per blob: id, codecs, chunk size and count, sizes, features, cipher name."""
        return tables.blobs(self)

    def listing_table(self, path="/") -> "display.Table":
        """The directory ``path`` as ``ls -l`` shows it, one record per entry."""
        return tables.listing(self, path)

    def __enter__(self) -> "Image":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- paths -----------------------------------------------------------------------------------

    def _resolve(self, path, *, follow_symlinks: bool = True) -> tuple[int, bytes]:
        """(ino, normalised absolute path) of ``path``, following symlinks like the kernel would."""
        return resolve(self.reader, path, follow_symlinks=follow_symlinks)

    def _inode_at(self, path, follow_symlinks: bool = True) -> Inode:
        return self.reader.inode(self._resolve(path, follow_symlinks=follow_symlinks)[0])

    def exists(self, path) -> bool:
        """Whether ``path`` names an entry (a final symlink counts, dangling or not)."""
        try:
            self._resolve(path, follow_symlinks=False)
            return True
        except (errors.FileNotFoundError, errors.NotADirectoryError):
            return False

    def stat(self, path, *, follow_symlinks: bool = True) -> Stat:
        """A :class:`Stat` of ``path`` as :func:`os.stat` gives (a final symlink followed unless
        ``follow_symlinks`` is false)."""
        return Stat.from_inode(self._inode_at(path, follow_symlinks))

    def lstat(self, path) -> Stat:
        """A :class:`Stat` of ``path`` itself, a final symlink not followed (:func:`os.lstat`)."""
        return self.stat(path, follow_symlinks=False)

    def inode(self, path, *, follow_symlinks: bool = False) -> Inode:
        """The model inode at ``path`` (not following a final symlink by default)."""
        return self._inode_at(path, follow_symlinks)

    def readlink(self, path) -> str | bytes:
        """The target of the symlink ``path`` (bytes when ``path`` is bytes), as :func:`os.readlink`."""
        inode = self._inode_at(path, follow_symlinks=False)
        if not inode.is_symlink:
            raise errors.NotASymlinkError(path)
        return inode.symlink if isinstance(path, bytes) else fsdecode(inode.symlink)

    def listxattr(self, path, *, follow_symlinks: bool = True) -> list:
        """Names of the extended attributes of ``path`` (bytes when ``path`` is bytes)."""
        names = list(self._inode_at(path, follow_symlinks).xattrs)
        return names if isinstance(path, bytes) else [fsdecode(n) for n in names]

    def getxattr(self, path, attribute, *, follow_symlinks: bool = True) -> bytes:
        """Value of the extended attribute ``attribute`` of ``path``
        (:class:`~rafs.errors.NoSuchXattrError` when it has none of that name)."""
        xattrs = self._inode_at(path, follow_symlinks).xattrs
        key = fsencode(attribute)
        if key not in xattrs:
            raise errors.NoSuchXattrError(path)
        return xattrs[key]

    # -- by inode number (what an inode-level server such as rafs.fuse asks) ----------------------

    @property
    def root_ino(self) -> int:
        """Inode number of the root directory."""
        return self.reader.root_ino

    def get_inode(self, ino: int) -> Inode:
        """The inode numbered ``ino`` in the format's own numbering (v5 ``i_ino``, v6 nid)."""
        return self.reader.inode(ino)

    def lookup(self, parent_ino: int, name: bytes) -> Inode:
        """The inode of the entry ``name`` of directory ``parent_ino``; FileNotFoundError when absent."""
        if not self.reader.inode(parent_ino).is_dir:
            raise errors.NotADirectoryError(fsdecode(name))
        child = self.reader.lookup(parent_ino, name)
        if child is None:
            raise errors.FileNotFoundError(fsdecode(name))
        return self.reader.inode(child)

    def dir_entries(self, ino: int) -> list[tuple[bytes, int]]:
        """(name, ino) of every entry of directory ``ino`` in name order, each name checked."""
        if not self.reader.inode(ino).is_dir:
            raise errors.NotADirectoryError(f"<inode {ino}>")
        entries = list(self.reader.entries(ino))
        for name, _ in entries:
            check_name(name, b"<inode %d>" % ino)
        return entries

    def statfs(self) -> StatFs:
        """Block size 4096, the blobs' uncompressed size in blocks, the inode count when known."""
        size = sum(blob.uncompressed_size for blob in self.blobs)
        return StatFs(f_bsize=BLOCK_SIZE, f_blocks=-(-size // BLOCK_SIZE), f_files=self.reader.inode_count)

    # -- directories: listdir, scandir, walk, and the pre-order walks ------------------------------

    def _dir_ino(self, path) -> int:
        ino, _ = self._resolve(path)
        if not self.reader.inode(ino).is_dir:
            raise errors.NotADirectoryError(path)
        return ino

    def listdir(self, path="/") -> list:
        """Names in the directory ``path`` (without ``.`` and ``..``) in name order, as :func:`os.listdir`;
        bytes when ``path`` is bytes."""
        entries = self.reader.entries(self._dir_ino(path))
        if isinstance(path, bytes):
            return [name for name, _ in entries]
        return [fsdecode(name) for name, _ in entries]

    def scandir(self, path="/") -> Iterator[DirEntry]:
        """A :class:`~rafs.image.walks.DirEntry` for each entry of the directory ``path`` in name order,
        as :func:`os.scandir` (name and path bytes when ``path`` is bytes)."""
        ino, resolved = self._resolve(path)
        if not self.reader.inode(ino).is_dir:
            raise errors.NotADirectoryError(path)
        as_bytes = isinstance(path, bytes)
        prefix = resolved if resolved == b"/" else resolved + b"/"
        for name, child in self.reader.entries(ino):
            check_name(name, resolved)
            if as_bytes:
                yield DirEntry(self, name, prefix + name, child)
            else:
                yield DirEntry(self, fsdecode(name), fsdecode(prefix + name), child)

    def walk(self, top="/", topdown: bool = True) -> Iterator[tuple]:
        """Like :func:`os.walk`: (dirpath, dirnames, filenames) for every directory under ``top``.

        Walked without recursion, memory linear in depth; a directory loop, or nesting more than
        :data:`~rafs.model.MAX_DEPTH` levels below ``top``, raises InvalidImageError."""
        conv = (lambda b: b) if isinstance(top, bytes) else fsdecode
        ino, top_path = self._resolve(top)
        yield from walks.walk(self.reader, ino, top_path, topdown=topdown, conv=conv)

    def iter_entries(self, top="/") -> Iterator[tuple[bytes, Inode]]:
        """Every (absolute path bytes, inode) under ``top`` in pre-order, children by name.

        A directory reached twice (a loop in a corrupt image), or nested more than
        :data:`~rafs.model.MAX_DEPTH` levels below ``top``, raises InvalidImageError. Memory is linear
        in depth: only the path of the directory being listed is kept, each child's path made once.
        """
        yield from walks.iter_entries(self.reader, *self._resolve(top, follow_symlinks=False))

    def iter_stats(self, top="/") -> Iterator[tuple[bytes, Stat]]:
        """Every (absolute path bytes, :class:`Stat`) under ``top`` in pre-order, children by name: what
        ``lstat`` says of each entry, read straight from the inode records (the fast way to stat a tree).

        A directory reached twice (a loop in a corrupt image), or nested more than
        :data:`~rafs.model.MAX_DEPTH` levels below ``top``, raises InvalidImageError; memory is linear
        in depth, as in :meth:`iter_entries`.
        """
        yield from walks.iter_stats(self.reader, *self._resolve(top, follow_symlinks=False))

    def tree(self, top="/"):
        """The subtree under ``top`` as a :class:`rafs.model.Node` tree (chunks included)."""
        return walks.tree(self.reader, self._resolve(top, follow_symlinks=False)[0])

    # -- file data -------------------------------------------------------------------------------

    def chunks(self, path) -> list[Chunk]:
        """The data chunks of the regular file ``path`` in file order: blob, offsets, sizes, digest."""
        ino, _ = self._resolve(path)
        return self.reader.chunks(ino)

    def chunk_reader(self, blob_index: int) -> ChunkSource:
        """The source that fetches, decodes and verifies chunks of blob ``blob_index`` (made once, then shared)."""
        return self.store.chunk_reader(blob_index)

    def read_chunk(self, chunk: Chunk, *, path: str | None = None) -> bytes:
        """The uncompressed bytes of one chunk (verified when the image was opened with validate)."""
        return self.store.read_chunk(chunk, path=path)

    def read_chunks(self, chunks: list[Chunk], *, path: str | None = None,
                    local_only: bool = False) -> list[bytes] | None:
        """The uncompressed bytes of each chunk; the chunks of a blob that are not in memory are read in
        one batch, so adjacent ones are fetched with one ranged request. With ``local_only`` nothing
        waits on a remote backend: None unless every chunk is in memory, in the blob cache or in a
        blob file on local disk (see :meth:`needs_backend`).
        """
        return self.store.read_chunks(chunks, path=path, local_only=local_only)

    def needs_backend(self, chunks: list[Chunk]) -> bool:
        """Whether reading ``chunks`` may wait on a remote backend: False when each one is in memory,
        in the blob cache, or in a blob file on local disk.
        """
        return self.store.needs_backend(chunks)

    def prefetch(self, paths=None, *, all: bool = False, threads: int | None = None,  # noqa: A002
                 batch_size: int | None = None, wait: bool = True, progress: Progress | None = None):
        """Fetch file data into the blob cache ahead of reads, as nydusd's ``fs_prefetch`` does.

        What: ``paths`` (files or directories) if given, else the bootstrap's prefetch table (a table
        holding only the root, or ``all=True``, means everything). ``threads`` workers (default from the
        configuration's prefetch settings, else 8) fetch merged ranges of at most ``batch_size`` bytes
        (without it: at least the configured batch size, larger when there is enough to fetch to
        give every worker a range of its own, up to 8 MiB; a whole image comes in a few large ranges).
        With ``wait=False`` it runs in the background and returns a :class:`rafs.io.prefetch.Prefetch`
        handle (``wait()``, ``cancel()``, ``fetched``); with a locator that has no cache it does nothing.
        ``progress(done, total)`` (:mod:`rafs.progress`) counts the compressed bytes fetched, request by
        request, from the prefetch's own thread.
        """
        from ..io.prefetch import Prefetch
        config = self.locator.config
        settings = config.prefetch if config is not None else None
        threads = threads or (settings.threads if settings else 8)
        # a batch_size given here is the exact request limit; the configured one (merging_size), as
        # for nydusd, sizes on-demand reads, and a prefetch may grow its ranges past it
        grow_ranges = not batch_size
        batch_size = batch_size or (settings.batch_size if settings else DEFAULT_MERGE_SIZE)
        if paths is not None:
            roots = [self._resolve(p)[0] for p in ([paths] if isinstance(paths, (str, bytes)) else paths)]
        else:
            roots = list(self.reader.prefetch_inodes())
            if all or roots == [self.reader.root_ino]:
                roots = [self.reader.root_ino]
        jobs: dict[int, dict] = {}
        seen: set[int] = set()
        stack = list(reversed(roots))
        while stack:
            ino = stack.pop()
            if ino in seen:
                continue
            seen.add(ino)
            inode = self.reader.inode(ino)
            if inode.is_dir:
                stack.extend(child for _, child in self.reader.entries(ino))
            elif inode.is_reg:
                for chunk in self.reader.chunks(ino):
                    if chunk.blob_index < 0:
                        continue            # data in the image itself: nothing to fetch
                    key = (chunk.compressed_offset, chunk.compressed_size, chunk.uncompressed_offset)
                    jobs.setdefault(chunk.blob_index, {}).setdefault(key, chunk)
        work = [(self.chunk_reader(b), list(chunks.values())) for b, chunks in sorted(jobs.items())]
        handle = Prefetch(work, threads=threads, batch_size=batch_size, grow_ranges=grow_ranges,
                          progress=progress)
        handle.start()
        if wait:
            handle.wait()
        return handle

    def open(self, path, mode: str = "rb") -> "ImageFile":  # noqa: A003
        """The regular file ``path`` as a read-only, seekable binary file (:class:`ImageFile`)."""
        if mode not in ("r", "rb"):
            raise InvalidArgumentError(f"images are read-only: mode {mode!r} is not supported")
        ino, resolved = self._resolve(path)
        inode = self.reader.inode(ino)
        if inode.is_dir:
            raise errors.IsADirectoryError(path)
        if not inode.is_reg:
            raise errors.PathError(path, "Not a regular file")
        return ImageFile(self, inode, self.reader.chunks(ino), fsdecode(resolved))

    def read(self, path, *, max_size: int = MAX_READ_SIZE) -> bytes:
        """The whole content of a regular file. A file larger than ``max_size`` (default
        :data:`MAX_READ_SIZE`, 1 GiB) raises :class:`~rafs.errors.FileTooLargeError` before anything is
        allocated: read it in pieces through :meth:`open`."""
        with self.open(path) as f:
            f.max_read = max_size
            return f.read()

    def open_inode(self, ino: int) -> "ImageFile":
        """The regular file with inode number ``ino`` as an :class:`ImageFile`."""
        inode = self.reader.inode(ino)
        return ImageFile(self, inode, self.reader.chunks(ino), f"<inode {ino}>")

    # -- checks and extraction -------------------------------------------------------------------

    def check(self, *, verify_data: bool = False, progress: Progress | None = None) -> Iterator[str]:
        """Every fault found in the image: structure, digests, and with ``verify_data`` every chunk.

        Yields one message per fault; an image is sound when nothing is yielded. With ``verify_data``,
        ``progress(done, total)`` (:mod:`rafs.progress`) counts the uncompressed bytes verified, file by
        file, against the blobs' uncompressed sizes (an estimate: chunks no file uses are not read).
        """
        return _check.check(self, verify_data=verify_data, progress=progress)

    def extractall(self, dest, *, filter="data", members=None, threads: int | None = None) -> None:  # noqa: A002
        """Write the tree under ``dest`` with :mod:`tarfile`'s extraction-filter semantics; ``threads``
        workers (default 2) read and decompress file data ahead of the writes."""
        from .extract import extract_all
        extract_all(self, dest, filter=filter, members=members, threads=threads)

    def write_tar(self, target, *, threads: int | None = None, progress: Progress | None = None) -> int:
        """Write the tree as an OCI-compatible tar (what ``nydus-image unpack`` writes) to ``target``, a
        file object or a path (written through a temporary file and renamed into place); returns the
        number of entries. ``threads`` workers read file data ahead; ``progress`` counts entries."""
        from .unpack import write_tar_to
        return write_tar_to(self, target, threads=threads, progress=progress)

    def describe(self, *, with_stats: bool = True) -> dict:
        """A summary as plain data (what ``rafs inspect --json`` prints): version, flags in words,
        superblock fields, blobs, prefetch table and, ``with_stats``, :meth:`tree_stats`."""
        from .inspect import describe
        return describe(self, with_stats=with_stats)

    def tree_stats(self) -> dict:
        """Counts over the whole tree (entries, directories, files, hardlinks, chunks...): walks every inode."""
        from .inspect import stats
        return stats(self)

    def blob_summaries(self) -> list[dict]:
        """One dict per blob of the blob table (id, compressor, sizes, features, ToC and meta sections);
        a blob's key and IV are never in it."""
        from .inspect import blob_info
        return [blob_info(blob) for blob in self.blobs]


class _Closed:
    """Stands in for the reader, locator and store of a closed :class:`Image`: any use raises ``ValueError``."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute):
        raise ValueError(f"I/O operation on closed image {self._name!r}")

    def close(self) -> None:
        pass
