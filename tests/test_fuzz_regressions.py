"""What fuzzing found, each kept as the smallest input that shows it (built here, not committed).

Deep-profile runs of tests/test_fuzz_*.py and the atheris targets in fuzz/ found these; each test
names the mutation or generated tree that first showed the fault.
"""

from __future__ import annotations

import base64
import io
import tarfile

import pytest

from rafs.testing import build_tree, directory, exercise, file
from rafs.image.unpack import write_tar


def test_unpack_of_a_non_utf8_xattr_name(tmp_path):
    """Deep mutation run, v5-zstd bootstrap, "u32 at 0x225c = 0x2b90" (an xattr name byte became 0x90):
    write_tar let UnicodeEncodeError escape, because PAX keywords must be UTF-8. Such names now go
    out in libarchive's form, LIBARCHIVE.xattr.<URL-encoded name> = base64(value)."""
    tree = {b"/": directory(), b"/f": file(b"x", xattrs={b"user.\x90\xff": b"v\0\xfe", b"user.ok": b"1"})}
    built = build_tree(tree, tmp_path, fs_version=5, compressor="none")
    assert exercise(built.source, **built.open_kwargs).summary == "ok"
    out = io.BytesIO()
    with built.open() as image:
        write_tar(image, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        headers = tar.getmember("f").pax_headers
    assert headers["SCHILY.xattr.user.ok"] == "1"
    assert base64.b64decode(headers["LIBARCHIVE.xattr.user.%90%FF"]) == b"v\0\xfe"


def test_config_text_with_a_nul_is_a_rafs_error():
    """fuzz/fuzz_config.py survey (RAFS_FUZZ_CRASH_DIR), 216k runs: a config given as text that does not
    look like JSON or TOML is taken as a file name; one holding a NUL made os.stat raise ValueError
    (rafs/io/config.py read_config_file) instead of an error naming the config."""
    from rafs.errors import RafsError
    from rafs.io.config import parse_config
    with pytest.raises(RafsError):
        parse_config(b"\0" * 64)
