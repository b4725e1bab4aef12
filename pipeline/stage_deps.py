"""The project files a stage's code consists of: the deps of its dvc.yaml entry.

A stage must re-run when, and only when, code it runs changes. This follows the imports
of ``stages/<name>.py`` (every ``import`` statement, also those inside functions) through
``gaugan/`` and ``pipeline/`` and returns the files, package ``__init__.py`` files
included. ``stages/__init__.py`` is left out: it only checks where the code is imported
from (pipeline/dvc.py) and cannot change an output. tests/test_pipeline_dvc_yaml.py
checks dvc.yaml against this; ``python -m pipeline.stage_deps`` prints the lists and
``python -m pipeline.stage_deps --write dvc.yaml bench/dvc.yaml`` rewrites them in place.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from pipeline import PROJECT_PACKAGES


def _module_file(name: str, root: Path) -> Path | None:
    """``gaugan.data.io`` -> ``<root>/gaugan/data/io.py`` (or the package's __init__.py)."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports_all_its_modules(tree: ast.AST) -> bool:
    """A package __init__ that imports every module of the package (``pkgutil.iter_modules(__path__)``,
    e.g. gaugan/metrics/: a metric is a file): all of them are its dependencies."""
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr == "iter_modules" and any(isinstance(a, ast.Name) and a.id == "__path__"
                                                            for a in node.args)
               for node in ast.walk(tree))


def _imported_names(path: Path, root: Path) -> set[str]:
    names: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    if path.name == "__init__.py" and _imports_all_its_modules(tree):
        package = path.parent
        names.update(".".join((*package.relative_to(root).parts, module.stem)) for module in package.glob("[!_]*.py"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from gaugan.data import builtin` imports a module, not a name.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def code_closure(start: Path, root: Path) -> list[str]:
    """Project files reachable by imports from ``start`` (root-relative POSIX paths, sorted)."""
    root = root.resolve()
    seen: set[Path] = set()
    pending = [start.resolve()]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path, root):
            parts = name.split(".")
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            for depth in range(1, len(parts) + 1):
                module = _module_file(".".join(parts[:depth]), root)
                if module is not None and module not in seen:
                    pending.append(module)
    stages_init = root / "stages" / "__init__.py"
    return sorted(p.relative_to(root).as_posix() for p in seen if p != stages_init)


def stage_code_deps(stage: str, root: Path) -> list[str]:
    """The code deps of ``stages/<stage>.py``."""
    path = root / "stages" / f"{stage}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stage module")
    return code_closure(path, root)


def rewrite_code_deps(text: str, root: Path) -> str:
    """dvc.yaml text with each stage's ``.py`` deps replaced by :func:`stage_code_deps`.

    Line-based, so comments and layout stay; the other deps (data, reports) are kept
    after the code, in their order. A stage is recognised by the ``-m stages.<name>`` of its ``cmd``.
    """
    lines = text.splitlines()
    output: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        output.append(line)
        index += 1
        if line.strip() != "deps:":
            continue
        indent = " " * (len(line) - len(line.lstrip()) + 2)
        entries = []
        while index < len(lines) and lines[index].startswith(indent + "- "):
            entries.append(lines[index][len(indent) + 2:])
            index += 1
        command = next((line.split("-m stages.", 1)[1].strip() for line in reversed(output) if "-m stages." in line),
                       None)
        if command is None:
            raise ValueError("a deps: list before any `cmd: ... -m stages.<name>` line")
        kept = [entry for entry in entries if not entry.endswith(".py")]
        output += [f"{indent}- {dep}" for dep in [*stage_code_deps(command, root), *kept]]
    return "\n".join(output) + "\n"


if __name__ == "__main__":
    project = Path(__file__).resolve().parents[1]
    if sys.argv[1:2] == ["--write"]:
        for name in sys.argv[2:]:
            path = project / name
            path.write_text(rewrite_code_deps(path.read_text(), project))
            print(f"updated {path}")
    else:
        for name in sys.argv[1:] or sorted(p.stem for p in (project / "stages").glob("[!_]*.py")):
            print(f"{name}:")
            for dep in stage_code_deps(name, project):
                print(f"      - {dep}")
