"""The bulk directory-block decoder and the v6 reader's lookups, against construct and hostile blocks."""

from __future__ import annotations

import pytest

import rafs
from rafs.errors import InvalidImageError
from rafs.v6 import dirent, layout
from rafs.v6.directories import LOOKUP_TABLE_BLOCKS
from rafs.v6.encode import dirent_blocks


def block_of(entries: list[tuple[bytes, int, int]]) -> bytes:
    (block,) = dirent_blocks(entries, 4096)
    return block


def by_construct(block: bytes) -> list[tuple[bytes, int, int]]:
    """The same block decoded one construct record at a time (the slow, obviously right way)."""
    first = layout.Dirent.parse(block[:12])
    records = [layout.Dirent.parse(block[12 * i:12 * i + 12]) for i in range(first.e_nameoff // 12)]
    ends = [r.e_nameoff for r in records[1:]] + [block.find(b"\0", records[-1].e_nameoff) % (len(block) + 1)]
    return [(block[r.e_nameoff:end], r.e_nid, r.e_file_type) for r, end in zip(records, ends)]


ENTRIES = [(b".", 40, 2), (b"..", 36, 2), (b"a", 1 << 40, 1), (b"b" * 255, 7, 7), (b"\xff\xfe", 9, 3)]


def test_decode_block_agrees_with_construct():
    block = block_of(ENTRIES)
    assert dirent.parse_block(block, where=0) == by_construct(block) == ENTRIES
    padded = block + bytes(100)             # the last name ends at the first NUL
    assert dirent.parse_block(padded, where=0) == ENTRIES


@pytest.mark.parametrize("nameoffs", [
    [60, 59, 61, 62, 63],                   # out of order: an empty name
    [60, 61, 61, 62, 63],                   # two dirents at one name
    [60, 61, 62, 63, 400],                  # the last name starts past the block
    [60, 61, 62, 330, 331],                 # a name longer than 255
])
def test_decode_block_refuses_bad_name_offsets(nameoffs):
    block = bytearray(block_of(ENTRIES))
    for i, nameoff in enumerate(nameoffs):
        block[12 * i + 8:12 * i + 10] = nameoff.to_bytes(2, "little")
    with pytest.raises(InvalidImageError, match="dirent"):
        dirent.decode_block(bytes(block), where=0)


@pytest.mark.parametrize("names,expected", [
    ([b"-", b".", b"..", b"z"], [(b"-", 0), (b"z", 3)]),            # names may sort before "."
    ([b".", b"a", b".."], [(b"a", 1)]),                              # not adjacent: filtered
    ([b".", b"..", b"a", b"."], [(b"a", 2)]),                        # a second "." (hostile)
    ([b"a", b"b"], [(b"a", 0), (b"b", 1)]),                          # no dots at all
    ([b"."], []),
])
def test_without_dots(names, expected):
    kept_names, kept_nids = dirent.without_dots(names, tuple(range(len(names))))
    assert list(zip(kept_names, kept_nids)) == expected


@pytest.mark.parametrize("count", [3, 3000])
def test_lookup_small_and_large_directories(tmp_path, count):
    """Small directories are looked up in a dict, large ones (more than LOOKUP_TABLE_BLOCKS blocks) by
    binary search over their blocks: both find every name and nothing else."""
    src = tmp_path / "src"
    src.mkdir()
    names = [b"entry-%05d" % i for i in range(count)]
    for name in names:
        (src / name.decode()).write_bytes(b"")
    result = rafs.Builder(src, fs_version=6, compressor="none").write(bootstrap=tmp_path / "boot",
                                                                    blob_dir=tmp_path)
    with rafs.open(result.bootstrap) as image:
        reader = image.reader
        root = reader.root_ino
        blocks = reader.directories.block_count(reader.record(root))
        assert (blocks > LOOKUP_TABLE_BLOCKS) == (count > 100)
        listed = dict(reader.entries(root))
        assert sorted(listed) == names
        for name in names:
            assert reader.lookup(root, name) == listed[name]
        for missing in (b".", b"..", b"entry", b"entry-99999", b"a", b"zzz"):
            assert reader.lookup(root, missing) is None
        assert reader.lookup(listed[names[0]], b"x") is None          # not a directory
