"""A small binding of Linux fanotify's pre-content events (``FAN_CLASS_PRE_CONTENT``, Linux 6.14+).

Only what on-demand serving needs: make a pre-content group, mark files for ``FAN_PRE_ACCESS``, read
events with their range records, and answer each one. The constants and record layouts are the
kernel's UAPI (``include/uapi/linux/fanotify.h``); Debian 12's headers predate pre-content events, so
they are spelled out here.

An event carries a file descriptor opened by the kernel on the accessed file. Reads and writes
through that descriptor raise no further events, which is how a filler writes the missing bytes
without waking itself; the descriptor must be closed after the answer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
import struct
from typing import Iterator, NamedTuple

# fanotify_init flags
FAN_CLOEXEC = 0x0000_0001
FAN_NONBLOCK = 0x0000_0002
FAN_CLASS_PRE_CONTENT = 0x0000_0008
FAN_UNLIMITED_QUEUE = 0x0000_0010
# fanotify_mark flags and the event mask
FAN_MARK_ADD = 0x0000_0001
FAN_MARK_REMOVE = 0x0000_0002
FAN_PRE_ACCESS = 0x0010_0000
AT_FDCWD = -100
# responses; FAN_DENY may carry an errno in its top byte (FAN_DENY_ERRNO, Linux 6.14)
FAN_ALLOW = 0x01
FAN_DENY = 0x02
_FAN_ERRNO_SHIFT = 24
# errnos the kernel lets a pre-content listener return (fanotify_get_response's allow-list)
DENY_ERRNOS = frozenset({_errno.EIO, _errno.EPERM, _errno.EBUSY, _errno.ETXTBSY, _errno.EAGAIN,
                         _errno.ENOSPC, _errno.EDQUOT})

FANOTIFY_METADATA_VERSION = 3
FAN_EVENT_INFO_TYPE_RANGE = 6
# struct fanotify_event_metadata: event_len u32, vers u8, reserved u8, metadata_len u16, mask u64,
# fd s32, pid s32 (24 bytes)
_METADATA = struct.Struct("=IBBHQii")
# struct fanotify_event_info_header: info_type u8, pad u8, len u16
_INFO_HEADER = struct.Struct("=BBH")
# struct fanotify_event_info_range: header, pad u32, offset u64, count u64 (24 bytes)
_INFO_RANGE = struct.Struct("=BBHIQQ")
# struct fanotify_response: fd s32, response u32
_RESPONSE = struct.Struct("=iI")

_libc = None


def _c():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        libc.fanotify_init.restype = ctypes.c_int
        libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        libc.fanotify_mark.restype = ctypes.c_int
        _libc = libc
    return _libc


def _raise_errno(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


class Event(NamedTuple):
    """One pre-content event: the kernel's fd on the accessed file, the accessing pid, the byte range
    (``offset``, ``count``; None when the kernel sent no range record, as for an open)."""

    fd: int
    pid: int
    mask: int
    offset: int | None
    count: int | None


def init_precontent() -> int:
    """A new pre-content notification group (its fd), events opened read-write so fillers can write.

    Raises OSError when the kernel has no pre-content events (EINVAL before 6.14) or we lack
    CAP_SYS_ADMIN (EPERM)."""
    fd = _c().fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE,
                            os.O_RDWR | os.O_LARGEFILE | os.O_CLOEXEC)
    if fd < 0:
        _raise_errno("fanotify_init(FAN_CLASS_PRE_CONTENT)")
    return fd


def mark(group: int, path: str, *, remove: bool = False) -> None:
    """Add (or remove) a ``FAN_PRE_ACCESS`` mark on the file ``path``."""
    flags = FAN_MARK_REMOVE if remove else FAN_MARK_ADD
    if _c().fanotify_mark(group, flags, FAN_PRE_ACCESS, AT_FDCWD, os.fsencode(path)) < 0:
        _raise_errno(f"fanotify_mark({path})")


def parse_events(buffer: bytes) -> Iterator[Event]:
    """The events in one ``read`` of a group fd; records the binding does not know are skipped."""
    position, end = 0, len(buffer)
    while position + _METADATA.size <= end:
        event_len, version, _, metadata_len, mask, fd, pid = _METADATA.unpack_from(buffer, position)
        if version != FANOTIFY_METADATA_VERSION or event_len < metadata_len or position + event_len > end:
            raise OSError(_errno.EPROTO, f"fanotify event record of version {version} and length {event_len}")
        offset = count = None
        info = position + metadata_len
        while info + _INFO_HEADER.size <= position + event_len:
            info_type, _, info_len = _INFO_HEADER.unpack_from(buffer, info)
            if info_len < _INFO_HEADER.size:
                break
            if info_type == FAN_EVENT_INFO_TYPE_RANGE and info_len >= _INFO_RANGE.size:
                _, _, _, _, offset, count = _INFO_RANGE.unpack_from(buffer, info)
            info += info_len
        yield Event(fd, pid, mask, offset, count)
        position += event_len


def respond(group: int, event_fd: int, *, allow: bool, error: int = _errno.EIO) -> None:
    """Answer the permission event of ``event_fd``: allow it, or deny it with ``error`` (EIO by default,
    one of :data:`DENY_ERRNOS`)."""
    if allow:
        response = FAN_ALLOW
    else:
        response = FAN_DENY | ((error if error in DENY_ERRNOS else _errno.EIO) & 0xFF) << _FAN_ERRNO_SHIFT
    os.write(group, _RESPONSE.pack(event_fd, response))
