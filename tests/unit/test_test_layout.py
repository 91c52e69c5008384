"""The test suite's own layout: tests/unit mirrors the package tree, and no test module imports
another test module.

``tests/unit/<package>/test_<topic>.py`` holds the unit tests of that package (a sub-package
gets a sub-folder: ``tests/unit/core/contracts/``), so the tests of a module are found where the
module is. Only the whole-project checks (import graph, packaging, this layout) sit in
tests/unit itself.

Helpers that several test modules share live in ``tests/support/`` (one job per module) and
shared pytest fixtures in a ``conftest.py``; a test module importing ``tests.*.test_*`` would
tie the two modules together (and run the imported module's import-time setup in the other).
Every import statement counts, module-level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
UNIT = TESTS / "unit"

#: The checks of the project as a whole, the only test modules directly in tests/unit.
WHOLE_PROJECT_CHECKS = {"test_import_graph.py", "test_packaging.py", "test_test_layout.py"}


def _is_test_module(dotted: str) -> bool:
    """``tests.unit.test_x`` (or any ``tests.*.test_*``): the last part names a test module."""
    parts = dotted.split(".")
    return len(parts) >= 2 and parts[0] == "tests" and parts[-1].startswith("test_")


def _package_of(path: Path) -> str:
    """Dotted package of a file under tests/, e.g. tests/unit/test_x.py -> tests.unit."""
    return ".".join(path.relative_to(TESTS.parent).parent.parts)


def imported_test_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path`` of a ``tests.*.test_*`` module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own package
                base = _package_of(path).split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, t) for t in targets if _is_test_module(t)]
    return found


def test_no_test_module_imports_another_test_module():
    files = sorted(TESTS.rglob("*.py"))
    assert any(p.name == "test_test_layout.py" for p in files)  # the walk sees this suite
    offenders = [f"{p.relative_to(TESTS.parent)}:{line} imports {module}"
                 for p in files for line, module in imported_test_modules(p)]
    assert not offenders, ("move shared helpers to tests/support/ (fixtures to a conftest.py):\n"
                           + "\n".join(offenders))


def test_the_check_catches_every_import_form(tmp_path):
    folder = tmp_path / "unit"
    folder.mkdir()
    sample = folder / "test_sample.py"
    sample.write_text("import os\n"
                      "from tests.support.stores import build_store\n"
                      "from tests.unit.test_server import call\n"
                      "import tests.unit.test_indexer\n"
                      "from tests.unit import test_trainer\n"
                      "def f():\n"
                      "    from tests.integration.test_multi_day import x\n")
    modules = [m for _, m in imported_test_modules(sample)]
    assert "tests.unit.test_server" in modules and "tests.unit.test_indexer" in modules
    assert "tests.unit.test_trainer" in modules and "tests.integration.test_multi_day" in modules
    assert not any(m.startswith("tests.support") for m in modules)


def _unit_folders() -> list[Path]:
    return sorted(p for p in UNIT.rglob("*") if p.is_dir() and p.name != "__pycache__")


def test_unit_folders_mirror_the_package_tree():
    folders = _unit_folders()
    assert any(f.name == "trainer" for f in folders)  # the walk sees the mirrored folders
    # bench/ is a folder of scripts (a namespace package): any project folder of modules counts.
    not_a_package = [str(f.relative_to(TESTS.parent)) for f in folders
                     if not any((REPO / f.relative_to(UNIT)).glob("*.py"))]
    assert not not_a_package, ("each folder under tests/unit names a package of the project "
                               "(tests/unit/trainer/ for trainer/): " + ", ".join(not_a_package))
    # Without an __init__.py two folders' test_store.py would collide as one module name.
    no_init = [str(f.relative_to(TESTS.parent)) for f in folders if not (f / "__init__.py").is_file()]
    assert not no_init, "a test folder needs an __init__.py: " + ", ".join(no_init)


def test_only_whole_project_checks_sit_at_the_top_of_tests_unit():
    loose = sorted(p.name for p in UNIT.glob("test_*.py"))
    assert set(loose) - WHOLE_PROJECT_CHECKS == set(), (
        "move these into tests/unit/<package>/ for the package they test: "
        + ", ".join(sorted(set(loose) - WHOLE_PROJECT_CHECKS)))
    assert set(loose) == WHOLE_PROJECT_CHECKS  # and the listed checks exist
