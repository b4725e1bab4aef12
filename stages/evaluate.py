"""Evaluate stage: FID, mIoU and pixel accuracy of the generated validation images.

Paper section 4 / REFERENCE.md section 4, computed by :func:`gaugan.evaluate.evaluate`.
Writes ``reports/metrics.json`` (the numbers with their protocol; FID recorded as
unavailable, with the reason and how to fix it, when the Inception weights are not
there) and ``reports/per_class_iou.csv``, and logs them to the training run's MLflow
entry (the run id in ``<train.checkpoint_dir>/run.json``). When there is no such run, or
``evaluate.checkpoint`` names another generator (e.g. an official one), a separate
evaluation run is opened and tagged with the checkpoint it scored.

DVC:
  params: data.processed_dir, train.checkpoint_dir, train.device, train.num_threads,
          segmenter.checkpoint_dir, evaluate, tracking
  deps:   ${data.processed_dir}, ${evaluate.output_dir}, reports/generation.json,
          ${segmenter.checkpoint_dir}, reports/segmenter.json, gaugan code it imports
  outs:   ${evaluate.fid_stats_dir} (persist: true, cache: false: the real-image statistics
          are reused across runs and checked against a fingerprint of the images),
          reports/per_class_iou.csv
  metrics: reports/metrics.json (cache: false)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from gaugan.config import Config, flatten
from gaugan.data.io import atomic_write_json
from gaugan.data.store import read_manifest, spec_from_manifest
from gaugan.evaluate import evaluate
from gaugan.metrics.fid import find_inception_weights
from gaugan.metrics.segmentation import PER_CLASS_COLUMNS, write_csv_atomic
from gaugan.segmenters.published import download_weights
from gaugan.segmenters.trained import SEGMENTER_FILE
from gaugan.threads import configure_threads
from gaugan.train.distributed import resolve_device
from pipeline.stage import run_stage
from pipeline.tracking import RUN_FILE, open_run, read_run_file

METRICS_PATH = "reports/metrics.json"
PER_CLASS_PATH = "reports/per_class_iou.csv"
GENERATION_REPORT = "reports/generation.json"
GRID_PATH = "reports/generated_grid.png"
SEGMENTER_REPORT = "reports/segmenter.json"


def run(cfg: Config, root: Path) -> None:
    configure_threads(cfg.train.num_threads)  # no loader workers here
    store_dir = root / cfg.data.processed_dir
    spec = spec_from_manifest(read_manifest(store_dir))
    device = resolve_device(cfg.train.device)
    fid_weights = find_inception_weights(root / cfg.evaluate.fid_weights if cfg.evaluate.fid_weights else None)
    generation_path = root / GENERATION_REPORT
    generation = json.loads(generation_path.read_text()) if generation_path.is_file() else {}
    report = evaluate(
        spec,
        store_dir,
        root / cfg.evaluate.output_dir,
        device,
        cfg.evaluate.batch_size,
        cfg.evaluate.segmenter,
        root / cfg.evaluate.segmenter_weights_dir,
        root / cfg.segmenter.checkpoint_dir / SEGMENTER_FILE,
        fid_weights,
        root / cfg.evaluate.fid_stats_dir,
        generation=generation,
        download=download_weights,
    )

    metrics_path = root / METRICS_PATH
    atomic_write_json(metrics_path, report.metrics)
    write_csv_atomic(report.per_class_rows, root / PER_CLASS_PATH, fieldnames=PER_CLASS_COLUMNS)

    # The training run gets the numbers of its own generator; anything else gets its own run.
    training_run = read_run_file(root / cfg.train.checkpoint_dir / RUN_FILE) if not cfg.evaluate.checkpoint else None
    resume_id = training_run["run_id"] if training_run else None
    with open_run(cfg, root, "evaluate", resume_run_id=resume_id) as tracker:
        tracker.log_params(flatten({"evaluate": dataclasses.asdict(cfg.evaluate)}))
        tracker.log_metrics(report.tracking_metrics())
        tracker.set_tags({
            "evaluate.fid_status": report.metrics["fid_status"],
            "evaluate.segmentation_status": report.metrics["segmentation_status"],
            "evaluate.segmenter": report.metrics["protocol"]["segmenter"].get("segmenter"),
            "evaluate.pytorch_fid_version": report.metrics["protocol"]["fid"]["pytorch_fid_version"],
            "evaluate.checkpoint": generation.get("checkpoint"),
        })
        tracker.log_artifact(metrics_path, "evaluation")
        tracker.log_artifact(root / PER_CLASS_PATH, "evaluation")
        if (root / GRID_PATH).is_file():
            tracker.log_image(root / GRID_PATH, key="evaluation")
        if (root / SEGMENTER_REPORT).is_file():
            tracker.log_artifact(root / SEGMENTER_REPORT, "evaluation")
    shown = {key: report.metrics[key] for key in ("fid", "miou", "accuracy", "real_miou", "real_accuracy")}
    print(f"evaluate: {shown}")
    if report.metrics["fid_status"] != "ok":
        print(f"evaluate: FID unavailable: {report.metrics['fid_reason']}")
    if report.metrics["segmentation_status"] == "unavailable":
        print(f"evaluate: mIoU unavailable: {report.metrics['segmentation_reason']}")


if __name__ == "__main__":
    run_stage("evaluate", run)
