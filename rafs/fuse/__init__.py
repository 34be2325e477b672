"""Serve an image through FUSE: each kernel request becomes a call on :class:`rafs.Image`.

This is the adapter behind ``rafs mount`` (nydusd's FUSE mode). It holds no format knowledge: the
image answers by inode number (``get_inode``, ``lookup``, ``dir_entries``, ``open_inode``,
``statfs``); this module only speaks FUSE, through libfuse3's low-level API (:mod:`rafs._libfuse`,
ctypes), so FUSE inode numbers are the image's own (the root and inode 1 trade places, as FUSE fixes
the root at 1) and nothing is resolved by path.

Speed comes from the kernel: the image never changes, so entries and attributes are cached for a
year, opens and opendirs cost no request at all (zero-message open: the kernel keeps file pages and
directory listings across opens), symlink targets are cached and listings carry attributes
(readdirplus). One thread runs libfuse's request loop and answers metadata and data that is in
memory, in the blob cache or in a local blob inline; data that waits on a remote backend is read by
a pool of ``threads`` workers that reply when it arrives, so slow fetches never hold up the rest.

Request handling is :mod:`rafs.fuse.operations`; mounting, the loop, unmounting and signals are
:mod:`rafs.fuse.mounting`. This package's names are the public ones.
"""

from .mounting import clear_stale_mount, is_stale, mount, mount_options, unmount
from .operations import CACHE_TIMEOUT, DEFAULT_THREADS, ROOT_INODE, InodeNumbers, RafsOperations, errno_for
from .operations import _make_entry  # noqa: F401 - the attribute-reply packer, checked field by field by the tests

__all__ = ["mount", "unmount", "clear_stale_mount", "is_stale", "mount_options", "RafsOperations", "InodeNumbers",
           "errno_for", "CACHE_TIMEOUT", "DEFAULT_THREADS", "ROOT_INODE"]
