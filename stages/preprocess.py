"""Preprocess stage: raw dataset -> training-ready store, class histogram and sample grid.

Reads ``<data.root>/<dataset>/`` in its official layout (gaugan.data.sources), checks
every file (gaugan.data.check: all problems are collected and reported together, nothing
is dropped), resizes as published (labels and instances NEAREST, photos BICUBIC) and
writes the store to ``<data.processed_dir>/`` through a temporary folder renamed at the
end (gaugan.data.preprocess). The store's ``manifest.json`` holds the resolved dataset spec;
for custom datasets with inferred classes it is the source of truth downstream.

Its params, data and code deps and outputs are listed once, in dvc.yaml (stage ``preprocess``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from gaugan.config import Config
from gaugan.data.preprocess import preprocess
from pipeline.stage import run_stage

REPORTS = Path("reports") / "data"


def run(cfg: Config, root: Path) -> dict:
    manifest = preprocess(cfg.data, root, reports_dir=root / REPORTS, progress=True)
    counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
    print(f"{manifest['dataset']}: {counts} pairs, {manifest['label_channels']} label channels "
          f"-> {root / cfg.data.processed_dir}")
    for warning in manifest["source"]["warnings"]:
        print(f"preprocess: warning: {warning}", file=sys.stderr)
    return manifest


if __name__ == "__main__":
    run_stage("preprocess", run)
