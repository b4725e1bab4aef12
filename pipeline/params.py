"""params.yaml -> :class:`gaugan.config.Config`, with ``-S section.key=value`` overrides.

The same override syntax as ``dvc exp run -S`` so that a command line such as
``gaugan bench -S train.batch_size=16`` reads exactly like an experiment.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from gaugan.config import Config, ConfigError, config_from_dict, config_to_dict

PARAMS_FILE = "params.yaml"


def repo_root() -> Path:
    """The root that a stage's paths are relative to: the directory DVC runs it in.

    Not DVC_ROOT: a queued experiment runs in a temporary copy under ``.dvc/tmp/exps/``
    while DVC_ROOT names the real repository, and DVC collects the stage's outputs from
    the copy. Only MLflow's store lives at DVC_ROOT (pipeline.tracking.tracking_root).
    """
    return Path.cwd().resolve()


def read_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the parameters file ({err.strerror})") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def parse_override_value(text: str) -> Any:
    """A ``-S key=value`` value as YAML reads it (``true``, ``null``, ``16``, ``abc``).

    YAML 1.1 reads ``1e-4`` as a string; it is taken as a float, as DVC does.
    """
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a params mapping (a copy is returned).

    An override naming a key that does not exist is an error here, listing the keys
    that do; type and range errors come from :func:`gaugan.config.config_from_dict`.
    """
    result = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        node = result
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"override {item!r}: {'.'.join(keys[:depth + 1])!r} is not a section")
            node = node[key]
        if keys[-1] not in node:
            raise ConfigError(
                f"override {item!r}: unknown key {path.strip()!r}; allowed keys here: {', '.join(node)}"
            )
        node[keys[-1]] = parse_override_value(text)
    return result


def load_config(path: str | os.PathLike = PARAMS_FILE, overrides: list[str] | None = None) -> Config:
    """Read, override and validate params.yaml; errors name the file and the key."""
    data = apply_overrides(read_params(path), overrides or [])
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
