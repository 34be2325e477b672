"""Issue 12: a source directory that changes while ``rafs create`` runs.

The races are made deterministic by doing the swap at a fixed point: between the walk and the reads
(the ``dir-rafs`` loader wrapped so the swap runs when it returns), or inside the walk (its per-entry
step wrapped so the swap runs right after an entry was looked at). Each build must either fail with a
BuildError naming the changed path, or never put bytes from outside the tree into its outputs; none may
hang on a FIFO. Every case runs with ``openat2`` and with the component-by-component fallback.
"""

from __future__ import annotations

import os
import threading

import pytest

import rafs
from rafs import _beneath
from rafs.builder import builder, directory
from rafs.errors import BuildError

SECRET = b"SECRET-from-outside-the-tree!" * 64
INSIDE = b"i" * len(SECRET)


@pytest.fixture(params=["openat2", "components"])
def resolver(request, monkeypatch):
    if request.param == "components":
        monkeypatch.setattr(_beneath, "openat2_available", False)
    elif not _beneath.openat2_available:
        pytest.skip("openat2 is not available on this kernel")
    return request.param


@pytest.fixture
def layout(tmp_path):
    """``src/sub/f`` and ``src/g`` inside the tree; ``outside/sub/f`` and ``outside/secret`` outside it."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "sub").mkdir(parents=True)
    (outside / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(INSIDE)
    (src / "g").write_bytes(INSIDE)
    (outside / "sub" / "f").write_bytes(SECRET)
    (outside / "secret").write_bytes(SECRET)
    return src, outside, tmp_path / "out"


def after_walk(monkeypatch, swap):
    """Run ``swap()`` once the walk has returned, before any file is read."""
    load = builder.SOURCE_TYPES["dir-rafs"]

    def loader(source, **options):
        root = load(source, **options)
        swap()
        return root
    monkeypatch.setitem(builder.SOURCE_TYPES, "dir-rafs", loader)


def during_walk(monkeypatch, name: bytes, swap):
    """Run ``swap()`` right after the walk looked at the entry called ``name``."""
    node = directory._node

    def hooked(entry_name, *args):
        result = node(entry_name, *args)
        if entry_name == name:
            swap()
        return result
    monkeypatch.setattr(directory, "_node", hooked)


def sub_swapped_for_symlink(src, outside):
    """``src/sub`` moved aside, and a symlink to ``outside/sub`` in its place."""
    (src / "sub").rename(src / "sub.old")
    (src / "sub").symlink_to(outside / "sub")


def build(src, out, timeout: float = 30.0, fifo=None):
    """Build ``src`` (no compression, so foreign bytes would show) in a thread; a build still blocked
    after ``timeout`` is released by opening ``fifo`` for writing, and the test fails."""
    out.mkdir(parents=True, exist_ok=True)
    outcome = {}

    def run():
        try:
            outcome["result"] = rafs.Builder(src, fs_version=6, compressor="none").write(blob_dir=out)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout)
        pytest.fail(f"the build hung for {timeout} s")
    return outcome


def assert_refused(outcome, out, named: str):
    error = outcome.get("error")
    assert isinstance(error, BuildError), f"expected a BuildError, got {outcome}"
    assert named in str(error)
    assert "changed while building" in str(error)
    for name in os.listdir(out):
        with open(out / name, "rb") as f:
            assert SECRET[:32] not in f.read()


def test_file_swapped_for_fifo_after_walk_is_refused_without_hanging(layout, monkeypatch, resolver):
    src, _, out = layout
    fifo = src / "g"

    def swap():
        fifo.unlink()
        os.mkfifo(fifo)
    after_walk(monkeypatch, swap)
    outcome = build(src, out, timeout=20, fifo=fifo)
    assert_refused(outcome, out, "g")
    assert "FIFO" in str(outcome["error"])


def test_parent_swapped_for_symlink_after_walk_reads_nothing_outside(layout, monkeypatch, resolver):
    src, outside, out = layout
    after_walk(monkeypatch, lambda: sub_swapped_for_symlink(src, outside))
    assert_refused(build(src, out), out, "sub/f")


def test_parent_swapped_for_symlink_during_walk_lists_nothing_outside(layout, monkeypatch, resolver):
    src, outside, out = layout
    during_walk(monkeypatch, b"sub", lambda: sub_swapped_for_symlink(src, outside))
    assert_refused(build(src, out), out, "sub")


def test_file_swapped_for_symlink_after_walk_is_refused(layout, monkeypatch, resolver):
    src, outside, out = layout

    def swap():
        (src / "g").unlink()
        (src / "g").symlink_to(outside / "secret")
    after_walk(monkeypatch, swap)
    assert_refused(build(src, out), out, "g")


def test_file_replaced_by_another_after_walk_is_refused(layout, monkeypatch, resolver):
    """A different inode where the walk saw ``g`` (an outside file moved in, say) is not read."""
    src, outside, out = layout
    after_walk(monkeypatch, lambda: (outside / "secret").rename(src / "g"))
    assert_refused(build(src, out), out, "g")


def test_directory_replaced_by_another_during_walk_is_refused(layout, monkeypatch, resolver):
    src, outside, out = layout

    def swap():
        (src / "sub").rename(src / "sub.old")
        (outside / "sub").rename(src / "sub")
    during_walk(monkeypatch, b"sub", swap)
    assert_refused(build(src, out), out, "sub")


def test_unchanged_tree_builds_the_same_with_either_resolver(layout, resolver):
    src, _, out = layout
    outcome = build(src, out)
    assert "error" not in outcome, outcome
    image = rafs.open(outcome["result"].bootstrap, blob_dir=str(out))
    assert image.read("/sub/f") == INSIDE


def test_model_tree_naming_a_fifo_is_refused_without_hanging(tmp_path):
    """A hand-made tree whose file data is a plain path gets the same checks (no wait on a FIFO)."""
    from rafs.model import Inode, Node
    from rafs.testing import build_node
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    root = Node(b"/", Inode(ino=1, mode=0o40755), [
        Node(b"f", Inode(ino=2, mode=0o100644, size=10), data=os.fsencode(fifo))])
    outcome = {}

    def run():
        try:
            build_node(root, tmp_path / "out")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(20)
        pytest.fail("the build hung on a FIFO")
    assert isinstance(outcome.get("error"), BuildError) and "FIFO" in str(outcome["error"])


def test_a_build_leaves_no_fd_open(layout):
    """The root's fd lives as long as the tree's TreeFiles, and every directory fd is closed."""
    import gc
    src, _, out = layout
    outcome = build(src, out)
    assert "error" not in outcome, outcome
    del outcome
    gc.collect()
    left = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:             # the listing's own fd, closed by now
            continue
        if target.startswith(str(src)):
            left.append(target)
    assert not left


@pytest.mark.parametrize("proc", [True, False])
def test_walk_without_proc_builds_the_same_bytes(layout, monkeypatch, resolver, proc):
    """Where /proc is not mounted, entries are listed through their directory fd and xattrs read by path;
    the image is the same either way (xattrs included)."""
    src, _, out = layout
    try:
        os.setxattr(src / "g", "user.k", b"v")
        os.setxattr(src / "sub", "user.d", b"w")
    except OSError:
        pytest.skip("the temporary directory's file system has no user xattrs")
    reference = build(src, out / "ref")
    if not proc:
        monkeypatch.setattr(directory, "_proc_fd_dir", lambda: None)
    outcome = build(src, out / "alt")
    assert "error" not in outcome, outcome
    for name in (reference["result"].bootstrap, reference["result"].blob):
        with open(name, "rb") as f, open(name.replace("/ref/", "/alt/"), "rb") as g:
            assert f.read() == g.read()
    with rafs.open(outcome["result"].bootstrap, blob_dir=str(out / "alt")) as image:
        assert image.getxattr("/g", "user.k") == b"v"
