"""Evaluate stage: every registered metric of the generated validation images.

Paper section 4 / docs/SPADE.md section 4: FID, KID, mIoU, pixel accuracy and the
segmenter's ceiling on real photos (gaugan/metrics/, computed by
pipeline/evaluation.py, shared with `gaugan evaluate`). Writes ``reports/metrics.json``
(the numbers with their protocol; a metric that cannot be computed is null with the
reason, e.g. FID without the Inception weights) and ``reports/per_class_iou.csv``, and
logs them to the training run's MLflow entry (the run id in
``<train.checkpoint_dir>/run.json``) at the training's last step, after the curves logged
during training. When there is no such run, or ``evaluate.checkpoint`` names another
generator (e.g. an official one), a separate evaluation run is opened and tagged with the
checkpoint it scored.

Its params, data and code deps and outputs are listed once, in dvc.yaml (stage ``evaluate``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from gaugan.config import Config, flatten
from gaugan.data.io import require_writable
from gaugan.metrics.fid import pytorch_fid_version
from gaugan.metrics.registry import registered_metrics
from gaugan.threads import configure_threads
from pipeline.evaluation import evaluate_generated, write_evaluation
from pipeline.stage import run_stage
from pipeline.tracking import RUN_FILE, open_run, read_run_file

METRICS_PATH = "reports/metrics.json"
PER_CLASS_PATH = "reports/per_class_iou.csv"
GENERATION_REPORT = "reports/generation.json"
TRAINING_REPORT = "reports/train.json"
GRID_PATH = "reports/generated_grid.png"
SEGMENTER_REPORT = "reports/segmenter.json"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run(cfg: Config, root: Path) -> None:
    configure_threads(cfg.train.num_threads)  # no loader workers here
    # Where the stage writes, checked before the work.
    require_writable((root / METRICS_PATH).parent, None, f"the stage's reports ({METRICS_PATH}, {PER_CLASS_PATH})")
    require_writable(root / cfg.evaluate.fid_stats_dir, "evaluate.fid_stats_dir",
                     "the cached real-image Inception features")
    generation = read_json(root / GENERATION_REPORT)
    report = evaluate_generated(cfg, root, root / cfg.evaluate.output_dir, generation)
    write_evaluation(report, root / METRICS_PATH, root / PER_CLASS_PATH)

    # The training run gets the numbers of its own generator, logged at its last step so that
    # they, not the curve points logged during training, are the run's values; anything else
    # gets its own run.
    training_run = read_run_file(root / cfg.train.checkpoint_dir / RUN_FILE) if not cfg.evaluate.checkpoint else None
    resume_id = training_run["run_id"] if training_run else None
    step = read_json(root / TRAINING_REPORT).get("step") if training_run else None
    with open_run(cfg, root, "evaluate", resume_run_id=resume_id) as tracker:
        tracker.log_params(flatten({"evaluate": dataclasses.asdict(cfg.evaluate)}))
        tracker.log_metrics(report.tracking, step=step)
        tracker.set_tags({
            **{f"evaluate.unavailable.{name}": reason[:1000] for name, reason in report.metrics["unavailable"].items()},
            "evaluate.segmenter": report.metrics["protocol"]["segmenter"].get("segmenter"),
            "evaluate.pytorch_fid_version": pytorch_fid_version(),
            "evaluate.checkpoint": generation.get("checkpoint"),
        })
        for path in (root / METRICS_PATH, root / PER_CLASS_PATH, root / SEGMENTER_REPORT):
            if path.is_file():
                tracker.log_artifact(path, "evaluation")
        if (root / GRID_PATH).is_file():
            tracker.log_image(root / GRID_PATH, key="evaluation")
    for metric in registered_metrics():
        reason = report.metrics["unavailable"].get(metric.name)
        value = report.metrics.get(metric.name)
        print(f"evaluate: {metric.heading}: {metric.format(value)}" + (f" (unavailable: {reason})" if reason else ""))


if __name__ == "__main__":
    run_stage("evaluate", run)
