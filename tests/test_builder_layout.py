"""The write side's shape (issue 13): one prefetch matcher for builds and merges, one choice of bootstrap
writer, ``Builder.from_tree`` instead of a source type registered from outside, and no import cycle
between the builder and the merge."""

from __future__ import annotations

import ast
import io
import pathlib
import stat
import sys

import pytest

import rafs
from rafs.builder import builder as builder_module
from rafs.builder import prefetch, writers
from rafs.builder.merge import Merger
from rafs.builder.tree import number_tree
from rafs.errors import InvalidArgumentError, UnsupportedError
from rafs.model import Inode, Node, SuperFlags
from rafs.testing import build_node

BUILDER = pathlib.Path(builder_module.__file__).parent


def _file(name: bytes, data: bytes) -> Node:
    return Node(name=name, inode=Inode(ino=0, mode=stat.S_IFREG | 0o644, size=len(data)),
                data=lambda: io.BytesIO(data))


def _dir(name: bytes, *children: Node) -> Node:
    return Node(name=name, inode=Inode(ino=0, mode=stat.S_IFDIR | 0o755, nlink=2), children=list(children))


def _tree() -> Node:
    return _dir(b"/", _dir(b"a", _dir(b"b", _file(b"x", b"x" * 10), _file(b"empty", b"")), _file(b"y", b"y" * 5)),
                _file(b"z", b"z" * 7))


def test_one_matcher_selects_exact_nodes_and_dump_order():
    root = _tree()
    patterns = prefetch.normalise_prefetch_patterns(["/a/b/empty", "/a//b/", "/z", "/a/b/x", "/nothing", "rel"])
    assert patterns == [b"/a/b/empty", b"/a/b", b"/z", b"/nothing"]     # covered and relative ones dropped
    selection = prefetch.select_prefetch(number_tree(root), patterns)
    assert [n.name for n in selection.exact] == [b"b", b"z"]     # empty regular files never match
    # under a pattern first, by pattern, then the others in index order (z comes before a's files)
    assert [n.name for n in selection.files] == [b"x", b"z", b"y", b"empty"]
    assert selection.count == 2


def test_no_patterns_dump_every_regular_file_in_index_order():
    selection = prefetch.select_prefetch(number_tree(_tree()), [])
    assert (selection.exact, selection.count) == ([], 0)
    assert [n.name for n in selection.files] == [b"z", b"y", b"x", b"empty"]


def test_prefetch_policy_is_checked_in_one_place():
    for make in (lambda: rafs.Builder(".", prefetch_policy="all"), lambda: Merger(["x"], prefetch_policy="all")):
        with pytest.raises(InvalidArgumentError, match="invalid prefetch policy 'all'"):
            make()


def test_merge_prefetch_table_is_the_builders(tmp_path):
    """A merge of one layer with --prefetch-policy fs lists the same nodes a build of that tree does."""
    built = build_node(_tree(), tmp_path / "layer", fs_version=5, prefetch_patterns=["/a/b", "/z"])
    merged = Merger([built.source], prefetch_policy="fs", prefetch_patterns=["/a/b", "/z"]).merge()
    assert [n.name for n in merged.prefetch] == [b"b", b"z"]


def test_from_tree_builds_a_model_tree_without_registering_anything(tmp_path):
    before = dict(builder_module.SOURCE_TYPES)
    built = build_node(_tree(), tmp_path, fs_version=6, compressor="none")
    assert builder_module.SOURCE_TYPES == before
    with built.open() as image:
        assert image.read("/a/b/x") == b"x" * 10
    assert builder_module.TREE_SOURCE_TYPE not in builder_module.PATH_SOURCE_TYPES


def test_from_tree_refuses_what_is_not_a_tree(tmp_path):
    with pytest.raises(InvalidArgumentError, match="a tree source is a rafs.model.Node, not str"):
        rafs.Builder.from_tree(str(tmp_path)).write(bootstrap=tmp_path / "boot", blob_dir=tmp_path)


def test_one_place_picks_the_writer():
    flags = SuperFlags.for_compressor("none") | SuperFlags.for_digester("blake3")
    for version in (5, 6):
        root = _dir(b"/")
        data = writers.write_bootstrap(root, [], fs_version=version, chunk_size=0x100000, flags=flags,
                                       order=number_tree(root))
        with rafs.open(io.BytesIO(data)) as image:
            assert image.version == version
    choosers = [path.name for path in BUILDER.glob("*.py")
                if "v5.writer" in path.read_text() or "v6.writer" in path.read_text()]
    assert choosers == ["writers.py"]


def test_missing_v6_writer_is_unsupported(monkeypatch):
    monkeypatch.setitem(sys.modules, "rafs.v6.writer", None)
    with pytest.raises(UnsupportedError, match="writing RAFS v6 bootstraps is not available"):
        writers.write_bootstrap(_dir(b"/"), [], fs_version=6, chunk_size=0x100000,
                                flags=SuperFlags.for_compressor("none") | SuperFlags.for_digester("blake3"))


def _imports(path: pathlib.Path) -> set[str]:
    """The sibling modules ``path`` imports, at any depth of the file (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_no_import_cycle_inside_the_builder():
    graph = {path.stem: _imports(path) for path in BUILDER.glob("*.py")}
    assert "merge" not in graph["builder"] and "builder" not in graph["merge"]

    def reaches(start, goal, seen=()):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt)))
                   for nxt in graph.get(start, ()))
    assert [name for name in graph if reaches(name, name)] == []


def test_modules_stay_small():
    assert {path.name: n for path in BUILDER.glob("*.py")
            if (n := len(path.read_text().splitlines())) > 500} == {}
