"""fimvision.curation has no import circle: every import (top-level, inside functions, or under
``TYPE_CHECKING``) between its modules points one way.

Run as a script to print the graph: ``python tests/curation/test_import_graph.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "fimvision.curation"
ROOT = Path(__file__).resolve().parents[2] / "fimvision" / "curation"


def module_name(path: Path, root: Path) -> str:
    """``root/flowcam/curate.py`` -> ``fimvision.curation.flowcam.curate`` (``root`` is the package folder)."""
    parts = path.relative_to(root.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports anywhere in its body (relative imports resolved).

    ``from PACKAGE import name`` counts as importing the submodule ``name`` when there is one, else the
    package itself (its ``__init__``).
    """
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module name: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imported_modules(p, root, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_graph_sees_the_flowcam_modules_and_their_imports():
    graph = import_graph()
    assert f"{PACKAGE}.flowcam.labels" in graph
    assert f"{PACKAGE}.flowcam.labels" in graph[f"{PACKAGE}.flowcam.curate"]
    assert f"{PACKAGE}.flowcam.runs" in graph[f"{PACKAGE}.flowcam.labels"]


def test_no_import_circle_in_curation():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_check_finds_a_circle_hidden_in_a_function_or_under_type_checking(tmp_path):
    package = tmp_path / "fimvision" / "curation"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from fimvision.curation.b import g\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n"
                                  "def g():\n    pass\n")
    (package / "c.py").write_text("def f():\n    from fimvision.curation import a\n")
    cycle = find_cycle(import_graph(package))
    assert cycle is not None and set(cycle) == {f"{PACKAGE}.a", f"{PACKAGE}.b", f"{PACKAGE}.c"}


if __name__ == "__main__":
    graph = import_graph()
    for module, targets in graph.items():
        print(module, "->", ", ".join(sorted(targets)) or "(nothing in the package)")
    cycle = find_cycle(graph)
    print("cycle:", " -> ".join(cycle) if cycle else "none")
    raise SystemExit(1 if cycle else 0)
