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
