"""The public :class:`Image`: browse a RAFS (v5, v6) or EROFS image like a read-only filesystem.

``rafs.open()`` finds the version from the bytes and wraps the matching reader. Paths are ``str`` as
in :mod:`os` (names that are not UTF-8 come back as surrogate escapes, so none is lost) and ``bytes``
paths are accepted too. File data is read chunk by chunk from the blobs, only where asked.
"""

from __future__ import annotations

import bisect
import collections
import io
import itertools
import logging
import os
import stat as _stat
import threading
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from . import display, errors, tables
from .blob.reader import ChunkReader
from .errors import InvalidArgumentError, InvalidImageError, UnsupportedError
from .io.blobs import BlobLocator
from .io.source import LocalRangeReader, load_bytes
from .model import MAX_DEPTH, META_BLOB_INDEX, ZDATA_BLOB_INDEX, Blob, Chunk, ImageReader, Inode
from .progress import Progress, Ticker
from .text import printable

log = logging.getLogger(__name__)

MAX_SYMLINK_FOLLOWS = 40      # like Linux's MAXSYMLINKS, then ELOOP
# The most one read hands out whole (Image.read, ImageFile.read() and readall, one pread). A file's size
# is whatever its image declares (2^64 - 1 in v5), and beyond its chunks it is holes: reading it whole
# would allocate what the image says. Larger files are read in pieces through Image.open().
MAX_READ_SIZE = 1 << 30


def fsencode(path) -> bytes:
    """``path`` (str, bytes or path-like) as the bytes an image stores names in (UTF-8, surrogateescape)."""
    if isinstance(path, bytes):
        return path
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
        if isinstance(path, bytes):
            return path
    if not isinstance(path, str):
        raise InvalidArgumentError(f"path must be str or bytes, not {type(path).__name__}")
    return path.encode("utf-8", "surrogateescape")


def fsdecode(name: bytes) -> str:
    """An image's name bytes as str (UTF-8; undecodable bytes kept as surrogates)."""
    return name.decode("utf-8", "surrogateescape")


class Stat(NamedTuple):
    """What ``os.stat`` reports, for an inode of the image (a named tuple, cheap to make in bulk)."""

    st_mode: int
    st_ino: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_rdev: int
    st_blocks: int
    st_dev: int = 0

    @property
    def st_mtime(self) -> float:
        """Modification time in seconds (a float), as :func:`os.stat`'s."""
        return self.st_mtime_ns / 1e9

    @property
    def st_atime_ns(self) -> int:
        """Access time in nanoseconds: RAFS keeps only mtime, so the same."""
        return self.st_mtime_ns

    @property
    def st_ctime_ns(self) -> int:
        """Change time in nanoseconds: RAFS keeps only mtime, so the same."""
        return self.st_mtime_ns

    @property
    def st_blksize(self) -> int:
        """Preferred I/O size: 4096, the RAFS block size."""
        return 4096

    @property
    def filemode(self) -> str:
        """The mode as ``ls -l`` prints it (``-rw-r--r--``)."""
        return _stat.filemode(self.st_mode)

    def _display_fields(self) -> list[tuple[str, str]]:
        return [("mode", f"{display.filemode(self.st_mode)} ({self.st_mode:#o})"), ("inode", str(self.st_ino)),
                ("links", str(self.st_nlink)), ("owner", f"{self.st_uid}:{self.st_gid}"),
                ("size", display.size(self.st_size)), ("modified", display.timestamp(self.st_mtime_ns)),
                ("blocks", str(self.st_blocks))]

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        """IPython's text display: labelled fields, the mode as ``ls -l`` prints it, the time as a date."""
        printer.text(display.fields_text("Stat", self._display_fields()))

    def _repr_html_(self) -> str:
        """A notebook's display of the same fields as a table."""
        return display.fields_html("Stat", self._display_fields())

    @classmethod
    def from_inode(cls, inode: Inode) -> "Stat":
        """The :class:`Stat` of a decoded :class:`rafs.model.Inode`."""
        return cls(inode.mode, inode.ino, inode.nlink, inode.uid, inode.gid, inode.size,
                   inode.mtime * 1_000_000_000 + inode.mtime_nsec, inode.rdev, inode.blocks)


