"""The library stands alone: importing any ``gaugan`` module pulls in no glue.

``gaugan/`` is models, data, losses, metrics and training; argument parsing, YAML,
MLflow and DVC belong to ``pipeline/`` and ``stages/`` (STYLE: the library never parses
argv, reads YAML or imports MLflow/DVC). Checked in a fresh interpreter, so that an
import made by another test cannot hide one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("pipeline", "stages", "mlflow", "dvc", "yaml", "typer")

SCRIPT = """
import importlib, json, pkgutil, sys
import gaugan
names = sorted(m.name for m in pkgutil.walk_packages(gaugan.__path__, "gaugan."))
for name in names:
    importlib.import_module(name)
forbidden = {forbidden!r}
print(json.dumps({{"modules": names,
                  "forbidden": sorted(m for m in sys.modules if m.split(".")[0] in forbidden)}}))
"""


def test_no_gaugan_module_imports_the_glue() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(forbidden=FORBIDDEN)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    assert "gaugan.models.spade" in found["modules"] and len(found["modules"]) > 30
    assert found["forbidden"] == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The probe itself works: a module that imports yaml is reported."""
    package = tmp_path / "gaugan_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "leaky.py").write_text("import yaml\n")
    script = SCRIPT.format(forbidden=FORBIDDEN).replace("import gaugan\n", "import gaugan_probe as gaugan\n")
    script = script.replace('"gaugan."', '"gaugan_probe."')
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "yaml" in json.loads(result.stdout.splitlines()[-1])["forbidden"]
