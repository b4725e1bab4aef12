"""The declared dependency floors: pyproject.toml and the README name a torch (and torchvision)
that has every torch API the code uses."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# The newest torch APIs the code relies on: (what, the first torch release that has it, where
# it is used, the text there). The floor is the newest of them.
NEWEST_TORCH_APIS = [
    ("torch._dynamo.config.recompile_limit (cache_size_limit before)", (2, 7), "gaugan/train/compiled.py",
     "config.recompile_limit"),
    ("torch.serialization.safe_globals as a context manager", (2, 5), "gaugan/checkpoint.py",
     "torch.serialization.safe_globals("),
    ("fused Adam on the CPU", (2, 4), "gaugan/train/setup.py", "fused=fused"),
    ("torch.get_autocast_dtype / is_autocast_enabled(device_type)", (2, 4), "gaugan/models/onehot_conv.py",
     "torch.get_autocast_dtype(weight.device.type)"),
]
# torchvision's release for each torch minor version it was built against.
TORCHVISION_FOR_TORCH = {(2, 4): (0, 19), (2, 5): (0, 20), (2, 6): (0, 21), (2, 7): (0, 22)}


def floor(requirement: str) -> tuple[int, ...]:
    found = re.fullmatch(r"[\w-]+>=([\d.]+)", requirement.replace(" ", ""))
    assert found, f"expected 'name>=version', got {requirement!r}"
    return tuple(int(part) for part in found.group(1).split("."))


def declared(name: str) -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(dep for dep in dependencies if re.match(rf"{name}\b", dep))


@pytest.mark.parametrize(("what", "since", "path", "text"), NEWEST_TORCH_APIS)
def test_each_listed_api_is_used_and_exists(what, since, path, text):
    assert text in (ROOT / path).read_text(), f"{path} no longer uses {what}: update NEWEST_TORCH_APIS"
    assert tuple(int(part) for part in torch.__version__.split(".")[:2]) >= since


def test_the_declared_floors_have_every_api_the_code_uses():
    needed = max(since for _, since, _, _ in NEWEST_TORCH_APIS)
    torch_floor, vision_floor = floor(declared("torch")), floor(declared("torchvision"))
    assert torch_floor[:2] >= needed, f"pyproject.toml declares {declared('torch')}; the code needs torch {needed}"
    assert vision_floor[:2] >= TORCHVISION_FOR_TORCH[needed]
    readme = (ROOT / "README.md").read_text()
    version = ".".join(map(str, torch_floor))
    assert f"torch >= {version}" in readme and f"torchvision >= {'.'.join(map(str, vision_floor))}" in readme


def test_ruff_checks_the_code_before_the_tests_run():
    """scripts/test.sh (what CI runs) fails on a ruff finding before pytest starts; ruff comes
    with the test extras, and the stricter rule sets are selected."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(re.match(r"ruff\b", dependency) for dependency in project["project"]["optional-dependencies"]["test"])
    assert {"F", "UP", "PLW", "B", "SIM"} <= set(project["tool"]["ruff"]["lint"]["select"])
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "set -euo pipefail" in script and script.index("-m ruff check .") < script.index("-m pytest")

