"""Helpers for hostile-input tests: mutate an image and exercise every read path on it."""

from __future__ import annotations

import contextlib
import random
import signal
import stat

import rafs

READ_BLOCK = 1 << 20


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    def expired(signum, frame):
        raise AssertionError(f"{what}: took longer than {seconds}s (hang?)")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def exercise(source, **open_kwargs) -> None:
    """open + walk + stat + readlink + xattrs + read every file (in blocks) + check."""
    with rafs.open(source, **open_kwargs) as image:
        for path, inode in image.iter_entries("/"):
            image.lstat(path)
            image.listxattr(path, follow_symlinks=False)
            if stat.S_ISLNK(inode.mode):
                image.readlink(path)
            elif stat.S_ISREG(inode.mode):
                with image.open_inode(inode.ino) as f:
                    pos = 0
                    while pos < min(inode.size, 64 * READ_BLOCK):
                        if not f.pread(READ_BLOCK, pos):
                            break
                        pos += READ_BLOCK
        for _ in image.check(verify_data=True):
            pass


def bit_flips(data: bytes, count: int, seed: int = 1234, span: tuple[int, int] | None = None):
    """``count`` deterministic single-bit mutants of ``data`` as (description, bytes)."""
    rng = random.Random(seed)
    lo, hi = span or (0, len(data))
    for _ in range(count):
        at = rng.randrange(lo, hi)
        bit = rng.randrange(8)
        mutant = bytearray(data)
        mutant[at] ^= 1 << bit
        yield f"bit {bit} of byte {at:#x}", bytes(mutant)


def truncations(data: bytes, count: int, seed: int = 99):
    rng = random.Random(seed)
    points = sorted({0, 1, len(data) - 1, len(data) // 2, *(rng.randrange(len(data)) for _ in range(count))})
    for n in points:
        yield f"truncated to {n} bytes", data[:n]


def check_mutant(description: str, mutant: bytes, *, seconds: float = 5.0, **open_kwargs) -> str:
    """Run ``exercise`` on a mutant: returns "ok" or the rafs error class name; fails otherwise."""
    with time_limit(seconds, description):
        try:
            exercise(mutant, **open_kwargs)
            return "ok"
        except rafs.RafsError as exc:
            return type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - the point is to catch anything that is not ours
            raise AssertionError(f"{description}: {type(exc).__name__} escaped: {exc}") from exc
