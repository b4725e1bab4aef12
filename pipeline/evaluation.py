"""Evaluation from the configuration, shared by the evaluate stage and `gaugan evaluate`
(which runs it outside DVC, without MLflow), and the train stage's evaluation during training.

Paper section 4: score the generated images (pipeline/generation.py) with every registered
metric (gaugan/scoring.py). This module turns the configuration into paths and judges:
which segmenter (``evaluate.segmenter``), where the Inception weights are
(``evaluate.fid_weights``, else the torch hub cache where the weights stage put them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gaugan.config import Config
from gaugan.data.io import atomic_write_json
from gaugan.data.registry import DatasetSpec
from gaugan.data.store import read_store
from gaugan.errors import UserError
from gaugan.metrics.fid import WeightsLookup, find_inception_weights
from gaugan.metrics.inputs import Judges
from gaugan.metrics.segmentation import PER_CLASS_COLUMNS, write_csv_atomic
from gaugan.scoring import EvaluationReport, inception_judge, score_generated
from gaugan.segmenters.loading import judge_for
from gaugan.segmenters.trained import SEGMENTER_FILE
from gaugan.selection import CHOICES
from gaugan.train.distributed import resolve_device
from gaugan.train.evaluator import TrainingEvaluator
from pipeline.weights import read_record


def inception_weights(cfg: Config, root: Path) -> WeightsLookup:
    """The verified Inception file, or why it is missing (the weights stage's reason when it has one)."""
    lookup = find_inception_weights(root / cfg.evaluate.fid_weights if cfg.evaluate.fid_weights else None)
    record = read_record(root, "inception")
    if not lookup.available and record is not None and record.get("status") == "unavailable":
        return WeightsLookup(None, f"the weights stage could not provide the Inception weights: {record['reason']} "
                                   "(then: dvc repro --force --single-item weights && dvc repro)")
    return lookup


def load_judges(cfg: Config, root: Path, spec: DatasetSpec, device: torch.device) -> Judges:
    judge = judge_for(
        spec, cfg.evaluate.segmenter, device,
        weights_dir=root / cfg.evaluate.segmenter_weights_dir,
        trained_path=root / cfg.segmenter.checkpoint_dir / SEGMENTER_FILE,
        torchscript_path=root / cfg.evaluate.segmenter_path if cfg.evaluate.segmenter_path else None,
    )
    extract, inception_reason = inception_judge(inception_weights(cfg, root), device)
    return Judges(judge.segmenter, judge.reason, extract, inception_reason, judge.protocol)


def evaluate_generated(cfg: Config, root: Path, generated_dir: Path, generation: dict[str, Any]) -> EvaluationReport:
    """Every registered metric of ``generated_dir`` against the validation split."""
    store_dir = root / cfg.data.processed_dir
    spec = read_store(store_dir, cfg.data)[1]
    device = resolve_device(cfg.train.device)
    judges = load_judges(cfg, root, spec, device)
    return score_generated(spec, store_dir, generated_dir, device, cfg.evaluate.batch_size, judges,
                    fid_stats_dir=root / cfg.evaluate.fid_stats_dir, generation=generation)


def training_evaluator(cfg: Config, root: Path, out_dir: Path, resume: bool) -> TrainingEvaluator | None:
    """The training loop's ``evaluate_during_training`` for ``evaluate.every_epochs`` > 0, else None.

    Fails before training when ``evaluate.checkpoint_choice`` asks for the best generator by a
    metric that cannot be computed (no Inception weights, no segmenter).
    """
    if cfg.evaluate.every_epochs == 0:
        return None
    store_dir = root / cfg.data.processed_dir
    spec = read_store(store_dir, cfg.data)[1]
    device = resolve_device(cfg.train.device)
    evaluator = TrainingEvaluator(cfg, spec, store_dir, out_dir, load_judges(cfg, root, spec, device), device, resume)
    choice = CHOICES.get(cfg.evaluate.checkpoint_choice)
    missing = evaluator.unavailable()
    if choice is not None and choice.metric in missing:
        raise UserError(
            f"evaluate.checkpoint_choice={cfg.evaluate.checkpoint_choice!r} keeps the generator with the best "
            f"{choice.metric} during training, but it cannot be computed: {missing[choice.metric]}"
        )
    return evaluator


def write_evaluation(report: EvaluationReport, metrics_path: Path, per_class_path: Path) -> None:
    atomic_write_json(metrics_path, report.metrics)
    write_csv_atomic(report.per_class_rows, per_class_path, fieldnames=PER_CLASS_COLUMNS)
