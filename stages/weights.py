"""Weights stage: fetch, verify and cache the pretrained files the configured run needs.

docs/SPADE.md section 4: pytorch-fid's Inception weights (FID, KID) into the torch hub
cache where pytorch-fid looks; torchvision's VGG19 when ``loss.use_vgg_loss`` is on; the
published segmenter of a paper dataset into ``<evaluate.segmenter_weights_dir>/``
(gaugan/weights.py). Resumable downloads over https with progress bars; Inception and VGG19
are checked against their published size and SHA-256, the segmenters (no published
checksum) against the size and SHA-256 pinned at their first verified fetch. Offline or
unreachable, a file is recorded as unavailable with the reason and the stage still
succeeds: the pipeline completes, and the metric that needs the file says why it is
missing. After placing a file by hand: ``dvc repro --force --single-item weights``
then ``dvc repro``.

Its params, data and code deps and outputs are listed once, in dvc.yaml (stage ``weights``).
"""

from __future__ import annotations

from pathlib import Path

from gaugan.config import Config
from pipeline.stage import run_stage
from pipeline.weights import fetch_for_run


def run(cfg: Config, root: Path, progress: bool = True) -> dict:
    records = fetch_for_run(cfg, root, progress=progress)
    for group, record in records.items():
        where = ", ".join(file["path"] + (f": {file['note']}" if "note" in file else "") for file in record["files"])
        detail = record["reason"] if record["status"] != "ok" else where
        print(f"weights: {group}: {record['status']}" + (f" ({detail})" if detail else ""))
    return records


if __name__ == "__main__":
    run_stage("weights", run)
