"""A ctypes binding to libfuse3's low-level API: what :mod:`rafs.fuse` needs and nothing more.

Only the shared library ``libfuse3.so.3`` (Debian: libfuse3-3, pulled in by fuse3) is needed at run
time: no compiler, no headers. Layouts are those of libfuse 3.x's public headers
(``fuse_lowlevel.h``, ``fuse_common.h``), which only ever append members; ``struct stat`` and
``struct statvfs`` are glibc's for x86_64 and for the generic layout (aarch64, riscv64).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import operator
import platform
import struct

from .errors import UnsupportedError

c_ino = ctypes.c_uint64
c_off = ctypes.c_int64
c_req = ctypes.c_void_p

# fuse_common.h capability bits
CAP_NO_OPEN_SUPPORT = 1 << 17
CAP_CACHE_SYMLINKS = 1 << 23
CAP_NO_OPENDIR_SUPPORT = 1 << 24
CAP_READDIRPLUS = 1 << 13
CAP_READDIRPLUS_AUTO = 1 << 14
CAP_PARALLEL_DIROPS = 1 << 18
CAP_EXPORT_SUPPORT = 1 << 4

# fuse_file_info bit field (after ``int flags``): writepage, direct_io, keep_cache, ...
FI_KEEP_CACHE = 1 << 2


class timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


if platform.machine() in ("x86_64", "AMD64"):
    class stat(ctypes.Structure):
        _fields_ = [("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64), ("st_nlink", ctypes.c_uint64),
                    ("st_mode", ctypes.c_uint32), ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
                    ("_pad0", ctypes.c_int32), ("st_rdev", ctypes.c_uint64), ("st_size", ctypes.c_int64),
                    ("st_blksize", ctypes.c_int64), ("st_blocks", ctypes.c_int64), ("st_atim", timespec),
                    ("st_mtim", timespec), ("st_ctim", timespec), ("_reserved", ctypes.c_int64 * 3)]
elif platform.machine() in ("aarch64", "arm64", "riscv64"):
    class stat(ctypes.Structure):                                  # asm-generic/stat.h
        _fields_ = [("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64), ("st_mode", ctypes.c_uint32),
                    ("st_nlink", ctypes.c_uint32), ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
                    ("st_rdev", ctypes.c_uint64), ("_pad1", ctypes.c_uint64), ("st_size", ctypes.c_int64),
                    ("st_blksize", ctypes.c_int32), ("_pad2", ctypes.c_int32), ("st_blocks", ctypes.c_int64),
                    ("st_atim", timespec), ("st_mtim", timespec), ("st_ctim", timespec),
                    ("_unused", ctypes.c_uint32 * 2)]
else:                                                              # pragma: no cover
    stat = None


class statvfs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulong) for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                    "f_files", "f_ffree", "f_favail", "f_fsid", "f_flag",
                                                    "f_namemax")] + [("_spare", ctypes.c_int * 6)]


class entry_param(ctypes.Structure):
    _fields_ = [("ino", c_ino), ("generation", ctypes.c_uint64), ("attr", stat or ctypes.c_char),
                ("attr_timeout", ctypes.c_double), ("entry_timeout", ctypes.c_double)]


class file_info(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_int), ("bits", ctypes.c_uint32), ("padding2", ctypes.c_uint32),
                ("fh", ctypes.c_uint64), ("lock_owner", ctypes.c_uint64), ("poll_events", ctypes.c_uint32)]


class conn_info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint) for name in ("proto_major", "proto_minor", "max_write", "max_read",
                                                   "max_readahead", "capable", "want", "max_background",
                                                   "congestion_threshold", "time_gran")]


class buf(ctypes.Structure):
    """struct fuse_buf (libfuse 3.0-3.16): ``mem`` holds ``size`` bytes when ``flags`` is 0."""
    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p), ("fd", ctypes.c_int),
                ("pos", c_off)]


class bufvec(ctypes.Structure):
    """struct fuse_bufvec with one buffer."""
    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t), ("buf", buf * 1)]


class args(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)), ("allocated", ctypes.c_int)]


# struct fuse_lowlevel_ops, in header order; the handlers rafs installs get a prototype below
OPERATIONS = ("init", "destroy", "lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir",
              "unlink", "rmdir", "symlink", "rename", "link", "open", "read", "write", "flush", "release",
              "fsync", "opendir", "readdir", "releasedir", "fsyncdir", "statfs", "setxattr", "getxattr",
              "listxattr", "removexattr", "access", "create", "getlk", "setlk", "bmap", "ioctl", "poll",
              "write_buf", "retrieve_reply", "forget_multi", "flock", "fallocate", "readdirplus",
              "copy_file_range", "lseek")


class lowlevel_ops(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in OPERATIONS]


PROTOTYPES = {
    "init": ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(conn_info)),
    "lookup": ctypes.CFUNCTYPE(None, c_req, c_ino, ctypes.c_char_p),
    "getattr": ctypes.CFUNCTYPE(None, c_req, c_ino, ctypes.c_void_p),
    "readlink": ctypes.CFUNCTYPE(None, c_req, c_ino),
    "open": ctypes.CFUNCTYPE(None, c_req, c_ino, ctypes.POINTER(file_info)),
    "read": ctypes.CFUNCTYPE(None, c_req, c_ino, ctypes.c_size_t, c_off, ctypes.POINTER(file_info)),
    "opendir": ctypes.CFUNCTYPE(None, c_req, c_ino, ctypes.POINTER(file_info)),
    "statfs": ctypes.CFUNCTYPE(None, c_req, c_ino),
    "getxattr": ctypes.CFUNCTYPE(None, c_req, c_ino, ctypes.c_char_p, ctypes.c_size_t),
    "listxattr": ctypes.CFUNCTYPE(None, c_req, c_ino, ctypes.c_size_t),
    "readdirplus": ctypes.CFUNCTYPE(None, c_req, c_ino, ctypes.c_size_t, c_off, ctypes.POINTER(file_info)),
}


def _scalar_members(ctype, base: int = 0, prefix: str = ""):
    """(dotted name, offset, ctypes type) of every scalar member of a Structure, nested ones spelled out."""
    for name, member in ctype._fields_:
        offset = base + getattr(ctype, name).offset
        if isinstance(member, type) and issubclass(member, ctypes.Structure):
            yield from _scalar_members(member, offset, prefix + name + ".")
        elif not (isinstance(member, type) and issubclass(member, ctypes.Array)):
            yield prefix + name, offset, member


def _struct_code(member) -> str:
    if member in (ctypes.c_double, ctypes.c_float):
        return "d" if member is ctypes.c_double else "f"
    code = {1: "B", 2: "H", 4: "I", 8: "Q"}[ctypes.sizeof(member)]
    return code.lower() if member(-1).value < 0 else code


def struct_maker(ctype, names):
    """A function making ``ctype`` values from positional values of the members ``names`` (dotted for
    nested structures), every other byte zero: one ``struct`` pack and a copy into the new object,
    where ctypes' keyword constructors take several microseconds. Values out of a member's range raise
    ``struct.error``."""
    members = {name: (offset, member) for name, offset, member in _scalar_members(ctype)}
    order = sorted(range(len(names)), key=lambda i: members[names[i]][0])
    fmt, position = "=", 0
    for i in order:
        offset, member = members[names[i]]
        fmt += f"{offset - position}x{_struct_code(member)}"
        position = offset + ctypes.sizeof(member)
    packer = struct.Struct(fmt + f"{ctypes.sizeof(ctype) - position}x")
    pack, pick, copy = packer.pack, operator.itemgetter(*order), ctype.from_buffer_copy

    def make(*values):
        return copy(pack(*pick(values)))
    return make


def load():
    """The libfuse3 library with the prototypes of the functions rafs calls."""
    if stat is None:
        raise UnsupportedError(f"rafs mount does not know struct stat on {platform.machine()}")
    name = ctypes.util.find_library("fuse3") or "libfuse3.so.3"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise UnsupportedError(f"rafs mount needs libfuse3 (Debian package fuse3): {exc}") from None
    P = ctypes.POINTER
    for fn, restype, argtypes in (
            ("fuse_session_new", ctypes.c_void_p, [P(args), P(lowlevel_ops), ctypes.c_size_t, ctypes.c_void_p]),
            ("fuse_session_mount", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
            ("fuse_session_loop", ctypes.c_int, [ctypes.c_void_p]),
            ("fuse_session_exit", None, [ctypes.c_void_p]),
            ("fuse_session_unmount", None, [ctypes.c_void_p]),
            ("fuse_session_destroy", None, [ctypes.c_void_p]),
            ("fuse_session_fd", ctypes.c_int, [ctypes.c_void_p]),
            ("fuse_reply_err", ctypes.c_int, [c_req, ctypes.c_int]),
            ("fuse_reply_entry", ctypes.c_int, [c_req, P(entry_param)]),
            ("fuse_reply_attr", ctypes.c_int, [c_req, P(stat), ctypes.c_double]),
            ("fuse_reply_open", ctypes.c_int, [c_req, P(file_info)]),
            ("fuse_reply_buf", ctypes.c_int, [c_req, ctypes.c_char_p, ctypes.c_size_t]),
            ("fuse_reply_readlink", ctypes.c_int, [c_req, ctypes.c_char_p]),
            ("fuse_reply_statfs", ctypes.c_int, [c_req, P(statvfs)]),
            ("fuse_reply_xattr", ctypes.c_int, [c_req, ctypes.c_size_t]),
            ("fuse_lowlevel_notify_store", ctypes.c_int, [ctypes.c_void_p, c_ino, c_off, P(bufvec), ctypes.c_int]),
            ("fuse_add_direntry_plus", ctypes.c_size_t,
             [c_req, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p, c_off])):
        function = getattr(lib, fn)
        function.restype = restype
        function.argtypes = argtypes
    # fuse_reply_buf again, for a reply that sits in a ctypes buffer (its address, no copy)
    lib.fuse_reply_buffer = ctypes.CFUNCTYPE(ctypes.c_int, c_req, ctypes.c_void_p, ctypes.c_size_t)(
        ("fuse_reply_buf", lib))
    return lib


def make_args(program: str, options) -> tuple[args, list]:
    """``struct fuse_args`` for ``program -o opt,opt``; the second item keeps the strings alive."""
    argv = [program.encode(), b"-o", ",".join(sorted(options)).encode()]
    array = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
    return args(len(argv), ctypes.cast(array, ctypes.POINTER(ctypes.c_char_p)), 0), [array, argv]
