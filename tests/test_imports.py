"""No import cycle among freqlens modules.

The test reads every module's source with :mod:`ast` (nothing is imported),
builds the graph of imports between freqlens modules and fails naming each
cycle. Counted: every ``import`` and ``from ... import`` of a package
module, at module level or inside a function or class; not counted: imports
under ``if TYPE_CHECKING:`` (annotations only). Importing ``pkg.sub.mod``
runs ``pkg/__init__`` and ``pkg/sub/__init__`` first, so it is also an edge to
each of those packages that does not contain the importing module (a module
inside ``pkg`` runs only after ``pkg/__init__`` has started: no edge back).
``from pkg.x import y`` is an edge to ``pkg.x.y`` when that is a module,
else to ``pkg.x``; relative imports are resolved against the importing module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import freqlens

PACKAGE_DIR = Path(freqlens.__file__).resolve().parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root`` by dotted name (``pkg.sub`` for ``pkg/sub/__init__.py``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (any module prefix)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, function-level ones included, skipping the body
    (not the ``else``) of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (see the module docstring for what counts)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _base(name, path, node)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules and "." in target:  # `import pkg.mod.attr`-like names
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    graph[name].add(target)
                    inside = _packages_of(name) | {name}  # packages already initialising when `name` runs
                    graph[name].update(p for p in _packages_of(target) if p in modules and p not in inside)
    return graph


def _packages_of(name: str) -> set[str]:
    """The packages that contain module ``name`` (``a.b.c`` -> ``a``, ``a.b``)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the first module of ``component``: ``[a, b, ..., a]`` (breadth-first, shortest)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def cycles(root: Path, package: str) -> list[str]:
    """Each import cycle of the package as ``a -> b -> a`` (one per strongly connected component,
    with the component's other members where it has more)."""
    graph = import_graph(root, package)
    out = []
    for component in strongly_connected(graph):
        cycle = a_cycle(graph, component)
        rest = sorted(set(component) - set(cycle))
        out.append(" -> ".join(cycle) + (f" (its component also holds {', '.join(rest)})" if rest else ""))
    return out


def test_no_import_cycle_among_freqlens_modules():
    found = cycles(PACKAGE_DIR, "freqlens")
    assert not found, "Import cycles among freqlens modules:\n" + "\n".join(found)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fake"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_the_walker_finds_a_planted_cycle_through_a_function_level_import(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from fake.b import thing\n",
        "b.py": "def thing():\n    from fake import c\n    return c\n",
        "c.py": "import fake.a\n",
        "d.py": "from fake.a import x\n",  # into the cycle, not part of it
    })
    assert cycles(root, "fake") == ["fake.a -> fake.b -> fake.c -> fake.a"]


def test_the_walker_finds_a_cycle_through_a_packages_init(tmp_path):
    """Importing ``fake.defenses.mslr`` runs ``fake/defenses/__init__``, which imports ``plain``, which
    imports the importer: a real cycle (Python fails with a partially initialised module) though no
    module imports another directly in a circle."""
    root = _package(tmp_path, {
        "__init__.py": "",
        "train.py": "from fake.defenses.mslr import PREFIX\nclass TrainConfig: ...\n",
        "defenses/__init__.py": "from fake.defenses.plain import Plain\n",
        "defenses/mslr.py": "PREFIX = 'mslr_'\n",
        "defenses/plain.py": "from fake.train import TrainConfig\nclass Plain: ...\n",
    })
    assert cycles(root, "fake") == ["fake.defenses -> fake.defenses.plain -> fake.train -> fake.defenses"]


def test_the_walker_skips_type_checking_blocks_and_parent_packages(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "from fake.sub.leaf import value\n",  # the package imports its submodule ...
        "sub/__init__.py": "",
        "sub/leaf.py": "value = 1\n",  # ... whose implicit parent import is no edge back
        "a.py": ("from typing import TYPE_CHECKING\nimport typing\nif TYPE_CHECKING:\n    from fake.b import B\n"
                 "if typing.TYPE_CHECKING:\n    import fake.b\nelse:\n    import fake.sub\n"),
        "b.py": "from fake.a import A\n",
    })
    graph = import_graph(root, "fake")
    assert graph == {"fake": {"fake.sub.leaf", "fake.sub"}, "fake.sub": set(), "fake.sub.leaf": set(),
                     "fake.a": {"fake.sub"}, "fake.b": {"fake.a"}}
    assert cycles(root, "fake") == []


@pytest.mark.parametrize(("source", "expected"), [
    ("from fake import b\n", {"fake.b"}),  # a module named in the list: an edge to it
    ("from fake import helper\n", {"fake"}),  # a name of the package: an edge to its __init__
    ("from fake.b import helper\n", {"fake.b"}),
    ("from . import b\n", {"fake.b"}),  # relative
    ("from .b import helper\n", {"fake.b"}),
    ("import fake.b as other\n", {"fake.b"}),
    ("import os, numpy\n", set()),  # other packages are not part of the graph
])
def test_each_form_of_import_is_one_edge(tmp_path, source, expected):
    root = _package(tmp_path, {"__init__.py": "helper = 1\n", "a.py": source, "b.py": "helper = 2\n"})
    assert import_graph(root, "fake")["fake.a"] == expected


def test_a_relative_import_two_levels_up_and_a_self_loop_via_the_package(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "from fake.sub.x import f\n",
        "sub/__init__.py": "",
        "sub/x.py": "def f():\n    from .. import g\n    return g\n",  # fake -> fake.sub.x -> fake
    })
    assert cycles(root, "fake") == ["fake -> fake.sub.x -> fake"]
