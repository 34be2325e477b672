"""The guardian of an on-demand EROFS mount: fail reads closed when the serving daemon dies.

When the last file descriptor of a fanotify group closes, the kernel answers every pending permission
event ``FAN_ALLOW`` (``fanotify_release``), and the marks go with the group: a reader blocked on a
range the daemon never filled would then read the zeros of a sparse hole. So the daemon
(:mod:`rafs.serve.ondemand`) starts this process with a copy of the group's descriptor and a pipe:

- the daemon writes ``dev N`` once its mount is up (the mount's ``st_dev``), and ``bye`` before a
  clean stop; the guardian then exits and nothing changes;
- if the pipe reaches end of file without ``bye``, the daemon died. The guardian answers every event
  the daemon had read but not answered with ``FAN_DENY``/``EIO`` (responses match pending events by
  file descriptor number, so it answers each number below the daemon's descriptor limit; the others
  fail with ENOENT at no cost), then reads and denies every new event until the mount is gone, and
  exits, dropping the marks. A new mount then serves every file from the cache, whose bits are only
  ever set for data that reached the disk.

Run as ``python -m rafs.serve.guardian GROUP_FD PIPE_FD MOUNTPOINT FD_LIMIT``; it uses only ``os``.
"""

from __future__ import annotations

import errno
import os
import select
import sys

from .. import _fanotify


def _read_pipe(pipe: int) -> tuple[bool, int | None]:
    """Wait for the daemon to end: (stopped cleanly, the mount's st_dev)."""
    received, device = b"", None
    while True:
        try:
            chunk = os.read(pipe, 4096)
        except InterruptedError:
            continue
        if not chunk:
            return False, device
        received += chunk
        for line in received.split(b"\n"):
            if line.startswith(b"dev "):
                device = int(line[4:])
            elif line == b"bye":
                return True, device


def _deny(group: int, fd: int) -> None:
    try:
        _fanotify.respond(group, fd, allow=False, error=errno.EIO)
    except OSError:
        pass                                 # ENOENT: no event pending under that number


def _still_mounted(mountpoint: str, device: int | None) -> bool:
    try:
        st = os.stat(mountpoint)
    except OSError:
        return False
    return device is None or st.st_dev == device


def guard(group: int, pipe: int, mountpoint: str, fd_limit: int) -> int:
    clean, device = _read_pipe(pipe)
    if clean:
        return 0
    for number in range(fd_limit):
        _deny(group, number)
    poller = select.poll()
    poller.register(group, select.POLLIN)
    while _still_mounted(mountpoint, device):
        if not poller.poll(500):
            continue
        try:
            buffer = os.read(group, 65536)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                continue
            return 1
        for event in _fanotify.parse_events(buffer):
            if event.fd >= 0:
                _deny(group, event.fd)
                os.close(event.fd)
    return 0


def main(argv: list[str]) -> int:
    group, pipe, mountpoint, fd_limit = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    return guard(group, pipe, mountpoint, fd_limit)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
