"""extractall of hostile images never writes outside the target and follows tarfile's filters.

Hostile images are built from hand-made model trees with the v5 writer (which stores any name), and
for v6 by building placeholder names of the same length and patching them into the bootstrap (the v6
writer refuses such names). Every extraction runs in a sandbox holding a victim file and directory
beside the target; after it, the sandbox outside the target must be exactly as before.
"""

from __future__ import annotations

import os
import stat
import tarfile

import pytest
from hypothesis import given, settings, strategies as st

from rafs.errors import RafsError
from rafs.testing import (Entry, FileData, build_node, directory, file, hostile_names, names, node,
                          replace_unique, symlink)
from rafs.testing.mutate import set_field, v5_structures

FILTERS = ("data", "tar", "fully_trusted")


# -- the sandbox -------------------------------------------------------------------------------------

def make_sandbox(base):
    sandbox = base / "sandbox"
    (sandbox / "outside" / "dir").mkdir(parents=True)
    (sandbox / "outside" / "victim").write_bytes(b"precious")
    os.chmod(sandbox / "outside" / "victim", 0o644)
    os.chmod(sandbox / "outside" / "dir", 0o755)
    return sandbox


def snapshot(sandbox) -> dict:
    """Everything in the sandbox except the target: what the sandbox holds, and type, mode, size,
    mtime, owner and content of each path under ``outside``."""
    state = {"listing": sorted(set(os.listdir(sandbox)) - {"dest"})}
    for dirpath, dirnames, filenames in os.walk(sandbox / "outside"):
        for name in [""] + dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            content = open(path, "rb").read() if stat.S_ISREG(st_.st_mode) else None
            state[path] = (st_.st_mode, st_.st_size, st_.st_mtime_ns, st_.st_uid, content)
    return state


def escaping_links(dest) -> list[str]:
    root = os.path.realpath(dest)
    bad = []
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and os.path.commonpath([root, os.path.realpath(path)]) != root:
                bad.append(path)
    return bad


def extract(image_or_built, sandbox, how):
    """extractall into sandbox/dest; returns the rafs error class name or "ok" (any other
    exception fails the test). The sandbox outside dest must be untouched either way."""
    before = snapshot(sandbox)
    dest = sandbox / "dest"
    try:
        with image_or_built.open() as image:
            image.extractall(dest, filter=how)
        outcome = "ok"
    except RafsError as exc:
        outcome = type(exc).__name__
    assert snapshot(sandbox) == before, f"filter {how}: something outside the target changed"
    if how == "data":
        assert escaping_links(dest) == []
    return outcome


# -- building hostile images -------------------------------------------------------------------------

def build(tmp_path, version, children, renames=None, *, tag="img"):
    """An image of ``children`` under the root; ``renames`` maps placeholder names (as built) to the
    hostile names of the same length they become in the bootstrap."""
    built = build_node(node(b"/", directory(), children), tmp_path / f"{tag}-v{version}", fs_version=version,
                       compressor="none", repeatable=True)
    if renames:
        data = open(built.source, "rb").read()
        for old, new in renames.items():
            data = replace_unique(data, old, new)
        with open(built.source, "wb") as f:
            f.write(data)
    return built


