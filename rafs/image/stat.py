"""What :func:`os.stat` and :func:`os.statvfs` report, for the inodes of an image and for the image.

:class:`Stat` is a named tuple so that a walk can make one per entry cheaply (``Image.iter_stats``
builds them straight from a reader's raw stat values); RAFS keeps only an mtime, so atime and ctime
are the same.
"""

from __future__ import annotations

import stat as _stat
from dataclasses import dataclass
from typing import NamedTuple

from .. import display
from ..limits import BLOCK_SIZE
from ..model import Inode


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
        return BLOCK_SIZE

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
