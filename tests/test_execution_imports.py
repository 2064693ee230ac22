"""Import layering (issue 17): the installed package imports none of the repository's other folders, the data
layer none of the tasks, the judge nothing but the sandbox, and the sandbox-side harness the standard library
only. Read from the source (every import, at any depth), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module an absolute import of ``path`` names; ``from a import b`` names ``a`` and ``a.b``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offending(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Files under ``folder`` that import a module in (or under) ``forbidden``, with those modules."""
    found = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        bad = [m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden)]
        if bad:
            found[str(path.relative_to(REPO))] = sorted(bad)
    return found


def test_the_installed_package_imports_no_other_folder_of_the_repository():
    assert offending("gdpo", ("analysis", "eval", "experiments", "bench", "tests")) == {}


def test_the_data_layer_imports_no_task():
    assert offending("gdpo/data", ("gdpo.tasks",)) == {}


def test_the_judge_imports_only_the_sandbox_of_the_project():
    project = {
        m
        for path in (REPO / "gdpo/execution").glob("*.py")
        for m in imported_modules(path)
        if m.split(".")[0] in ("gdpo", "analysis", "eval", "experiments", "bench")
    }
    assert project == {"gdpo", "gdpo.sandbox"}  # from gdpo import sandbox


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names")
def test_the_harness_uses_the_standard_library_only():
    """The sandbox runs it without site-packages and without the repository."""
    modules = imported_modules(REPO / "gdpo/execution/harness.py")
    assert modules == {"os", "sys", "json", "signal"}
    assert all(m in sys.stdlib_module_names for m in modules)
