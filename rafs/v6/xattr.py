"""EROFS extended attributes: the inline xattr body after an inode and the shared xattr area
(fs/erofs/xattr.c; v6.rs ``RafsV6XattrIbodyHeader``/``RafsV6XattrEntry``).

The body is ``i_xattr_icount`` 4-byte slots: a 12-byte header, ``h_shared_count`` u32 ids of shared
entries (each at ``s_xattr_blkaddr * block size + 4 * id``), then inline entries, each a 4-byte header,
the name suffix and the value, padded to 4 bytes. Names are a prefix chosen by ``e_name_index`` plus the
stored suffix. Entries whose index has no prefix the kernel lists (0, lustre, 7..127) are left out, as
``listxattr`` on a kernel mount leaves them out.
"""

from __future__ import annotations

from ..errors import InvalidImageError, UnsupportedError
from . import layout

from .records import XATTR_ENTRY as ENTRY, XATTR_HEADER as HEADER
_STRUCTURE = "v6 inode xattrs"
_LISTED_PREFIXES = {index: prefix for index, prefix in layout.EROFS_XATTR_PREFIXES.items()
                    if index != layout.EROFS_XATTR_INDEX_LUSTRE}


def body_size(icount: int) -> int:
    """Bytes of the inline xattr body for ``i_xattr_icount`` (erofs_xattr_ibody_size)."""
    return 0 if icount == 0 else layout.EROFS_XATTR_IBODY_HEADER_SIZE + 4 * (icount - 1)


def _entry(data, at: int, limit: int) -> tuple[bytes, bytes, int] | None:
    """(name, value, aligned size) of the entry at ``at`` that must end by ``limit``; None if unlisted."""
    head = ENTRY.unpack_from(data, at)
    size = 4 + head.e_name_len + head.e_value_size
    aligned = (size + layout.EROFS_XATTR_ALIGNMENT - 1) & ~(layout.EROFS_XATTR_ALIGNMENT - 1)
    if at + size > limit:
        raise InvalidImageError(f"xattr entry of {size} bytes runs past its area", structure=_STRUCTURE, offset=at)
    index = head.e_name_index
    if index & layout.EROFS_XATTR_LONG_PREFIX:
        raise UnsupportedError("xattrs with long name prefixes (EROFS xattr_prefixes feature) are not supported")
    prefix = _LISTED_PREFIXES.get(index)
    if prefix is None:
        return None, None, aligned
    name_at = at + 4
    name = prefix + bytes(data[name_at:name_at + head.e_name_len])
    value = bytes(data[name_at + head.e_name_len:name_at + head.e_name_len + head.e_value_size])
    return name, value, aligned


def decode(data, start: int, icount: int, *, shared_base: int | None) -> dict[bytes, bytes]:
    """The xattrs of an inode whose body starts at ``start`` in ``data``.

    ``shared_base`` is the byte offset of the shared xattr area, or None when the image has none (then a
    shared id is an error).
    """
    size = body_size(icount)
    end = start + size
    if size == 0:
        return {}
    if end > len(data):
        raise InvalidImageError(f"xattr body of {size} bytes runs past the image", structure=_STRUCTURE,
                                offset=start)
    header = HEADER.unpack_from(data, start)
    shared_end = start + layout.EROFS_XATTR_IBODY_HEADER_SIZE + 4 * header.h_shared_count
    if shared_end > end:
        raise InvalidImageError(f"{header.h_shared_count} shared xattr ids do not fit the {size}-byte body",
                                structure=_STRUCTURE, offset=start)
    result: dict[bytes, bytes] = {}
    for at in range(start + layout.EROFS_XATTR_IBODY_HEADER_SIZE, shared_end, 4):
        xattr_id = int.from_bytes(data[at:at + 4], "little")
        if shared_base is None:
            raise InvalidImageError("shared xattr id in an image without a shared xattr area",
                                    structure=_STRUCTURE, offset=at)
        entry_at = shared_base + 4 * xattr_id
        if entry_at + 4 > len(data):
            raise InvalidImageError(f"shared xattr id {xattr_id} points past the image", structure=_STRUCTURE,
                                    offset=at)
        name, value, _ = _entry(data, entry_at, len(data))
        if name is not None:
            result[name] = value
    at = shared_end
    while at < end:
        name, value, aligned = _entry(data, at, end)
        if name is not None:
            result[name] = value
        at += aligned
    return result
