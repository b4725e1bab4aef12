"""The weights stage's records: what it fetched or why not, per group, in reports/weights/.

:mod:`gaugan.weights` knows the files and how to fetch and verify them; this module runs it
for the configured run and keeps one small JSON record per group (``inception``,
``vgg19``, ``segmenter``), so that DVC re-runs training only when the VGG19 record
changes and evaluation only when the Inception or segmenter record changes. Evaluation
reads the Inception record to say why FID is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gaugan.config import Config
from gaugan.data.io import atomic_write_json
from gaugan.weights import GROUPS, fetch_needed, needed_weights

RECORD_DIR = Path("reports/weights")


def record_path(root: Path, group: str) -> Path:
    return root / RECORD_DIR / f"{group}.json"


def read_record(root: Path, group: str) -> dict[str, Any] | None:
    path = record_path(root, group)
    return json.loads(path.read_text()) if path.is_file() else None


def fetch_for_run(cfg: Config, root: Path, groups: tuple[str, ...] = GROUPS, progress: bool = True,
                  write: bool = True) -> dict[str, dict[str, Any]]:
    """Fetch and verify what the configured run needs in ``groups``; write one record per group."""
    needed = {group: need for group, need in needed_weights(cfg, root, Path(torch.hub.get_dir())).items()
              if group in groups}
    records = fetch_needed(needed, cfg.weights.download, cfg.weights.mirror, progress)
    if write:
        for group, record in records.items():
            atomic_write_json(record_path(root, group), {"group": group, **record})
    return records
