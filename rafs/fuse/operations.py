"""FUSE request handling: each kernel request about one image becomes a call on :class:`rafs.Image`.

:class:`RafsOperations` is libfuse3's ``struct fuse_lowlevel_ops`` for one image. It holds no format
knowledge: the image answers by inode number (``get_inode``, ``lookup``, ``dir_entries``,
``open_inode``, ``statfs``), and FUSE inode numbers are the image's own (:class:`InodeNumbers`: the
root and inode 1 trade places, as FUSE fixes the root at 1), so nothing is resolved by path.
Mounting, the request loop and signals are :mod:`rafs.fuse.mounting`'s.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .. import _libfuse as ll
from .. import errors
from ..image import Image
from ..limits import BLOCK_SIZE
from ..lru import LRU

log = logging.getLogger(__name__)

# The image is immutable: let the kernel keep entries and attributes as long as it likes.
CACHE_TIMEOUT = 365 * 24 * 3600.0
DEFAULT_THREADS = 4          # nydusd's --fuse-threads default
ROOT_INODE = 1               # FUSE_ROOT_ID
ENTRY_CACHE_SIZE = 1 << 17   # attribute records kept for replies (then started afresh)
LISTING_CACHE_SIZE = 256     # directory listings kept between readdir calls
FILE_CACHE_SIZE = 4096       # files (their chunk lists) kept between reads
NAME_CACHE_SIZE = 4096       # (parent, name) of files looked up, to name them in error messages

# an attribute reply (struct fuse_entry_param) in one pack: what _slot fills in, in this order
_make_entry = ll.struct_maker(ll.entry_param, (
    "ino", "attr.st_ino", "attr.st_mode", "attr.st_nlink", "attr.st_uid", "attr.st_gid", "attr.st_rdev",
    "attr.st_size", "attr.st_blksize", "attr.st_blocks", "attr.st_atim.tv_sec", "attr.st_atim.tv_nsec",
    "attr.st_mtim.tv_sec", "attr.st_mtim.tv_nsec", "attr.st_ctim.tv_sec", "attr.st_ctim.tv_nsec",
    "attr_timeout", "entry_timeout")) if ll.stat is not None else None


class InodeNumbers:
    """FUSE inode numbers for image inode numbers: the same, except that FUSE's root is 1.

    The image's root and the image's inode 1 trade places; an image inode 0 (a v6 nid can be 0),
    which FUSE cannot use, becomes ``ZERO``.
    """

    ZERO = 1 << 63

    def __init__(self, root: int):
        self.root = root
        self._root_slot = self._plain(root)

    def _plain(self, ino: int) -> int:
        return self.ZERO if ino == 0 else ino

    def to_fuse(self, ino: int) -> int:
        if ino == self.root:
            return ROOT_INODE
        if ino == ROOT_INODE:
            return self._root_slot
        return self._plain(ino)

    def to_image(self, fuse_ino: int) -> int:
        if fuse_ino == ROOT_INODE:
            return self.root
        if fuse_ino == self._root_slot:
            return ROOT_INODE
        return 0 if fuse_ino == self.ZERO else fuse_ino


def errno_for(exc: BaseException) -> int:
    """The errno the kernel gets for a failed request."""
    if isinstance(exc, errors.PathError):
        return exc.errno
    if isinstance(exc, errors.UnsupportedError):
        return errno.EOPNOTSUPP
    return errno.EIO         # a broken image, a missing blob, a backend that failed: an I/O error


class _Reply(Exception):
    """Raised by a handler to answer the request with an errno."""

    def __init__(self, code: int):
        super().__init__(code)
        self.errno = code


class RafsOperations:
    """The FUSE request handlers for one image (read-only), as a ``struct fuse_lowlevel_ops``."""

    def __init__(self, image: Image, lib, *, threads: int = DEFAULT_THREADS, enable_xattr: bool = False,
                 observer=None):
        self.image = image
        self.observer = observer      # a rafs.serve.trace.MountObserver counting reads, or None
        self.lib = lib
        self.threads = max(1, int(threads))
        self.enable_xattr = enable_xattr
        self.numbers = InodeNumbers(image.root_ino)
        self.zero_message_open = False
        self.zero_message_opendir = False
        self.pusher = None            # a rafs.fuse.push.SiblingPusher, once the session exists
        self._slots: dict[int, tuple] = {}
        self._listings = LRU(LISTING_CACHE_SIZE)
        self._files = LRU(FILE_CACHE_SIZE)
        self._parents: dict[int, int] = {}
        # names seen by lookup and readdirplus, so an error can name a file by its path: directories
        # all (there are few), other files the last NAME_CACHE_SIZE looked up
        self._dir_names: dict[int, bytes] = {}
        self._names = LRU(NAME_CACHE_SIZE)
        self._negative = ll.entry_param(ino=0, entry_timeout=CACHE_TIMEOUT)
        self._dir_buffer = ctypes.create_string_buffer(1 << 16)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rafs-fetch")
        self._callbacks = {}
        self.table = ll.lowlevel_ops()
        for name in ll.PROTOTYPES:
            callback = ll.PROTOTYPES[name](self._init if name == "init" else self._guarded(getattr(self, name)))
            self._callbacks[name] = callback              # ctypes callbacks must outlive the session
            setattr(self.table, name, ctypes.cast(callback, ctypes.c_void_p))

    def _guarded(self, handler):
        """Every request gets exactly one reply: a handler replies itself or raises."""
        lib = self.lib

        def callback(req, *args):
            try:
                handler(req, *args)
            except _Reply as reply:
                lib.fuse_reply_err(req, reply.errno)
            except errors.PathError as exc:
                lib.fuse_reply_err(req, exc.errno)
            except errors.RafsError as exc:
                log.warning("%s: %s", handler.__name__, exc)
                lib.fuse_reply_err(req, errno_for(exc))
            except BaseException:
                log.exception("%s failed", handler.__name__)
                lib.fuse_reply_err(req, errno.EIO)
        return callback

    def _init(self, userdata, conn) -> None:
        conn = conn.contents
        wanted = ll.CAP_CACHE_SYMLINKS | ll.CAP_NO_OPEN_SUPPORT | ll.CAP_NO_OPENDIR_SUPPORT
        conn.want |= conn.capable & wanted
        conn.want &= ~(ll.CAP_READDIRPLUS_AUTO | ll.CAP_EXPORT_SUPPORT)    # always readdirplus
        self.zero_message_open = bool(conn.capable & ll.CAP_NO_OPEN_SUPPORT)
        self.zero_message_opendir = bool(conn.capable & ll.CAP_NO_OPENDIR_SUPPORT)

    def close(self, timeout: float = 10) -> bool:
        """Stop the fetch workers; False if some are still busy after ``timeout`` seconds."""
        if self.pusher is not None:
            self.pusher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        done = threading.Event()

        def wait():
            self._pool.shutdown(wait=True)
            done.set()
        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    # -- attributes --------------------------------------------------------------------------------

    def _slot(self, ino: int) -> tuple:
        """(entry_param, its address, is a directory) of image inode ``ino``, built once."""
        slot = self._slots.get(ino)
        if slot is None:
            if len(self._slots) >= ENTRY_CACHE_SIZE:
                self._slots.clear()
            inode = self.image.get_inode(ino)
            fuse_ino = self.numbers.to_fuse(ino)
            sec, nsec = divmod(inode.mtime_ns, 1_000_000_000)
            try:
                entry = _make_entry(fuse_ino, fuse_ino, inode.mode, inode.nlink, inode.uid, inode.gid, inode.rdev,
                                    inode.size, BLOCK_SIZE, inode.blocks, sec, nsec, sec, nsec, sec, nsec,
                                    CACHE_TIMEOUT, CACHE_TIMEOUT)
            except struct.error:          # a value out of its field's range: let ctypes truncate it
                stamp = ll.timespec(sec, nsec)
                attr = ll.stat(st_ino=fuse_ino, st_mode=inode.mode, st_nlink=inode.nlink, st_uid=inode.uid,
                               st_gid=inode.gid, st_rdev=inode.rdev, st_size=inode.size, st_blksize=BLOCK_SIZE,
                               st_blocks=inode.blocks, st_atim=stamp, st_mtim=stamp, st_ctim=stamp)
                entry = ll.entry_param(fuse_ino, 0, attr, CACHE_TIMEOUT, CACHE_TIMEOUT)
            slot = self._slots[ino] = (entry, ctypes.addressof(entry), inode.is_dir)
        return slot

    def _entry(self, ino: int) -> ll.entry_param:
        return self._slot(ino)[0]

    # -- requests ----------------------------------------------------------------------------------

    def lookup(self, req, parent_ino, name) -> None:
        parent = self.numbers.to_image(parent_ino)
        if name == b".":
            entry = self._entry(parent)
        elif name == b"..":
            entry = self._entry(self._parents.get(parent, self.image.root_ino))
        else:
            try:
                ino = self.image.lookup(parent, name).ino
            except errors.FileNotFoundError:
                self.lib.fuse_reply_entry(req, self._negative)      # cached as a negative dentry
                return
            entry, _, is_dir = self._slot(ino)
            if is_dir:
                self._parents[ino] = parent
                self._dir_names[ino] = name
            else:
                self._names.put(ino, (parent, name))
        self.lib.fuse_reply_entry(req, entry)

    def getattr(self, req, ino, fi) -> None:
        self.lib.fuse_reply_attr(req, self._entry(self.numbers.to_image(ino)).attr, CACHE_TIMEOUT)

    def readlink(self, req, ino) -> None:
        target = self.image.get_inode(self.numbers.to_image(ino)).symlink
        if target is None:
            raise _Reply(errno.EINVAL)
        self.lib.fuse_reply_readlink(req, target)

    def statfs(self, req, ino) -> None:
        fs = self.image.statfs()
        out = ll.statvfs(f_bsize=fs.f_bsize, f_frsize=fs.f_bsize, f_blocks=fs.f_blocks, f_files=fs.f_files,
                         f_namemax=fs.f_namemax)
        self.lib.fuse_reply_statfs(req, out)

    def getxattr(self, req, ino, name, size) -> None:
        if not self.enable_xattr:
            raise _Reply(errno.ENOSYS)                # as nydusd: the kernel stops asking
        value = self.image.get_inode(self.numbers.to_image(ino)).xattrs.get(name)
        if value is None:
            raise _Reply(errno.ENODATA)
        self._reply_xattr(req, value, size)

    def listxattr(self, req, ino, size) -> None:
        if not self.enable_xattr:
            raise _Reply(errno.ENOSYS)
        names = self.image.get_inode(self.numbers.to_image(ino)).xattrs
        self._reply_xattr(req, b"".join(name + b"\0" for name in names), size)

    def _reply_xattr(self, req, value: bytes, size: int) -> None:
        if size == 0:
            self.lib.fuse_reply_xattr(req, len(value))
        elif len(value) > size:
            raise _Reply(errno.ERANGE)
        else:
            self.lib.fuse_reply_buf(req, value, len(value))

    def opendir(self, req, ino, fi) -> None:
        if self.zero_message_opendir:
            raise _Reply(errno.ENOSYS)                # the kernel opens directories itself from now on
        fi.contents.fh = 0
        self.lib.fuse_reply_open(req, fi)

    def readdirplus(self, req, ino, size, offset, fi) -> None:
        dir_ino = self.numbers.to_image(ino)
        entries = self._listings.get(dir_ino)
        if entries is None:
            entries = self.image.dir_entries(dir_ino)
            self._listings.put(dir_ino, entries)
        if self.pusher is not None and offset == 0:
            self.pusher.listed(dir_ino, entries)
        if len(self._dir_buffer) < size:
            self._dir_buffer = ctypes.create_string_buffer(size)
        base, used = ctypes.addressof(self._dir_buffer), 0     # only the loop thread lists
        # offsets: 0 is ".", 1 is "..", 2 + i is entries[i]; each entry names the offset after it
        add, slot, parents, dir_names = self.lib.fuse_add_direntry_plus, self._slot, self._parents, self._dir_names
        for index in range(offset, len(entries) + 2):
            if index >= 2:
                name, child = entries[index - 2]
                _, address, is_dir = slot(child)
                if is_dir:
                    parents[child] = dir_ino
                    dir_names[child] = name
            elif index == 0:
                name, address = b".", slot(dir_ino)[1]
            else:
                name, address = b"..", slot(parents.get(dir_ino, self.image.root_ino))[1]
            need = add(req, base + used, size - used, name, address, index + 1)
            if need > size - used:
                break
            used += need
        self.lib.fuse_reply_buffer(req, base, used)

    def open(self, req, ino, fi) -> None:
        if self.zero_message_open:
            raise _Reply(errno.ENOSYS)                # the kernel opens files itself from now on
        info = fi.contents
        if info.flags & os.O_ACCMODE != os.O_RDONLY or info.flags & os.O_TRUNC:
            raise _Reply(errno.EROFS)
        info.fh = 0
        info.bits |= ll.FI_KEEP_CACHE
        self.lib.fuse_reply_open(req, fi)

    def read(self, req, ino, size, offset, fi) -> None:
        started = time.monotonic_ns() if self.observer is not None else None     # the read's latency
        image_ino = self.numbers.to_image(ino)
        file = self._files.get(image_ino)
        if file is None:
            # the chunk list comes from the bootstrap (in memory); only images whose chunks live in a
            # blob's CI array fetch that array here, once per blob
            file = self.image.open_inode(image_ino)
            self._files.put(image_ino, file)
        # in memory, in the blob cache or in a local blob: quicker here than handed to a worker
        try:
            data = file.pread(size, offset, local_only=True)
        except errors.RafsError as exc:
            self._log_read_error(file, size, offset, exc)
            raise _Reply(errno_for(exc)) from None
        if data is not None:
            if self.observer is not None:         # before the reply, which lets the reader go on
                self.observer.read(image_ino, len(data), started=started)
            self.lib.fuse_reply_buf(req, data, len(data))
            if offset == 0 and self.pusher is not None:
                self.pusher.after_read(image_ino, file.size, len(data))
            return
        self._pool.submit(self._read_remote, req, file, size, offset, started)

    def _read_remote(self, req, file, size, offset, started=None) -> None:
        observer = self.observer
        token = observer.begin_remote(file.inode.ino) if observer is not None else None
        try:
            data = file.pread(size, offset)
        except BaseException as exc:  # noqa: BLE001 - answered to the kernel as an errno
            self._log_read_error(file, size, offset, exc)
            self.lib.fuse_reply_err(req, errno_for(exc))
        else:
            if observer is not None:
                observer.read(file.inode.ino, len(data), remote=True, started=started)
            self.lib.fuse_reply_buf(req, data, len(data))
            if offset == 0 and self.pusher is not None:
                self.pusher.after_read(file.inode.ino, file.size, len(data))
        finally:
            if token is not None:
                observer.end_remote(token)

    def _log_read_error(self, file, size: int, offset: int, exc: BaseException) -> None:
        """Log a failed read naming the file by its path (the inode number alone tells a user nothing)."""
        if self.observer is not None:
            self.observer.failed()
        ino = file.inode.ino
        path = self.path_of(ino)
        what = f"{path} (inode {ino})" if path else f"inode {ino}"
        message = " ".join(str(exc).split()).replace(f"<inode {ino}>", path or f"inode {ino}")
        if isinstance(exc, errors.RafsError):
            log.warning("read of %s, %d bytes at offset %d: %s", what, size, offset, message)
        else:
            log.error("read of %s, %d bytes at offset %d failed", what, size, offset, exc_info=exc)

    def path_of(self, ino: int) -> str | None:
        """The path of image inode ``ino`` as the kernel reached it, from the names seen so far (None
        when it was never looked up or listed since it left the caches)."""
        parts: list[bytes] = []
        current, root = ino, self.image.root_ino
        while current != root:
            if len(parts) > 4096:
                return None
            found = self._names.peek(current)     # no reordering from a worker
            if found is None and current in self._dir_names:
                found = (self._parents.get(current, root), self._dir_names[current])
            if found is None:
                found = self._find_in_listings(current)
            if found is None:
                return None
            current, name = found
            parts.append(name)
        return "/" + "/".join(os.fsdecode(name) for name in reversed(parts))

    def _find_in_listings(self, ino: int) -> tuple[int, bytes] | None:
        for dir_ino, entries in list(self._listings.items()):
            for name, child in entries:
                if child == ino:
                    return dir_ino, name
        return None
