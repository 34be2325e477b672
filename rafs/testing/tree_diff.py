"""Comparing source trees (:mod:`rafs.testing.trees`): :func:`diff_trees` lists every difference, one
line each, with hardlink groups compared as groups; :func:`assert_same_tree` raises with that list.
"""

from __future__ import annotations

from typing import Callable, Iterable

from .trees import canonical, expand_hardlinks, order_key, with_parents

# -- comparing ---------------------------------------------------------------------------------------

ATTRIBUTES = ("kind", "mode", "uid", "gid", "mtime", "data", "target", "rdev", "xattrs", "hardlinks")


def diff_trees(expected: dict, actual: dict, *, ignore: Iterable[str] = (),
               ignore_paths: Callable[[bytes], bool] | None = None,
               xattr_filter: Callable[[bytes], bool] | None = None, mode_mask: int = 0o7777) -> list[str]:
    """Every difference between two trees, one line each; empty when they agree.

    ``ignore`` names attributes of :data:`ATTRIBUTES` not to compare (e.g. ``{"mtime"}``; with
    ``"hardlinks"``, linked paths compare as separate copies of the file); a path may
    be ignored with ``ignore_paths``; ``xattr_filter`` keeps only the xattr names it accepts;
    ``mode_mask`` picks the permission bits compared (e.g. ``0o1777`` without set-id bits). Symlink
    permission bits are never compared (Linux reports 0o777 whatever was stored), nor a directory's
    ``mode`` bits outside ``0o7777``.
    """
    ignore = set(ignore)
    unknown = ignore - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; expected some of {ATTRIBUTES}")
    expected, actual = canonical(with_parents(expected)), canonical(actual)
    if "hardlinks" in ignore:
        expected, actual = expand_hardlinks(expected), expand_hardlinks(actual)
    problems = []
    for path in sorted(set(expected) | set(actual), key=order_key):
        if ignore_paths is not None and ignore_paths(path):
            continue
        shown = path.decode("utf-8", "backslashreplace")
        a, b = expected.get(path), actual.get(path)
        if a is None or b is None:
            problems.append(f"{shown}: {'unexpected' if a is None else 'missing'} ({(a or b).kind})")
            continue
        if a.kind != b.kind:
            problems.append(f"{shown}: kind {b.kind} != expected {a.kind}")
            continue
        if a.kind == "hardlink":
            if "hardlinks" not in ignore and a.target != b.target:
                problems.append(f"{shown}: hardlink of {b.target!r} != expected {a.target!r}")
            continue
        checks = [("mode", a.mode & mode_mask, b.mode & mode_mask, a.kind != "symlink"), ("uid", a.uid, b.uid, True),
                  ("gid", a.gid, b.gid, True), ("mtime", (a.mtime, a.mtime_nsec), (b.mtime, b.mtime_nsec), True),
                  ("target", a.target, b.target, True), ("rdev", a.rdev, b.rdev, True)]
        for name, want, got, applies in checks:
            if applies and name not in ignore and want != got:
                problems.append(f"{shown}: {name} {_show(got)} != expected {_show(want)}")
        if "xattrs" not in ignore:
            keep = xattr_filter or (lambda k: True)
            want = {k: v for k, v in a.xattrs.items() if keep(k)}
            got = {k: v for k, v in b.xattrs.items() if keep(k)}
            if want != got:
                problems.append(f"{shown}: xattrs {got!r} != expected {want!r}")
        if a.kind == "file" and "data" not in ignore:
            if a.data.size != b.data.size:
                problems.append(f"{shown}: size {b.data.size} != expected {a.data.size}")
            elif a.data.sha256() != b.data.sha256():
                problems.append(f"{shown}: content differs (size {a.data.size})")
    return problems


def _show(value) -> str:
    return oct(value) if isinstance(value, int) and value > 7 else repr(value)


def assert_same_tree(expected: dict, actual: dict, **options) -> None:
    """Raise AssertionError listing every difference (see :func:`diff_trees`)."""
    problems = diff_trees(expected, actual, **options)
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise AssertionError(f"trees differ in {len(problems)} places:\n  {shown}{more}")