def placeholder(hostile: bytes, index: int = 0) -> bytes:
    """A name of the same length as ``hostile`` that occurs nowhere else (``Q7xxxx...``)."""
    stem = b"Q%dZ" % index
    return (stem * (len(hostile) // len(stem) + 1))[:len(hostile)]


def hostile_tree(tmp_path, version, name: bytes, entry: Entry, *, extra=()):
    """A root holding ``entry`` under the hostile ``name`` (for v6 via a patched placeholder)."""
    if version == 5:
        return build(tmp_path, 5, [node(name, entry), *extra])
    stand_in = placeholder(name)
    return build(tmp_path, 6, [node(stand_in, entry), *extra], {stand_in: name})


# -- names -------------------------------------------------------------------------------------------

BAD_NAMES = [b"..", b".", b"../outside/victim", b"a/b", b"\0", b"x\0y", b"/" + b"x" * 3]


# EROFS readers (the kernel's too) skip "." and ".." dirents and end the last name of a directory
# block at its first NUL, so in v6 those three names are read as something harmless instead.
V6_READ_AS = {b"..": None, b".": None, b"x\0y": "x"}


@pytest.mark.parametrize("version", [5, 6])
@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_names_are_refused(tmp_path, version, name):
    built = hostile_tree(tmp_path, version, name, file(b"pwned", mode=0o777))
    for how in FILTERS:
        sandbox = make_sandbox(tmp_path / f"{how}")
        outcome = extract(built, sandbox, how)
        if version == 6 and name in V6_READ_AS:
            assert outcome == "ok"
            expected = V6_READ_AS[name]
            assert os.listdir(sandbox / "dest") == ([expected] if expected else [])
        else:
            assert outcome == "InvalidImageError"


def v5_with_field(tmp_path, children, index: int, field: str, value: int, tag: str):
    """A v5 image of ``children`` with one field of inode record ``index`` patched."""
    built = build(tmp_path, 5, children, tag=tag)
    data = open(built.source, "rb").read()
    inode = next(s for s in v5_structures(data) if s.name == f"v5 inode {index}")
    open(built.source, "wb").write(set_field(data, inode, field, value))
    return built


def test_empty_name_is_refused(tmp_path):
    built = v5_with_field(tmp_path, [node(b"n", file(b"pwned"))], 2, "i_name_size", 0, "empty")
    assert extract(built, make_sandbox(tmp_path), "fully_trusted") == "InvalidImageError"


def test_directory_named_dotdot_with_children_is_refused(tmp_path):
    built = build(tmp_path, 5, [node(b"..", directory(), [node(b"victim", file(b"overwritten"))])])
    for how in FILTERS:
        assert extract(built, make_sandbox(tmp_path / how), how) == "InvalidImageError"


# -- symlinks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [5, 6])
def test_absolute_symlink(tmp_path, version):
    sandbox = make_sandbox(tmp_path / "data")
    target = os.fsencode(sandbox / "outside" / "victim")
    built = build(tmp_path, version, [node(b"abs", symlink(target))])
    assert extract(built, sandbox, "data") == "UnsafePathError"
    sandbox = make_sandbox(tmp_path / "tar")
    assert extract(built, sandbox, "tar") == "ok"       # tar keeps links as they are, writes nothing through them
    assert os.readlink(sandbox / "dest" / "abs") == os.fsdecode(target)


@pytest.mark.parametrize("version", [5, 6])
@pytest.mark.parametrize("link", [b"../outside/victim", b"..", b"a/../../outside", b"../" * 8 + b"etc"], ids=repr)
def test_relative_symlink_leaving_the_target(tmp_path, version, link):
    built = build(tmp_path, version, [node(b"l", symlink(link))])
    assert extract(built, make_sandbox(tmp_path / "data"), "data") == "UnsafePathError"
    assert extract(built, make_sandbox(tmp_path / "tar"), "tar") == "ok"


@pytest.mark.parametrize("version", [5, 6])
def test_symlink_chain_leaving_the_target_is_removed(tmp_path, version):
    # each link alone stays inside when checked; together a_t resolves to sandbox/outside
    built = build(tmp_path, version, [node(b"a", directory(), [node(b"b", directory(), [
        node(b"a_t", symlink(b"z_s/../outside")), node(b"z_s", symlink(b"../.."))])])])
    sandbox = make_sandbox(tmp_path / "data")
    assert extract(built, sandbox, "data") == "UnsafePathError"
    assert not os.path.lexists(sandbox / "dest" / "a" / "b" / "a_t")
    assert os.readlink(sandbox / "dest" / "a" / "b" / "z_s") == "../.."


@pytest.mark.parametrize("version", [5, 6])
def test_symlink_then_directory_of_the_same_name(tmp_path, version):
    """A link ``dupQ2 -> ../outside/dir`` and a directory ``dupQ2`` holding a file: nothing lands
    outside, whatever the filter (writers refuse duplicate names, so v6 gets one patched in)."""
    link = node(b"dupQ2" if version == 5 else b"dupQ1", symlink(b"../outside/dir"))
    target_dir = node(b"dupQ2", directory(mode=0o777), [node(b"pwn", file(b"pwned"))])
    built = build(tmp_path, version, [link, target_dir], None if version == 5 else {b"dupQ1": b"dupQ2"})
    for how in FILTERS:
        sandbox = make_sandbox(tmp_path / how)
        outcome = extract(built, sandbox, how)
        assert outcome in ("ok", "UnsafePathError"), outcome
        assert not (sandbox / "outside" / "dir" / "pwn").exists()


# -- special files, modes, ownership -----------------------------------------------------------------

@pytest.mark.parametrize("version", [5, 6])
def test_special_files(tmp_path, version, monkeypatch):
    built = build(tmp_path, version, [node(b"fifo", Entry("fifo", mode=0o644)),
                                      node(b"null", Entry("char", mode=0o666, rdev=os.makedev(1, 3)))])
    assert extract(built, make_sandbox(tmp_path / "data"), "data") == "UnsafePathError"
    if os.geteuid() == 0:
        sandbox = make_sandbox(tmp_path / "tar-root")
        assert extract(built, sandbox, "tar") == "ok"
        assert stat.S_ISCHR(os.lstat(sandbox / "dest" / "null").st_mode)
        assert stat.S_ISFIFO(os.lstat(sandbox / "dest" / "fifo").st_mode)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert extract(built, make_sandbox(tmp_path / "tar-user"), "tar") == "UnsafePathError"


@pytest.mark.parametrize("version", [5, 6])
def test_modes_follow_tarfile_filters(tmp_path, version):
    """The same tree through rafs' extractall and through tarfile's (via rafs' own tar writer) gives
    the same modes, link targets and contents under every filter."""
    children = [node(b"suid", file(b"#!/bin/sh\n", mode=0o4755)), node(b"private", file(b"p", mode=0o000)),
                node(b"gw", file(b"g", mode=0o666)), node(b"noexec", file(b"n", mode=0o611)),
                node(b"sticky", directory(mode=0o1777), [node(b"inner", file(b"i", mode=0o2640))]),
                node(b"rel", symlink(b"suid"))]
    built = build(tmp_path, version, children)
    with built.open() as image, open(tmp_path / "image.tar", "wb") as out:
        from rafs.image.unpack import write_tar
        write_tar(image, out)
    for how in FILTERS:
        ours, theirs = tmp_path / f"ours-{how}", tmp_path / f"theirs-{how}"
        with built.open() as image:
            image.extractall(ours, filter=how)
        with tarfile.open(tmp_path / "image.tar") as tar:
            tar.extractall(theirs, filter=how)
        for name in ("suid", "private", "gw", "noexec", "sticky", "sticky/inner", "rel"):
            a, b = os.lstat(ours / name), os.lstat(theirs / name)
            assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), (how, name)
            if not stat.S_ISLNK(a.st_mode):
                assert oct(a.st_mode) == oct(b.st_mode), (how, name)
            if stat.S_ISREG(a.st_mode):
                assert (ours / name).read_bytes() == (theirs / name).read_bytes()
        assert os.readlink(ours / "rel") == os.readlink(theirs / "rel") == "suid"


def test_times_out_of_range_are_left_unset(tmp_path):
    built = build(tmp_path, 5, [node(b"f", file(b"x", mtime=2**64 - 1, mtime_nsec=999_999_999))])
    assert extract(built, make_sandbox(tmp_path), "data") == "ok"


def test_symlink_target_with_nul_or_empty_is_invalid(tmp_path):
    built = build(tmp_path, 5, [node(b"l", Entry("symlink", mode=0o777, target=b"a\0b"))], tag="nul")
    assert extract(built, make_sandbox(tmp_path / "nul"), "tar") == "InvalidImageError"
    built = v5_with_field(tmp_path, [node(b"l", symlink(b"t"))], 2, "i_symlink_size", 0, "empty")
    assert extract(built, make_sandbox(tmp_path / "empty"), "tar") == "InvalidImageError"


def test_huge_sparse_file_extracts_sparse(tmp_path):
    built = v5_with_field(tmp_path, [node(b"big", file(b"head"))], 2, "i_size", 1 << 40, "big")
    sandbox = make_sandbox(tmp_path)
    assert extract(built, sandbox, "data") == "ok"
    st_ = os.stat(sandbox / "dest" / "big")
    assert st_.st_size == 1 << 40 and st_.st_blocks * 512 < 1 << 20
    with open(sandbox / "dest" / "big", "rb") as f:
        assert f.read(4) == b"head"


def test_hardlink_to_a_replaced_first_link_is_a_copy(tmp_path):
    """f (a hardlinked file), then a second entry f that is a symlink out: g must not become that link."""
    shared = Entry("file", mode=0o644, data=FileData.literal(b"data"))
    built = build(tmp_path, 5, [node(b"f", shared, hardlink_key="k"), node(b"f", symlink(b"../outside/victim")),
                                node(b"g", shared, hardlink_key="k")])
    for how in ("tar", "fully_trusted"):
        sandbox = make_sandbox(tmp_path / how)
        extract(built, sandbox, how)
        g = sandbox / "dest" / "g"
        assert not os.path.islink(g) and g.read_bytes() == b"data"


def test_existing_symlink_in_the_target_is_replaced_not_followed(tmp_path):
    built = build(tmp_path, 5, [node(b"dir", directory(mode=0o700), [node(b"victim", file(b"overwritten"))])])
    sandbox = make_sandbox(tmp_path)
    (sandbox / "dest").mkdir()
    os.symlink(sandbox / "outside", sandbox / "dest" / "dir")
    assert extract(built, sandbox, "fully_trusted") == "ok"
    assert (sandbox / "dest" / "dir" / "victim").read_bytes() == b"overwritten"


def test_members_creates_missing_parents(tmp_path):
    built = build(tmp_path, 5, [node(b"a", directory(), [node(b"b", directory(), [node(b"c", file(b"c"))])])])
    with built.open() as image:
        image.extractall(tmp_path / "out", members=["/a/b/c"])
    assert (tmp_path / "out" / "a" / "b" / "c").read_bytes() == b"c"


# -- generated hostile trees -------------------------------------------------------------------------

LINK_TARGETS = [b"..", b"../..", b"/", b"/etc", b"../outside/victim", b"../outside", b"a/../../..", b".", b"x"]


@st.composite
def hostile_nodes(draw, depth=0):
    children = []
    for _ in range(draw(st.integers(0, 4 if depth < 2 else 1))):
        name = draw(st.one_of(names(max_size=12), hostile_names().filter(bool),
                              st.sampled_from([b"x", b"outside", b"dest"])))
        kind = draw(st.sampled_from(["file", "dir", "symlink", "fifo"] if depth < 2 else ["file", "symlink"]))
        if kind == "dir":
            children.append(node(name, directory(mode=draw(st.integers(0o700, 0o777))),
                                 draw(hostile_nodes(depth + 1))))
        elif kind == "symlink":
            target = draw(st.one_of(st.sampled_from(LINK_TARGETS),
                                    st.lists(st.sampled_from([b"..", b".", b"x", b"outside", b"victim"]),
                                             min_size=1, max_size=5).map(b"/".join)))
            children.append(node(name, symlink(target)))
        elif kind == "fifo":
            children.append(node(name, Entry("fifo", mode=0o644)))
        else:
            children.append(node(name, file(b"pwned", mode=draw(st.sampled_from([0o644, 0o4777, 0o000])))))
    return children


@settings(max_examples=max(10, settings.default.max_examples))
@given(children=hostile_nodes(), how=st.sampled_from(FILTERS))
def test_generated_hostile_trees_never_escape(tmp_path_factory, children, how):
    base = tmp_path_factory.mktemp("hostile")
    built = build(base, 5, children)
    extract(built, make_sandbox(base), how)
