"""Issue 13's last items, read from the source with ``ast`` (nothing imported): every shared constant
has one home, and ``rafs.io`` (storage) reaches no part above it, not even from inside a function."""

from __future__ import annotations

import ast
import pathlib

from test_architecture import IMPORTS, MODULES

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Each of these names is assigned at module level in exactly this module and nowhere else in rafs.
HOMES = {
    "MAX_NAME_SIZE": "rafs.limits", "MAX_INODE_NAME_SIZE": "rafs.limits", "MAX_SYMLINK_SIZE": "rafs.limits",
    "MAX_LINUX_SYMLINK_SIZE": "rafs.limits", "MAX_XATTR_NAME_SIZE": "rafs.limits",
    "DEFAULT_MERGE_SIZE": "rafs.limits", "COPY_PIECE": "rafs.image.file",
}


def _assigned(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) else []
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_one_home_per_constant():
    homes: dict[str, list[str]] = {name: [] for name in HOMES}
    for module in MODULES:
        for name in _assigned(module) & HOMES.keys():
            homes[name].append(module)
    assert homes == {name: [home] for name, home in HOMES.items()}


def test_storage_reaches_no_part_above_it():
    above = ("rafs.oci", "rafs.image", "rafs.builder", "rafs.fuse", "rafs.serve", "rafs.cli")
    found = [(name, module) for name, imports in IMPORTS.items() if name.startswith("rafs.io.")
             for module, _ in imports if module.startswith(above)]
    assert found == []


def test_every_part_has_a_row_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    parts = {".".join(name.split(".")[:2]) for name in MODULES} - {"rafs"}
    missing = [part for part in sorted(parts)
               if f"`{part.replace('.', '/')}/`" not in doc and f"`{part.replace('.', '/')}.py`" not in doc]
    assert missing == []