@dataclass(frozen=True, slots=True)
class StatFs:
    """What ``os.statvfs`` reports for an image: its data size in ``f_bsize`` blocks and its inodes."""

    f_bsize: int
    f_blocks: int
    f_files: int
    f_namemax: int = 255


def detect_reader(data, *, blob_id_hint: str | None = None, chunk_info_source=None) -> ImageReader:
    """The reader for a bootstrap's bytes: v5 by its magic at 0, v6/EROFS by the magic at 1024.
    ``chunk_info_source`` (see :func:`chunk_info_source`) lets a v6 reader resolve chunks through blob meta."""
    from .v5.reader import V5Reader, is_v5
    if is_v5(bytes(data[:8])):
        return V5Reader(data, blob_id_hint=blob_id_hint)
    try:
        from .v6.reader import V6Reader, is_erofs
    except ImportError:                           # pragma: no cover - v6 support not installed
        V6Reader = is_erofs = None
    if is_erofs is not None and is_erofs(data):
        return V6Reader(data, blob_id_hint=blob_id_hint, chunk_info_source=chunk_info_source)
    raise InvalidImageError("neither a RAFS v5 superblock (magic 0x52414653 at 0) nor an EROFS/RAFS v6 "
                            "superblock (magic 0xe0f5e1e2 at 1024)", structure="superblock", offset=0)


def open(source, *, blob_dir=None, blobs=None, storage_options: dict | None = None,  # noqa: A001
         validate: bool = False, config=None) -> "Image":
    """Open a bootstrap (v5, v6, plain EROFS) or a blob with an inline bootstrap.

    ``source`` is a local path, an fsspec URL, an open binary file object or a Nydus image in a registry
    (``docker://HOST/REPO:TAG``, :mod:`rafs.io.reference`; ``storage_options`` then holds its options
    such as ``platform``, ``insecure``, ``plain_http``, ``docker_config``). Blobs are found in
    ``blob_dir`` by blob id, or through ``blobs`` (a mapping of blob id to path/URL/file object, or a
    list in device order). ``config`` is a nydusd configuration (path, JSON text or dict) whose backend
    and cache are used for the blobs. With ``validate=True`` every chunk read is checked against its
    digest.
    """
    if isinstance(source, str) and source.startswith("docker://"):
        from .io.reference import open_reference     # an image in a registry: the bootstrap comes from there
        return open_reference(source, options=storage_options, validate=validate, config=config)
    locator = None
    if config is not None:
        from .io.config import locator_from_config
        locator = locator_from_config(config, storage_options=storage_options)
        validate = validate or getattr(locator, "validate", False)
    if locator is None:
        locator = BlobLocator(blob_dir=blob_dir, blobs=blobs, storage_options=storage_options)
    load_bootstrap = getattr(locator, "load_bootstrap", None)
    data = load_bootstrap(source) if load_bootstrap else load_bytes(source, storage_options)
    reader, inline_blob, locator = _reader_for(data, source, storage_options, locator,
                                               keep_locator=bool(blob_dir or blobs or config))
    log.debug("bootstrap %s: %d bytes%s, RAFS v%d, %d blobs, blobs from %s", _describe_source(source), len(data),
              " (inside a data blob)" if inline_blob is not None else "", reader.version, len(reader.blobs),
              locator.describe())
    return Image(reader, locator, validate=validate, name=_describe_source(source))


def chunk_info_source(locator):
    """What a v6 reader resolves chunks through when its chunk info table lacks them: a blob's CI array
    (blob meta), loaded from the blob that ``locator`` finds."""
    try:
        from .blob.meta import load_chunk_infos
    except ImportError:                           # pragma: no cover - no blob meta support
        return None
    return lambda blob: load_chunk_infos(blob, locator.open(blob.blob_id, blob.index))


def _reader_for(data, source, storage_options, locator, *, keep_locator: bool):
    """(reader, (blob id, source) if the bootstrap came out of a data blob, the locator of the image's
    blobs): the blob that carried the bootstrap also carries the data, unless ``keep_locator``."""
    try:
        return detect_reader(data, chunk_info_source=chunk_info_source(locator)), None, locator
    except InvalidImageError as first_error:
        try:
            from .blob.toc import extract_inline_bootstrap
        except ImportError:                       # pragma: no cover
            raise first_error from None
        found = extract_inline_bootstrap(data, name=_describe_source(source))
        if found is None:
            raise first_error from None
        bootstrap, blob_id = found
        if not keep_locator:
            locator = BlobLocator(blobs={blob_id: source}, storage_options=storage_options)
        return (detect_reader(bootstrap, blob_id_hint=blob_id, chunk_info_source=chunk_info_source(locator)),
                (blob_id, source), locator)


