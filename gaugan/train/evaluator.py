"""Metrics during training: FID, mIoU, ... of the generator at epoch ends, and the best ones kept.

Users choose checkpoints by FID or mIoU curves (OASIS tracks FID during training and keeps
the best); the paper reports only the final generator. :class:`TrainingEvaluator` is the
callable the training loop takes (``gaugan.train.loop.train(...,
evaluate_during_training=...)``): every ``evaluate.every_epochs`` epochs, and after the last,
it synthesises a fixed subset of ``evaluate.during_training_images`` label maps in eval mode
(z or 3D noise of image i from (train.seed, i)), scores them with the registered metrics whose judges
are there (:mod:`gaugan.metrics.registry`), returns ``{mlflow key: value}`` for the loop to
report (curves ``fid/val``, ``miou/val`` against the step), and keeps the generator with the
best FID and the best mIoU so far as ``generator_best_fid.pt`` / ``generator_best_miou.pt``
(:mod:`gaugan.selection`), with ``selection.json`` saying when and how they were chosen.

The subset is the first images of the validation split, or, with ``evaluate.selection_split:
train_holdout``, the last images of the training split, which the loop then leaves out of
training (:func:`gaugan.selection.num_training_samples`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gaugan.checkpoint import atomic_torch_save, build_checkpoint
from gaugan.config import Config
from gaugan.data.dataset import StoreDataset
from gaugan.data.io import atomic_write_json
from gaugan.data.registry import DatasetSpec
from gaugan.generate import synthesize_batch
from gaugan.metrics.inputs import Judges, MetricInputs, missing_judge
from gaugan.metrics.registry import Metric, compute_metrics, registered_metrics
from gaugan.selection import CHOICES, SELECTION_FILE
from gaugan.train.progress import Progress


def subset_indices(cfg: Config, num_val: int, num_train: int) -> tuple[str, list[int]]:
    """(split, indices) of the images scored during training."""
    count = cfg.evaluate.during_training_images
    if cfg.evaluate.selection_split == "train_holdout":
        return "train", list(range(max(0, num_train - count), num_train))
    return "val", list(range(min(count, num_val)))


class TrainingEvaluator:
    """``(generator, epoch, step) -> {mlflow key: value}``, empty when no evaluation is due.

    ``epoch`` counts finished epochs (1 after the first). The generator is put in eval mode
    for the evaluation and returned to its mode. ``resume``: keep the best scores of an
    interrupted run (from ``selection.json``); otherwise any earlier best files are removed.
    """

    def __init__(
        self,
        cfg: Config,
        spec: DatasetSpec,
        store_dir: Path,
        out_dir: Path,
        judges: Judges,
        device: torch.device,
        resume: bool,
        metrics: Sequence[Metric] | None = None,
    ) -> None:
        self.cfg, self.spec, self.out_dir, self.judges, self.device = cfg, spec, Path(out_dir), judges, device
        self.every = cfg.evaluate.every_epochs
        self.num_epochs = cfg.optim.num_epochs_constant + cfg.optim.num_epochs_decay
        self.z_dim = cfg.encoder.z_dim if cfg.encoder.use_vae else None
        self.metrics = tuple(m for m in (registered_metrics() if metrics is None else metrics)
                             if missing_judge(judges, m.needs) is None)
        self.needs = set().union(*(m.needs for m in self.metrics))
        num_val, num_train = (len(StoreDataset(store_dir, split, spec)) for split in ("val", "train"))
        self.split, indices = subset_indices(cfg, num_val, num_train)
        dataset = StoreDataset(store_dir, self.split, spec, train=False)
        self.items = torch.utils.data.default_collate([dataset[index] for index in indices])
        self.real_features: np.ndarray | None = None
        self.history: list[dict[str, float]] = []  # {"epoch", "step", mlflow key: value} per evaluation
        self.best: dict[str, dict[str, Any]] = self._previous_best() if resume else {}
        if not resume:
            for path in [self.out_dir / SELECTION_FILE] + [self.out_dir / c.filename for c in CHOICES.values()]:
                path.unlink(missing_ok=True)

    def unavailable(self) -> dict[str, str]:
        """Registered metrics that cannot be scored during training, with the reason."""
        return {m.name: reason for m in registered_metrics()
                if (reason := missing_judge(self.judges, m.needs)) is not None}

    def due(self, epoch: int) -> bool:
        return self.every > 0 and (epoch % self.every == 0 or epoch == self.num_epochs)

    def __call__(self, generator: nn.Module, epoch: int, step: int) -> dict[str, float]:
        if not self.due(epoch) or not self.metrics:
            return {}
        was_training = generator.training
        generator.eval()
        try:
            inputs = MetricInputs(lambda: self._batches(generator), self.judges, self.device, self.needs,
                                  real_features=self.real_features, on_real_features=self._keep_real_features)
            values = compute_metrics(self.metrics, inputs)
        finally:
            generator.train(was_training)
        for choice_name, choice in CHOICES.items():
            value = values.values.get(choice.metric)
            if value is not None and self._better(choice_name, value):
                self._keep(choice_name, generator, value, epoch, step, inputs.num_images)
        scores = values.tracking(self.metrics)
        self.history.append({"epoch": epoch, "step": step, **scores})
        return scores

    def _batches(self, generator: nn.Module):
        size = self.cfg.train.batch_size
        for start in range(0, len(self.items["index"]), size):
            batch = {key: value[start:start + size] for key, value in self.items.items()}
            fake = synthesize_batch(generator, batch, self.spec.num_label_values, self.device, self.z_dim,
                                    self.cfg.train.seed, noise_channels=self.cfg.generator.noise_channels)
            yield {"generated": fake, "real": batch["image"], "label": batch["label"]}

    def _keep_real_features(self, features: np.ndarray) -> None:
        self.real_features = features  # the subset is fixed: Inception on the real images runs once

    def _better(self, choice_name: str, value: float) -> bool:
        if math.isnan(value):
            return False
        previous = self.best.get(choice_name)
        if previous is None:
            return True
        higher = CHOICES[choice_name].higher_is_better
        return value > previous["value"] if higher else value < previous["value"]

    def _keep(self, choice_name: str, generator: nn.Module, value: float, epoch: int, step: int,
              num_images: int) -> None:
        choice = CHOICES[choice_name]
        record = {"metric": choice.metric, "value": value, "epoch": epoch, "step": step, "split": self.split,
                  "num_images": num_images, "file": choice.filename}
        generator_state = {key: tensor.detach().cpu() for key, tensor in generator.state_dict().items()}
        payload = build_checkpoint(self.cfg, self.spec, {"G": generator_state}, progress=Progress(epoch, step, 0),
                                   selection=record)
        atomic_torch_save(payload, self.out_dir / choice.filename)
        self.best[choice_name] = record
        atomic_write_json(self.out_dir / SELECTION_FILE, self.best)

    def _previous_best(self) -> dict[str, dict[str, Any]]:
        path = self.out_dir / SELECTION_FILE
        if not path.is_file():
            return {}
        best = json.loads(path.read_text())
        return {name: record for name, record in best.items() if (self.out_dir / CHOICES[name].filename).is_file()}


def training_evaluator_summary(evaluator: TrainingEvaluator | None) -> dict[str, Any]:
    """What the run recorded about its evaluations (reports/train.json, the protocol)."""
    if evaluator is None:
        return {"every_epochs": 0}
    return {"every_epochs": evaluator.every, "split": evaluator.split, "num_images": len(evaluator.items["index"]),
            "metrics": [m.name for m in evaluator.metrics], "unavailable": evaluator.unavailable(),
            "best": evaluator.best, "history": evaluator.history}

