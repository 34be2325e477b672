"""The FUSE adapter's pieces that need no mount: inode numbering, errno mapping, options, CLI flags."""

from __future__ import annotations

import errno

import pytest

from rafs import errors
from rafs.cli.main import build_parser


@pytest.fixture(scope="module")
def fuse():
    from rafs import fuse
    return fuse


@pytest.mark.parametrize("root", [1, 36, 0, 5])
def test_inode_numbers_are_a_bijection_with_root_at_1(fuse, root):
    numbers = fuse.InodeNumbers(root)
    image_inos = [0, 1, 2, 3, 5, 36, 37, 1 << 40]
    mapped = [numbers.to_fuse(i) for i in image_inos]
    assert numbers.to_fuse(root) == 1
    assert len(set(mapped)) == len(mapped) and 0 not in mapped
    assert [numbers.to_image(m) for m in mapped] == image_inos
    untouched = [i for i in image_inos if i not in (0, 1, root)]
    assert all(numbers.to_fuse(i) == i for i in untouched)


def test_errno_for(fuse):
    assert fuse.errno_for(errors.FileNotFoundError("/x")) == errno.ENOENT
    assert fuse.errno_for(errors.NotADirectoryError("/x")) == errno.ENOTDIR
    assert fuse.errno_for(errors.NoSuchXattrError("/x")) == errno.ENODATA
    assert fuse.errno_for(errors.UnsupportedError("encrypted")) == errno.EOPNOTSUPP
    assert fuse.errno_for(errors.InvalidImageError("bad")) == errno.EIO
    assert fuse.errno_for(errors.BlobNotFoundError("abc", "/blobs")) == errno.EIO   # not ENOENT: the file exists
    assert fuse.errno_for(errors.BackendError("s3 down")) == errno.EIO
    assert fuse.errno_for(RuntimeError("bug")) == errno.EIO


def test_mount_options_read_only(fuse):
    options = fuse.mount_options(allow_other=False, auto_unmount=False)
    assert {"ro", "default_permissions", "subtype=rafs", "fsname=rafs"} <= options
    assert "allow_other" not in options and "auto_unmount" not in options
    assert "allow_other" in fuse.mount_options(allow_other=True)


def test_cli_takes_nydusd_flags():
    parser = build_parser()
    args = parser.parse_args(["mount", "--config", "c.json", "--mountpoint", "mnt", "--bootstrap", "b",
                              "--fuse-threads", "8", "--log-level", "debug"])
    assert (args.config, args.mountpoint, args.bootstrap, args.threads, args.log_level) == \
        ("c.json", "mnt", "b", 8, "debug")
    args = parser.parse_args(["mount", "-M", "mnt", "-B", "b", "-D", "blobs", "--threads", "2", "-l", "warn"])
    assert (args.mountpoint, args.localfs_dir, args.threads, args.log_level) == ("mnt", "blobs", 2, "warn")
    assert parser.parse_args(["mount", "-M", "m", "-B", "b"]).log_level == "info"
    args = parser.parse_args(["umount", "mnt", "--lazy"])
    assert args.mountpoint == "mnt" and args.lazy
    with pytest.raises(SystemExit):
        parser.parse_args(["mount", "-M", "m", "-B", "b", "--threads", "0"])


@pytest.mark.parametrize("mtime_ns", [1_700_000_000_123_456_789, 0, -1_500_000_000])
def test_attribute_records_packed_as_ctypes_builds_them(fuse, mtime_ns):
    from rafs import _libfuse as ll
    sec, nsec = divmod(mtime_ns, 1_000_000_000)
    values = dict(ino=37, mode=0o100644, nlink=2, uid=1000, gid=(1 << 32) - 2, rdev=0x0801, size=(1 << 40) + 3,
                  blocks=9)
    packed = fuse._make_entry(37, 37, values["mode"], 2, 1000, values["gid"], 0x0801, values["size"], 4096, 9,
                              sec, nsec, sec, nsec, sec, nsec, 1.5, 2.5)
    stamp = ll.timespec(sec, nsec)
    attr = ll.stat(st_ino=37, st_mode=values["mode"], st_nlink=2, st_uid=1000, st_gid=values["gid"], st_rdev=0x0801,
                   st_size=values["size"], st_blksize=4096, st_blocks=9, st_atim=stamp, st_mtim=stamp, st_ctim=stamp)
    assert bytes(packed) == bytes(ll.entry_param(37, 0, attr, 1.5, 2.5))
    assert packed.attr.st_mtim.tv_sec == sec and packed.entry_timeout == 2.5
