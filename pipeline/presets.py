"""Presets: partial params files (``presets/<name>.yaml``) turned into ``-S`` overrides.

A preset lists only the keys it sets; everything else keeps params.yaml's value. As
``-S section.key=value`` overrides it works with ``dvc exp run`` (in the workspace or
queued) and with every ``gaugan`` command that takes ``-S``:

    dvc exp run $(gaugan preset gpu-cityscapes)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gaugan.config import Config, ConfigError, flatten
from pipeline.params import PARAMS_FILE, load_config, read_params

PRESETS_DIR = "presets"


def available_presets(root: Path) -> list[str]:
    return sorted(path.stem for path in (root / PRESETS_DIR).glob("*.yaml"))


def preset_path(name: str, root: Path) -> Path:
    """``name`` as a file path if it is one, else ``<root>/presets/<name>.yaml``."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = root / PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_presets(root)) or "none"
        raise ConfigError(f"preset {name!r}: {path} does not exist; available presets: {known}")
    return path


def _yaml_scalar(value: Any) -> str:
    """How ``dvc exp run -S`` and pipeline.params read the value back (YAML)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").strip()


def preset_overrides(path: Path) -> list[str]:
    """The preset as ``section.key=value`` strings, in file order."""
    data = read_params(path)
    return [f"{key}={_yaml_scalar(value)}" for key, value in flatten(data).items()]


def preset_config(path: Path, params_path: Path = Path(PARAMS_FILE)) -> Config:
    """params.yaml with the preset applied and validated (unknown keys name the preset file)."""
    try:
        return load_config(params_path, preset_overrides(path))
    except ConfigError as err:
        raise ConfigError(f"preset {path}: {err}") from err
