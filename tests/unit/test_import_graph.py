"""No import circles between the project's modules (issue 13).

Every import statement counts, module-level or inside a function: a function-level import
that closes a circle still ties the two modules together (neither can be read, tested or moved
alone), it only hides the circle until the function runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Folders that are scripts or tests, not importable production packages.
NOT_PACKAGES = {"tests", "bench"}


def _modules() -> dict[str, Path]:
    out = {}
    for init in sorted(REPO.glob("*/__init__.py")):
        if init.parent.name in NOT_PACKAGES:
            continue
        for path in init.parent.rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b`` counts a and a.b)."""
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            # A submodule importing its own parent package is Python's import order, not a circle.
            graph[name].update(t for t in targets if t in modules and t != name and not name.startswith(t + "."))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
    return found


def test_the_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]


def test_no_module_imports_itself_back():
    graph = import_graph()
    assert {"trainer.train", "trainer.checkpoint", "core.config", "serving.retriever"} <= set(graph)
    assert circles(graph) == []


def test_no_package_imports_itself_back():
    """Between top-level packages too (trainer -> core, evaluation -> trainer, ...): a package
    whose module imports a package that imports it back is one room split in two."""
    graph = import_graph()
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        top = module.split(".")[0]
        packages.setdefault(top, set()).update(t.split(".")[0] for t in targets if t.split(".")[0] != top)
    assert {"core", "trainer", "evaluation", "indexer", "publishing", "run_records", "serving"} <= set(packages)
    assert circles(packages) == []
