"""Choosing the generator to report: the final one, or the best by a metric during training.

Users pick checkpoints by FID or mIoU curves (OASIS keeps the best FID); the paper reports
the final generator. ``evaluate.checkpoint_choice`` is ``final``, ``best_fid`` or
``best_miou``; the best ones are kept during training
(:class:`gaugan.train.evaluator.TrainingEvaluator`) as
``<train.checkpoint_dir>/generator_best_<metric>.pt``.

Choosing on the split that is then reported is optimistic: the best of N noisy scores of
the same images is biased towards luck on those images. ``evaluate.selection_split:
train_holdout`` scores the choice on the last ``evaluate.during_training_images`` images of
the training split instead, held out of training (:func:`num_training_samples`), so the
validation numbers stay an unbiased measure of the chosen generator.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gaugan.checkpoint import GENERATOR_CHECKPOINT, CheckpointError
from gaugan.config import Config, ConfigError, EvaluateConfig

SELECTION_FILE = "selection.json"  # how each kept best generator was chosen
# The settings that decide which training images are held out (num_held_out).
HELD_OUT_SETTINGS = ("selection_split", "every_epochs", "during_training_images")


@dataclass(frozen=True)
class Choice:
    metric: str  # registered metric name (gaugan.metrics.registry)
    higher_is_better: bool
    filename: str  # in train.checkpoint_dir


CHOICES = {
    "best_fid": Choice("fid", False, "generator_best_fid.pt"),
    "best_miou": Choice("miou", True, "generator_best_miou.pt"),
}


def checkpoint_filename(checkpoint_choice: str) -> str:
    """The file in ``train.checkpoint_dir`` that ``evaluate.checkpoint_choice`` names."""
    if checkpoint_choice == "final":
        return GENERATOR_CHECKPOINT
    return CHOICES[checkpoint_choice].filename


def num_held_out(cfg: Config) -> int:
    """Training images kept out of training to choose the checkpoint on (0 unless train_holdout)."""
    if cfg.evaluate.selection_split != "train_holdout" or cfg.evaluate.every_epochs == 0:
        return 0
    return cfg.evaluate.during_training_images


def num_training_samples(cfg: Config, num_stored: int) -> int:
    """The training images G and D see: the stored ones minus those held out for the choice."""
    held_out = num_held_out(cfg)
    if held_out and held_out >= num_stored:
        raise ConfigError(
            f"evaluate.selection_split=train_holdout holds out evaluate.during_training_images={held_out} of the "
            f"{num_stored} training images, leaving none to train on; lower evaluate.during_training_images"
        )
    return num_stored - held_out


def check_held_out_unchanged(saved_config: Mapping[str, Any], cfg: Config, path: str | os.PathLike) -> None:
    """Refuse to continue a training (its checkpoint's ``saved_config``) with ``cfg`` when they
    hold out a different number of training images: the continuation would train on other
    images than the checkpoint did.

    Only the count matters (the held-out images are the split's last ones), so a change of
    ``evaluate.every_epochs`` between two non-zero values, or of ``during_training_images``
    with the validation split, is no difference. Keys a checkpoint predates take their defaults.
    """
    saved_evaluate = saved_config.get("evaluate", {})
    # dataclasses.replace: the saved values as they are (another combination may fail today's checks).
    saved = dataclasses.replace(cfg, evaluate=dataclasses.replace(
        cfg.evaluate, **{key: saved_evaluate.get(key, getattr(EvaluateConfig(), key)) for key in HELD_OUT_SETTINGS}))
    before, after = num_held_out(saved), num_held_out(cfg)
    if before == after:
        return
    changes = "; ".join(f"evaluate.{key}: {getattr(saved.evaluate, key)!r} -> {getattr(cfg.evaluate, key)!r}"
                        for key in HELD_OUT_SETTINGS if getattr(saved.evaluate, key) != getattr(cfg.evaluate, key))
    raise CheckpointError(
        f"{path}: cannot resume: the checkpoint trained without the last {before} images of the training split "
        f"(held out to choose the checkpoint on), this configuration holds out {after} ({changes}), so the "
        f"continuation would train on other images. Set those back, or set train.resume=false (or delete {path}) "
        "to start afresh."
    )
