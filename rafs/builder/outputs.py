"""Atomic output files: what a build, a merge or ``rafs unpack`` writes goes through a temporary file in
its target directory and is renamed into place only once everything succeeded."""

from __future__ import annotations

import hashlib
import os
import stat as _stat

from .. import tempfiles
from ..errors import BuildError
from ..tempfiles import umask


class Output:
    """One output file written through a temporary file in its target directory.

    ``path`` is the final file (renamed into place on commit), or None to name it by content in
    ``directory``. The temporary file is :func:`rafs.tempfiles.mkstemp`'s (unique, never through a
    link), removed by ``discard`` when the build fails or is stopped by a signal. A symlink at
    ``path`` is followed (its target is replaced, not the link), and anything that is not a regular
    file (a FIFO, as nydus-image allows for ``--blob`` pipes, or a device such as /dev/null) is
    written directly, never replaced. An output that cannot be opened
    raises ``error`` naming it. Builds, merges and ``rafs unpack`` write through it.
    """

    def __init__(self, path, directory, *, error: type[Exception] = BuildError):
        self.path = None if path is None else os.fspath(path)
        self.directory = os.fspath(directory) if directory is not None else None
        self.tmp = None
        if self.path is not None:
            self.path = os.path.realpath(self.path)
            if _is_special(self.path):
                try:
                    self.fp = open(self.path, "wb")     # noqa: SIM115 - closed by commit() or discard()
                except OSError as exc:
                    raise error(f"cannot write {self.path!r}: {exc.strerror or exc}") from None
                return
        target_dir = os.path.dirname(self.path) if self.path is not None else self.directory
        try:
            fd, self.tmp = tempfiles.mkstemp(target_dir)
        except OSError as exc:
            raise error(f"cannot write {self.path or os.path.join(target_dir, '')!r}: cannot create a file in "
                        f"{target_dir}: {exc.strerror or exc}") from None
        self.fp = os.fdopen(fd, "wb", buffering=1 << 20)

    def digest_name(self) -> str | None:
        """The sha256 hex of what was written, naming an output in a directory; None for a named path."""
        if self.path is not None or self.tmp is None:
            return None
        self.fp.flush()
        # read through our own descriptor: the name could have been swapped by someone else by now
        hasher = hashlib.sha256()
        fd, offset = self.fp.fileno(), 0
        while block := os.pread(fd, 1 << 20, offset):
            hasher.update(block)
            offset += len(block)
        return hasher.hexdigest()

    def commit(self, name: str | None) -> str | None:
        """Move the file into place: at ``path``, else as ``directory/name``; None if not kept."""
        if self.tmp is not None:
            os.fchmod(self.fp.fileno(), 0o666 & ~umask())       # the mode mkstemp withheld, on our file
        self.fp.close()
        if self.tmp is None:
            return self.path
        final = self.path
        if final is None:
            if name is None:
                os.unlink(self.tmp)
                self.tmp = None
                return None
            final = os.path.join(self.directory, name)
        os.replace(self.tmp, final)
        self.tmp = None
        return final

    def discard(self) -> None:
        """Close and remove the temporary file: nothing is left behind."""
        try:
            self.fp.close()
        except (OSError, ValueError):
            pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self.tmp = None


def _is_special(path: str) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a directory (a FIFO, a device, a socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (_stat.S_ISREG(mode) or _stat.S_ISDIR(mode))


def write_whole(path, data: bytes) -> str | None:
    """Write ``data`` to ``path`` through an :class:`Output` (renamed into place only once all is written)."""
    out = Output(path, None)
    try:
        out.fp.write(data)
        return out.commit(None)
    except BaseException:
        out.discard()
        raise
