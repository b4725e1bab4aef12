"""The suite's own layout: helpers live once, in tests/support.py (fixtures in conftest.py),
and no test file imports from another one (a test module is not a library)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _is_fixture(node: ast.AST) -> bool:
    return any("fixture" in ast.unparse(decorator) for decorator in getattr(node, "decorator_list", []))


def test_no_test_file_imports_from_another_one() -> None:
    found = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            found += [f"{path.name}: {name}" for name in names
                      if name.startswith(("tests.test_", "tests.conftest")) or name in ("conftest", "test")]
    assert found == []


def test_each_helper_is_defined_once() -> None:
    """A helper (a module-level function or class, not a test or a fixture) has one definition in tests/."""
    places = defaultdict(list)
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("test_") \
                    and not _is_fixture(node):
                places[node.name].append(path.name)
    assert {name: files for name, files in places.items() if len(files) > 1} == {}
