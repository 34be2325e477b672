"""Writing an image's tree as an OCI-compatible tar (what ``nydus-image unpack`` produces).

PAX format: long names and links, xattrs (``SCHILY.xattr.*``, or libarchive's ``LIBARCHIVE.xattr.*``
for names that are not UTF-8), nanosecond mtimes; hardlinks as link
entries to the first path; devices and fifos kept; content copied chunk by chunk.
"""

from __future__ import annotations

import base64
import os
import stat as _stat
import tarfile
import urllib.parse

from .errors import BuildError

_TYPES = {_stat.S_IFDIR: tarfile.DIRTYPE, _stat.S_IFREG: tarfile.REGTYPE, _stat.S_IFLNK: tarfile.SYMTYPE,
          _stat.S_IFCHR: tarfile.CHRTYPE, _stat.S_IFBLK: tarfile.BLKTYPE, _stat.S_IFIFO: tarfile.FIFOTYPE}


def write_tar(image, fileobj) -> int:
    """Write the whole tree to ``fileobj`` as a tar stream; returns the number of entries written."""
    count = 0
    first_link: dict[int, str] = {}
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for raw_path, inode in image.iter_entries("/"):
            if raw_path == b"/":
                continue
            kind = _stat.S_IFMT(inode.mode)
            if kind == _stat.S_IFSOCK:
                continue                     # tar cannot carry sockets; the reference skips them too
            name = os.fsdecode(raw_path.lstrip(b"/"))
            info = tarfile.TarInfo(name)
            info.mode = _stat.S_IMODE(inode.mode)
            info.uid, info.gid = inode.uid, inode.gid
            info.mtime = inode.mtime
            pax = {}
            if inode.mtime_nsec:
                pax["mtime"] = f"{inode.mtime}.{inode.mtime_nsec:09d}".rstrip("0")
            for key, value in inode.xattrs.items():
                try:
                    pax["SCHILY.xattr." + key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
                except UnicodeDecodeError:
                    # PAX keywords must be UTF-8 (tarfile refuses others): libarchive's form carries
                    # any name, URL-encoded, with the value in base64
                    pax["LIBARCHIVE.xattr." + urllib.parse.quote_from_bytes(key)] = \
                        base64.b64encode(value).decode("ascii")
            info.pax_headers = pax
            if kind == _stat.S_IFREG and inode.nlink > 1 and inode.ino in first_link:
                info.type = tarfile.LNKTYPE
                info.linkname = first_link[inode.ino]
                tar.addfile(info)
                count += 1
                continue
            if kind not in _TYPES:
                raise BuildError(f"{name}: cannot represent mode {inode.mode:#o} in a tar")
            info.type = _TYPES[kind]
            if kind == _stat.S_IFLNK:
                info.linkname = os.fsdecode(inode.symlink or b"")
            elif kind in (_stat.S_IFCHR, _stat.S_IFBLK):
                info.devmajor, info.devminor = os.major(inode.rdev), os.minor(inode.rdev)
            if kind == _stat.S_IFREG:
                info.size = inode.size
                with image.open_inode(inode.ino) as data:
                    tar.addfile(info, data)
                if inode.nlink > 1:
                    first_link[inode.ino] = name
            else:
                tar.addfile(info)
            count += 1
    return count
