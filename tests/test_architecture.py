"""The shape of the house (issue 13), read from the source with ``ast`` only (nothing is imported):

* no import cycles between the modules of ``rafs``, nor between its parts (``rafs.blob``, ``rafs.io``,
  ``rafs.image``...): a part is the first name under ``rafs``. Only imports a module runs when it is
  loaded count (module level, outside ``if TYPE_CHECKING:``); an import inside a function runs later
  and cannot deadlock loading, so cycles through those are reported as a warning, not a failure;
* no module over about 500 lines, except the layout declarations in :data:`LAYOUT_FILES`;
* ``rafs.blob`` never imports ``rafs.io`` (anywhere, functions included): blobs take range readers or
  bytes, ``io`` opens paths and URLs;
* ``rafs.cli`` imports only the public face: ``rafs`` itself, its own modules and the modules that
  ``rafs/__init__.py`` lists in ``PUBLIC_MODULES`` (the one place the public modules are named).
"""

from __future__ import annotations

import ast
import pathlib
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rafs"

MAX_LINES = 550             # "about 500": the bound, with a tenth of slack for docstrings
LAYOUT_FILES = {            # binary layout declarations (construct schemas), allowed to be long
    "rafs/v5/layout.py", "rafs/v6/layout.py", "rafs/blob/layout.py", "rafs/io/layout.py",
}


def _public_modules() -> tuple[str, ...]:
    """``PUBLIC_MODULES`` as ``rafs/__init__.py`` assigns it (a literal tuple or list of names)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "PUBLIC_MODULES" for t in targets):
                return tuple(ast.literal_eval(node.value))
    return ()


PUBLIC_MODULES = _public_modules()


# -- the import graph -------------------------------------------------------------------------------

def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str) -> list[tuple[str, bool]]:
    """(imported rafs module, at module level?) for every import statement of module ``name``: the
    deepest module that exists of each imported name (``from .x import y`` is ``rafs...x.y`` when
    that is a module, else ``rafs...x``)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def resolve(target: str) -> str | None:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit_one(sub, top)
                continue
            visit_one(child, top)

    def visit_one(child: ast.AST, top: bool) -> None:
        if isinstance(child, ast.Import):
            for alias in child.names:
                if alias.name == "rafs" or alias.name.startswith("rafs."):
                    found.append((resolve(alias.name), top))
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = package.split(".")
                base = base[:len(base) - (child.level - 1)]
                source = ".".join(base + ([child.module] if child.module else []))
            else:
                source = child.module or ""
            if source != "rafs" and not source.startswith("rafs."):
                return
            for alias in child.names:
                candidate = f"{source}.{alias.name}"
                found.append((candidate if candidate in MODULES else resolve(source), top))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(child, False)
        else:
            visit(child, top)

    visit(tree, True)
    return [(module, top) for module, top in found if module is not None and module != name]


IMPORTS = {name: _imports(name) for name in MODULES}


def _graph(*, module_level_only: bool, part: bool = False) -> dict[str, set[str]]:
    def node(name: str) -> str:
        return ".".join(name.split(".")[:2]) if part else name
    graph: dict[str, set[str]] = {node(name): set() for name in MODULES}
    for name, imports in IMPORTS.items():
        for module, top in imports:
            if (top or not module_level_only) and node(module) != node(name):
                graph[node(name)].add(node(module))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:           # iterative: the graph may be deep
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(components)


def _show(cycles: list[list[str]], *, part: bool = False, module_level_only: bool = True) -> str:
    """Each cycle, and the imports that close it (importer -> imported, within the cycle)."""
    def node(name: str) -> str:
        return ".".join(name.split(".")[:2]) if part else name
    lines = []
    for cycle in cycles:
        lines.append(" <-> ".join(cycle))
        members = set(cycle)
        for name, imports in sorted(IMPORTS.items()):
            for module in sorted({m for m, top in imports if top or not module_level_only}):
                if node(name) in members and node(module) in members and node(name) != node(module):
                    lines.append(f"    {name} -> {module}")
    return "\n".join(lines)


# -- the checks -------------------------------------------------------------------------------------

def test_the_import_graph_is_read():
    """The parser sees the imports it must (so the checks below cannot pass on an empty graph)."""
    assert ("rafs.errors", True) in IMPORTS["rafs"]
    assert any(module == "rafs.v6.layout" for module, _ in IMPORTS["rafs.v6.writer"])
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_level_import_cycles_between_modules():
    cycles = _cycles(_graph(module_level_only=True))
    later = [c for c in _cycles(_graph(module_level_only=False)) if c not in cycles]
    if later:
        warnings.warn("import cycles through imports inside functions:\n"
                      + _show(later, module_level_only=False), stacklevel=1)
    assert cycles == [], "module-level import cycles:\n" + _show(cycles)


def test_no_import_cycles_between_parts_of_rafs():
    cycles = _cycles(_graph(module_level_only=True, part=True))
    assert cycles == [], "import cycles between parts of rafs (module level):\n" + _show(cycles, part=True)


def test_no_module_over_about_500_lines():
    long = {str(path.relative_to(ROOT)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    over = {path: n for path, n in long.items() if path not in LAYOUT_FILES}
    assert over == {}, f"modules over {MAX_LINES} lines: " + ", ".join(f"{p} ({n})" for p, n in sorted(over.items()))
    assert all((ROOT / path).exists() for path in LAYOUT_FILES)


def test_blob_never_imports_io():
    wrong = {name: sorted({m for m, _ in imports if m == "rafs.io" or m.startswith("rafs.io.")})
             for name, imports in IMPORTS.items() if name == "rafs.blob" or name.startswith("rafs.blob.")}
    assert {name: io for name, io in wrong.items() if io} == {}


def test_cli_imports_only_the_public_face():
    assert PUBLIC_MODULES, "rafs/__init__.py names no PUBLIC_MODULES"
    assert set(PUBLIC_MODULES) <= set(MODULES), set(PUBLIC_MODULES) - set(MODULES)

    def public(module: str) -> bool:
        return module == "rafs" or module == "rafs.cli" or module.startswith("rafs.cli.") or \
            any(module == p or module.startswith(p + ".") for p in PUBLIC_MODULES)
    wrong = {name: sorted({m for m, _ in imports if not public(m)})
             for name, imports in IMPORTS.items() if name == "rafs.cli" or name.startswith("rafs.cli.")}
    assert {name: modules for name, modules in wrong.items() if modules} == {}
