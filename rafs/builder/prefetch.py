"""Prefetch selection: which files a build dumps first and which nodes the bootstrap's prefetch table
lists, from ``--prefetch-patterns`` (builder/src/core/prefetch.rs).

Patterns are absolute paths, normalised; relative ones are ignored and a pattern covered by an earlier
one (itself or an ancestor) is dropped (``generate_patterns``). A node matches the pattern equal to
its path or to its nearest ancestor path; empty regular files never match. The nodes a pattern names
exactly, in pattern order, are the prefetch table of ``--prefetch-policy fs``; the regular files under
a pattern are dumped first, by pattern, then every other regular file in index order. Builds and merges
both select through :func:`select_prefetch`.
"""

from __future__ import annotations

import os
import stat as _stat
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from ..model import Node, TreeIndex

# "fs": the bootstrap lists the matched nodes; "blob": their chunks go first in the blob and the blob
# table records how many bytes to prefetch; "none": neither
from ..options import PREFETCH_POLICIES  # noqa: E402 - one home for the vocabulary


def check_prefetch_policy(policy: str) -> str:
    if policy not in PREFETCH_POLICIES:
        raise InvalidArgumentError(f"invalid prefetch policy {policy!r} (expected one of "
                                   f"{', '.join(PREFETCH_POLICIES)})")
    return policy


def covering(path: bytes, patterns) -> bytes | None:
    """The pattern among ``patterns`` (a set or dict of normalised paths) equal to ``path`` or to its
    nearest ancestor, or None."""
    probe = path
    while True:
        if probe in patterns:
            return probe
        if probe == b"/":
            return None
        probe = probe.rsplit(b"/", 1)[0] or b"/"


def normalise_prefetch_patterns(patterns) -> list[bytes]:
    """Absolute paths, normalised; a pattern covered by an earlier one (itself or an ancestor) is
    dropped, relative ones are ignored (builder/src/core/prefetch.rs ``generate_patterns``)."""
    result: list[bytes] = []
    seen: set[bytes] = set()
    for raw in patterns:
        text = os.fsencode(raw).strip()
        if not text.startswith(b"/"):
            continue
        parts = [p for p in text.split(b"/") if p and p != b"."]
        path = b"/" + b"/".join(parts)
        if covering(path, seen) is None:
            seen.add(path)
            result.append(path)
    return result


@dataclass(frozen=True)
class PrefetchSelection:
    """``exact``: the nodes a pattern names, in pattern order (the prefetch table); ``files``: every
    regular file in dump order, the ``count`` prefetch files first."""

    exact: list[Node]
    files: list[Node]
    count: int


def select_prefetch(order: TreeIndex, patterns: list[bytes]) -> PrefetchSelection:
    """Match the tree in index order ``order`` against normalised ``patterns``
    (:func:`normalise_prefetch_patterns`)."""
    if not patterns:
        # nothing to match, so no path to build: every regular file in index order
        return PrefetchSelection([], [node for node in order.nodes if _stat.S_ISREG(node.inode.mode)], 0)
    rank = {p: i for i, p in enumerate(patterns)}
    exact: list[Node | None] = [None] * len(patterns)
    prefetch_files: list[tuple[int, int, Node]] = []
    others: list[Node] = []
    paths: list[bytes] = [b"/"] * len(order.nodes)
    for position, node in enumerate(order.nodes):
        parent = order.parents[position]
        if parent:
            base = paths[parent - 1]
            paths[position] = (base if base != b"/" else b"") + b"/" + node.name
        inode = node.inode
        is_reg = _stat.S_ISREG(inode.mode)
        matched = None
        if not (is_reg and inode.size == 0):
            path = paths[position]
            pattern = covering(path, rank)
            if pattern is not None:
                matched = rank[pattern]
                if pattern == path and exact[matched] is None:
                    exact[matched] = node     # a name twice in a directory: the first, as a lookup finds
        if is_reg:
            if matched is not None:
                prefetch_files.append((matched, position, node))
            else:
                others.append(node)
    prefetch_files.sort(key=lambda item: (item[0], item[1]))
    files = [node for _, _, node in prefetch_files] + others
    return PrefetchSelection([n for n in exact if n is not None], files, len(prefetch_files))