def _describe_source(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        from .io.redact import redact_url        # a URL's userinfo is never part of the image's name
        return redact_url(os.fspath(source) if not isinstance(os.fspath(source), bytes)
                          else fsdecode(os.fspath(source)))
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


class Image:
    """A read-only view of a RAFS or EROFS image; a context manager.

    Use :func:`rafs.open` to make one. ``reader`` answers the format questions, ``locator`` finds the
    blobs.
    """

    def __init__(self, reader: ImageReader, locator: BlobLocator | None = None, *, validate: bool = False,
                 name: str = "<image>", chunk_cache_size: int = 64):
        self.reader = reader
        self.locator = locator or BlobLocator()
        self.validate = validate
        self.name = name
        self._chunk_readers: dict[int, ChunkReader] = {}
        self._lock = threading.Lock()
        self._chunk_cache: collections.OrderedDict = collections.OrderedDict()
        self._chunk_cache_size = chunk_cache_size

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
        self.reader = self.locator = _Closed(self.name)
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
        raw = fsencode(path)
        parts = [p for p in raw.split(b"/") if p and p != b"."]
        ino, stack, follows = self.reader.root_ino, [], 0
        dirs = [self.reader.root_ino]
        todo = list(reversed(parts))
        while todo:
            part = todo.pop()
            if part == b"..":
                if stack:
                    stack.pop()
                    dirs.pop()
                ino = dirs[-1]
                continue
            inode = self.reader.inode(ino)
            if not inode.is_dir:
                raise errors.NotADirectoryError(fsdecode(b"/" + b"/".join(stack)))
            child = self.reader.lookup(ino, part)
            if child is None:
                raise errors.FileNotFoundError(fsdecode(b"/" + b"/".join(stack + [part])))
            child_inode = self.reader.inode(child)
            if child_inode.is_symlink and (todo or follow_symlinks):
                follows += 1
                if follows > MAX_SYMLINK_FOLLOWS:
                    raise errors.PathError(path, "Too many levels of symbolic links")
                target = child_inode.symlink or b""
                if target.startswith(b"/"):
                    stack, dirs, ino = [], [self.reader.root_ino], self.reader.root_ino
                todo.extend(reversed([p for p in target.split(b"/") if p and p != b"."]))
                continue
            stack.append(part)
            dirs.append(child)
            ino = child
        return ino, b"/" + b"/".join(stack)

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
            _check_name(name, b"<inode %d>" % ino)
        return entries

    def statfs(self) -> StatFs:
        """Block size 4096, the blobs' uncompressed size in blocks, the inode count when known."""
        size = sum(blob.uncompressed_size for blob in self.blobs)
        return StatFs(f_bsize=4096, f_blocks=-(-size // 4096), f_files=getattr(self.reader, "inode_count", 0))

    # -- directories -----------------------------------------------------------------------------

    def _dir_ino(self, path) -> int:
        ino, _ = self._resolve(path)
        if not self.reader.inode(ino).is_dir:
            raise errors.NotADirectoryError(path)
        return ino

    def scandir(self, path="/") -> Iterator[tuple[bytes, int]]:
        """(name bytes, ino) of each entry of a directory, in name order."""
        return self.reader.entries(self._dir_ino(path))

    def iterdir(self, path="/") -> Iterator:
        """Names in the directory ``path`` (without ``.`` and ``..``), one at a time; bytes when ``path`` is bytes."""
        as_bytes = isinstance(path, bytes)
        for name, _ in self.scandir(path):
            yield name if as_bytes else fsdecode(name)

    def listdir(self, path="/") -> list:
        """Names in the directory ``path`` as a list, as :func:`os.listdir`."""
        return list(self.iterdir(path))

    def iter_entries(self, top="/") -> Iterator[tuple[bytes, Inode]]:
        """Every (absolute path bytes, inode) under ``top`` in pre-order, children by name.

        A directory reached twice (a loop in a corrupt image), or nested more than
        :data:`~rafs.model.MAX_DEPTH` levels below ``top``, raises InvalidImageError. Memory is linear
        in depth: only the path of the directory being listed is kept, each child's path made once.
        """
        ino, top_path = self._resolve(top, follow_symlinks=False)
        inode_of, entries_of = self.reader.inode_uncached, self.reader.entries
        inode = inode_of(ino)
        yield top_path, inode
        if inode.mode & 0o170000 != _stat.S_IFDIR:
            return
        seen_dirs = set()
        _visit_once(seen_dirs, ino, top_path)
        children = list(entries_of(ino))
        _check_names(children, top_path)
        # frames[i]: the children of the directory at depth i still to visit; prefix: the path of the
        # innermost one, with its closing "/"; cuts: where to cut prefix back to on leaving each
        frames, cuts = [iter(children)], []
        prefix = top_path if top_path == b"/" else top_path + b"/"
        while frames:
            for name, child in frames[-1]:
                path = prefix + name
                inode = inode_of(child)
                yield path, inode
                if inode.mode & 0o170000 == _stat.S_IFDIR:
                    _visit_once(seen_dirs, child, path)
                    children = list(entries_of(child))
                    if children:
                        _check_depth(len(frames), name, child)
                        _check_names(children, path)
                        cuts.append(len(prefix))
                        prefix = path + b"/"
                        frames.append(iter(children))
                        break
            else:
                frames.pop()
                if cuts:
                    prefix = prefix[:cuts.pop()]

    def iter_stats(self, top="/") -> Iterator[tuple[bytes, Stat]]:
        """Every (absolute path bytes, :class:`Stat`) under ``top`` in pre-order, children by name: what
        ``lstat`` says of each entry, read straight from the inode records (the fast way to stat a tree).

        A directory reached twice (a loop in a corrupt image), or nested more than
        :data:`~rafs.model.MAX_DEPTH` levels below ``top``, raises InvalidImageError; memory is linear
        in depth, as in :meth:`iter_entries`.
        """
        ino, top_path = self._resolve(top, follow_symlinks=False)
        stat_list, listing_of = self.reader.stat_list, self.reader.listing
        make, stats = tuple.__new__, itertools.repeat(Stat)
        seen_dirs = set()

        def children(path: bytes, ino: int, depth: int):
            """(name, Stat) of the entries of a directory ``depth`` levels below the top, their inodes
            decoded together."""
            _visit_once(seen_dirs, ino, path)
            names, inos = listing_of(ino)
            if not names:
                return iter(())
            if depth:
                _check_depth(depth, path.rsplit(b"/", 1)[-1], ino)
            _check_name_list(names, path)
            return zip(names, map(make, stats, stat_list(inos)))

        (stat,) = map(make, stats, stat_list((ino,)))
        yield top_path, stat
        if stat[0] & 0o170000 != _stat.S_IFDIR:
            return
        stack, cuts = [children(top_path, ino, 0)], []
        prefix = top_path if top_path == b"/" else top_path + b"/"
        while stack:
            for name, stat in stack[-1]:
                path = prefix + name
                yield path, stat
                if stat[0] & 0o170000 == _stat.S_IFDIR:
                    stack.append(children(path, stat[1], len(stack)))
                    cuts.append(len(prefix))
                    prefix = path + b"/"
                    break
            else:
                stack.pop()
                if cuts:
                    prefix = prefix[:cuts.pop()]

    def walk(self, top="/", topdown: bool = True) -> Iterator[tuple]:
        """Like :func:`os.walk`: (dirpath, dirnames, filenames) for every directory under ``top``.

        Walked without recursion, memory linear in depth; a directory loop, or nesting more than
        :data:`~rafs.model.MAX_DEPTH` levels below ``top``, raises InvalidImageError."""
        as_bytes = isinstance(top, bytes)
        conv = (lambda b: b) if as_bytes else fsdecode
        ino, top_path = self._resolve(top)
        seen = set()

        def listing(path: bytes, ino: int, depth: int):
            _visit_once(seen, ino, path)
            dirs, files = [], []
            entries = list(self.reader.entries(ino))
            if entries and depth:
                _check_depth(depth, path.rsplit(b"/", 1)[-1], ino)
            for name, child in entries:
                _check_name(name, path)
                (dirs if self.reader.inode(child).is_dir else files).append((name, child))
            return [conv(n) for n, _ in dirs], [conv(n) for n, _ in files], dirs

        if not self.reader.inode(ino).is_dir:
            return
        dirnames, filenames, dirs = listing(top_path, ino, 0)
        if topdown:
            yield conv(top_path), dirnames, filenames
        # per open directory: its dirnames (the caller may prune them), filenames (for bottom-up) and
        # subdirectories still to visit; only the innermost path is kept, cut back on the way up
        stack, cuts, path = [(dirnames, filenames, iter(dirs))], [], top_path
        while stack:
            dirnames, filenames, children = stack[-1]
            for name, child in children:
                if topdown and conv(name) not in dirnames:
                    continue               # pruned by the caller, as os.walk allows
                cuts.append(len(path))
                path = (path if path == b"/" else path + b"/") + name
                child_dirnames, child_filenames, child_dirs = listing(path, child, len(stack))
                if topdown:
                    yield conv(path), child_dirnames, child_filenames
                stack.append((child_dirnames, child_filenames, iter(child_dirs)))
                break
            else:
                stack.pop()
                if not topdown:
                    yield conv(path), dirnames, filenames
                if cuts:
                    path = path[:cuts.pop()] or b"/"

    def tree(self, top="/"):
        """The subtree under ``top`` as a :class:`rafs.model.Node` tree (chunks included)."""
        from .model import Node
        ino, _ = self._resolve(top, follow_symlinks=False)
        root = Node(name=b"/", inode=self.reader.inode(ino))
        # iterative; a directory reached twice (a loop) or nested past MAX_DEPTH is an invalid image
        seen_dirs, stack = set(), [(root, ino, 0)]
        while stack:
            node, ino, depth = stack.pop()
            if node.inode.is_reg:
                node.chunks = self.reader.chunks(ino)
                node.hardlink_key = ino if node.inode.nlink > 1 else None
            elif node.inode.is_dir:
                if ino in seen_dirs:
                    raise InvalidImageError(f"directory inode {ino} is reachable twice", structure="directory tree")
                seen_dirs.add(ino)
                entries = list(self.reader.entries(ino))
                if entries:
                    _check_depth(depth, node.name, ino)
                for name, child in entries:
                    node.children.append(Node(name=name, inode=self.reader.inode(child)))
                    stack.append((node.children[-1], child, depth + 1))
        return root

    # -- file data -------------------------------------------------------------------------------

    def chunks(self, path) -> list[Chunk]:
        """The data chunks of the regular file ``path`` in file order: blob, offsets, sizes, digest."""
        ino, _ = self._resolve(path)
        return self.reader.chunks(ino)

    def _meta_chunk_reader(self) -> ChunkReader:
        """Reads chunks stored in the image itself (META_BLOB_INDEX: plain EROFS data), which are never
        compressed and carry no digest."""
        from .ranges import BytesRangeReader
        blob = Blob(index=META_BLOB_INDEX, blob_id="<image>", compressor="none")
        return ChunkReader(blob, BytesRangeReader(self.reader.data, "image"), validate=False)

    def chunk_reader(self, blob_index: int) -> ChunkReader:
        """The reader that fetches, decodes and verifies chunks of blob ``blob_index`` (made once, then shared)."""
        reader = self._chunk_readers.get(blob_index)
        if reader is None:
            with self._lock:
                reader = self._chunk_readers.get(blob_index)
                if reader is None and blob_index == META_BLOB_INDEX:
                    reader = self._chunk_readers[blob_index] = self._meta_chunk_reader()
                if reader is None and blob_index == ZDATA_BLOB_INDEX:
                    reader = self._chunk_readers[blob_index] = self.reader.zdata_chunk_reader()
                if reader is None:
                    if not 0 <= blob_index < len(self.blobs):
                        raise InvalidImageError(f"chunk refers to blob {blob_index} of {len(self.blobs)}",
                                                structure="chunk info")
                    blob = self.blobs[blob_index]
                    make = getattr(self.locator, "chunk_reader", None)
                    if make is not None:
                        reader = make(blob, validate=self.validate)
                    else:
                        reader = ChunkReader(blob, self.locator.open(blob.blob_id, blob_index),
                                             validate=self.validate)
                    self._chunk_readers[blob_index] = reader
        return reader

    def read_chunk(self, chunk: Chunk, *, path: str | None = None) -> bytes:
        """The uncompressed bytes of one chunk (verified when the image was opened with validate)."""
        key = (chunk.blob_index, chunk.uncompressed_offset, chunk.compressed_offset)
        with self._lock:
            data = self._chunk_cache.get(key)
            if data is not None:
                self._chunk_cache.move_to_end(key)
                return data
        data = self.chunk_reader(chunk.blob_index).read(chunk, path=path)
        with self._lock:
            self._chunk_cache[key] = data
            while len(self._chunk_cache) > self._chunk_cache_size:
                self._chunk_cache.popitem(last=False)
        return data

    def read_chunks(self, chunks: list[Chunk], *, path: str | None = None,
                    local_only: bool = False) -> list[bytes] | None:
        """The uncompressed bytes of each chunk; the chunks of a blob that are not in memory are read in
        one batch, so adjacent ones are fetched with one ranged request. With ``local_only`` nothing
        waits on a remote backend: None unless every chunk is in memory, in the blob cache or in a
        blob file on local disk (see :meth:`needs_backend`).
        """
        if len(chunks) == 1:
            return self._read_one_chunk(chunks[0], path, local_only)
        out: list = [None] * len(chunks)
        by_blob: dict[int, list[int]] = {}
        with self._lock:
            for i, chunk in enumerate(chunks):
                key = (chunk.blob_index, chunk.uncompressed_offset, chunk.compressed_offset)
                data = self._chunk_cache.get(key)
                if data is not None:
                    self._chunk_cache.move_to_end(key)
                    out[i] = data
                else:
                    by_blob.setdefault(chunk.blob_index, []).append(i)
        if local_only and by_blob and self.needs_backend([chunks[i] for p in by_blob.values() for i in p]):
            return None
        for blob_index, positions in by_blob.items():
            reader = self.chunk_reader(blob_index)
            wanted = [chunks[i] for i in positions]
            if hasattr(reader, "read_many"):
                datas = reader.read_many(wanted, path=path)
            else:
                datas = [reader.read(c, path=path) for c in wanted]
            with self._lock:
                for i, data in zip(positions, datas):
                    out[i] = data
                    chunk = chunks[i]
                    self._chunk_cache[(chunk.blob_index, chunk.uncompressed_offset, chunk.compressed_offset)] = data
                while len(self._chunk_cache) > self._chunk_cache_size:
                    self._chunk_cache.popitem(last=False)
        return out

    def _read_one_chunk(self, chunk: Chunk, path: str | None, local_only: bool) -> list[bytes] | None:
        """:meth:`read_chunks` of a single chunk (most reads of a mount), without its grouping."""
        key = (chunk.blob_index, chunk.uncompressed_offset, chunk.compressed_offset)
        cache = self._chunk_cache
        with self._lock:
            data = cache.get(key)
            if data is not None:
                cache.move_to_end(key)
                return [data]
        if local_only and self.needs_backend((chunk,)):
            return None
        reader = self.chunk_reader(chunk.blob_index)
        read_many = getattr(reader, "read_many", None)
        data = read_many([chunk], path=path)[0] if read_many is not None else reader.read(chunk, path=path)
        with self._lock:
            cache[key] = data
            while len(cache) > self._chunk_cache_size:
                cache.popitem(last=False)
        return [data]

    def needs_backend(self, chunks: list[Chunk]) -> bool:
        """Whether reading ``chunks`` may wait on a remote backend: False when each one is in memory,
        in the blob cache, or in a blob file on local disk.
        """
        for chunk in chunks:
            if (chunk.blob_index, chunk.uncompressed_offset, chunk.compressed_offset) in self._chunk_cache:
                continue
            reader = self._chunk_readers.get(chunk.blob_index)
            if reader is None:
                return True                  # not opened yet: opening may itself ask the backend
            is_cached = getattr(reader, "is_cached", None)
            if not (isinstance(reader.source, LocalRangeReader) or (is_cached and is_cached(chunk))):
                return True
        return False

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
        from .io.prefetch import Prefetch
        settings = getattr(getattr(self.locator, "config", None), "prefetch", None)
        threads = threads or (settings.threads if settings else 8)
        # a batch_size given here is the exact request limit; the configured one (merging_size), as
        # for nydusd, sizes on-demand reads, and a prefetch may grow its ranges past it
        grow_ranges = not batch_size
        batch_size = batch_size or (settings.batch_size if settings else 0x100000)
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
        ticker = Ticker(progress if verify_data else None,
                        sum(blob.uncompressed_size for blob in self.blobs)).start()
        yield from self.reader.verify_structure()
        seen_chunks = set()
        entries = self.iter_entries()
        while True:
            try:
                path, inode = next(entries)         # one at a time: never every path at once
            except StopIteration:
                break
            except errors.RafsError as exc:
                yield f"tree walk: {exc}"
                return
            if not inode.is_reg:
                continue
            try:
                chunks = self.reader.chunks(inode.ino)
            except errors.RafsError as exc:
                yield f"{printable(path)}: {exc}"
                continue
            problem = _chunk_layout_problem(inode, chunks)
            if problem:
                yield f"{printable(path)}: {problem}"
            if not verify_data:
                continue
            verified = 0
            for chunk in chunks:
                key = (chunk.blob_index, chunk.compressed_offset, chunk.uncompressed_offset, chunk.digest)
                if key in seen_chunks:
                    continue
                seen_chunks.add(key)
                verified += chunk.uncompressed_size
                try:
                    reader = self.chunk_reader(chunk.blob_index)
                    data = reader.decode(chunk, reader.fetch_raw(chunk), path=fsdecode(path))
                    reader.verify(chunk, data, path=fsdecode(path))
                except errors.RafsError as exc:
                    yield f"{printable(path)}: {exc}"
            ticker.advance(verified)
        ticker.finish()

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


_BAD_NAMES = frozenset((b"", b".", b".."))


class _Closed:
    """Stands in for the reader and locator of a closed :class:`Image`: any use raises ``ValueError``."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute):
        raise ValueError(f"I/O operation on closed image {self._name!r}")

    def close(self) -> None:
        pass


def _visit_once(seen: set, ino: int, path: bytes) -> None:
    """Note directory ``ino`` as walked; one reached twice (a loop in a corrupt image) is refused."""
    if ino in seen:
        raise InvalidImageError(f"directory inode {ino} is reachable twice ({printable(path)})",
                                structure="directory tree")
    seen.add(ino)


def _check_depth(depth: int, name: bytes, ino: int) -> None:
    """Refuse the entries of directory ``name`` (inode ``ino``), ``depth`` levels below the walk's top,
    when they would lie more than MAX_DEPTH levels down."""
    if depth >= MAX_DEPTH:
        raise InvalidImageError(f"directory {printable(name)} (inode {ino}) is nested deeper than {MAX_DEPTH} "
                                "levels", structure="directory tree")


def _check_names(children: list[tuple[bytes, int]], parent: bytes) -> None:
    """_check_name over a whole listing of (name, ino) pairs, in bulk."""
    _check_name_list([name for name, _ in children], parent)


def _check_name_list(names: list[bytes], parent: bytes) -> None:
    """_check_name over a list of names, in bulk: the common (sound) case costs no Python step per name."""
    joined = b"/".join(names)
    if joined.count(b"/") != len(names) - 1 or b"\0" in joined or not _BAD_NAMES.isdisjoint(names):
        for name in names:
            _check_name(name, parent)


def _check_name(name: bytes, parent: bytes) -> None:
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise InvalidImageError(f"entry name {name!r} in {printable(parent)} is not a valid file name",
                                structure="directory entry")


def _chunk_layout_problem(inode: Inode, chunks: list[Chunk]) -> str | None:
    end = 0
    for chunk in chunks:
        if chunk.file_offset < end:
            return f"chunk {chunk.index} at file offset {chunk.file_offset} overlaps the previous chunk"
        end = chunk.file_offset + chunk.uncompressed_size
    if end > inode.size:
        return f"chunks cover {end} bytes but the file has {inode.size}"
    return None


class ImageFile(io.RawIOBase):
    """A seekable, read-only binary file over a regular file's chunks; holes read as zeros.

    Holes (what the chunks do not cover, up to the declared size) cost nothing until read, and one
    read hands out at most ``max_read`` bytes (:data:`MAX_READ_SIZE`): a larger ``read()`` raises
    :class:`~rafs.errors.FileTooLargeError` instead of allocating what the image declares.
    """

    max_read = MAX_READ_SIZE

    def __init__(self, image: Image, inode: Inode, chunks: list[Chunk], name: str):
        super().__init__()
        self.image = image
        self.inode = inode
        self.name = name
        self.size = inode.size
        problem = _chunk_layout_problem(inode, chunks)
        if problem:
            raise InvalidImageError(f"{printable(name)}: {problem}", structure="chunk info")
        self._chunks = chunks
        self._starts = [c.file_offset for c in chunks]
        self._pos = 0

    def readable(self) -> bool:
        """True: image files are read."""
        return True

    def seekable(self) -> bool:
        """True: any offset can be read."""
        return True

    def tell(self) -> int:
        """The current position."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` from the start, the current position or the end (``whence``); the new position."""
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise InvalidArgumentError(f"invalid whence {whence}")
        if pos < 0:
            raise InvalidArgumentError("negative seek position")
        self._pos = pos
        return pos

    @property
    def chunks(self) -> list[Chunk]:
        """The file's chunks in file order (checked for overlaps and bounds when the file was opened)."""
        return list(self._chunks)

    def data_regions(self) -> list[tuple[int, int]]:
        """(file offset, length) of each run of bytes the chunks hold, in order, adjacent chunks merged;
        the rest of the file, up to its size, is holes."""
        regions: list[list[int]] = []
        for chunk in self._chunks:
            if regions and regions[-1][0] + regions[-1][1] == chunk.file_offset:
                regions[-1][1] += chunk.uncompressed_size
            elif chunk.uncompressed_size:
                regions.append([chunk.file_offset, chunk.uncompressed_size])
        return [(offset, length) for offset, length in regions]

    def _covering(self, offset: int, end: int) -> list[Chunk]:
        """The chunks holding bytes of [offset, end)."""
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        wanted = []
        while i < len(self._chunks):
            chunk = self._chunks[i]
            if chunk.file_offset >= end:
                break
            if chunk.file_offset + chunk.uncompressed_size > offset:
                wanted.append(chunk)
            i += 1
        return wanted

    def pread(self, size: int, offset: int, *, local_only: bool = False) -> bytes | None:
        """Up to ``size`` bytes at ``offset`` without moving the file position (``local_only``: None
        when some chunk needed would have to come from a remote backend, see Image.read_chunks).
        """
        if offset >= self.size or size <= 0:
            return b""
        end = min(self.size, offset + size)
        if end - offset > self.max_read:
            raise errors.FileTooLargeError(self.name, f"a read of {end - offset} bytes at {offset} is larger "
                                           f"than the {self.max_read} read whole: read the file in pieces")
        out = bytearray(end - offset)
        wanted = self._covering(offset, end)
        datas = self.image.read_chunks(wanted, path=self.name, local_only=local_only)
        if datas is None:
            return None
        if len(wanted) == 1 and wanted[0].file_offset <= offset and \
                end <= wanted[0].file_offset + wanted[0].uncompressed_size:
            # one chunk holds it all (a small file, a read inside a large chunk): one slice, no copy
            # when the read is the whole chunk
            data = datas[0]
            lo = offset - wanted[0].file_offset
            if lo or len(data) != end - offset:
                data = data[lo:lo + end - offset]
            return data if type(data) is bytes else bytes(data)
        for chunk, data in zip(wanted, datas):
            c_start, c_end = chunk.file_offset, chunk.file_offset + chunk.uncompressed_size
            lo, hi = max(offset, c_start), min(end, c_end)
            out[lo - offset:hi - offset] = data[lo - c_start:hi - c_start]
        return bytes(out)

    def readinto(self, buffer) -> int:
        """Read into ``buffer`` from the current position; the number of bytes read (0 at the end)."""
        data = self.pread(len(buffer), self._pos)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from the current position (all that is left when ``size`` is -1)."""
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        data = self.pread(size, self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        """Everything from the current position to the end."""
        return self.read(-1)

    def __repr__(self) -> str:
        return f"<rafs.ImageFile {self.name!r} size={self.size}>"
