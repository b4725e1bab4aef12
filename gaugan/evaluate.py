"""Scoring generated validation images: FID, mIoU and pixel accuracy, with their protocol.

Paper section 4 ("Performance metrics") and REFERENCE.md section 4. The generated PNGs
(:mod:`gaugan.generate`) are compared with the validation split of the store, i.e. the
real photos and label maps preprocessed exactly like the model's inputs:

- FID (:mod:`gaugan.metrics.fid`): generated vs real photos, pytorch-fid's Inception;
  the real statistics are cached per dataset and resolution. Without the verified
  Inception file FID is recorded as unavailable, with the reason.
- mIoU and pixel accuracy (:mod:`gaugan.metrics.segmentation`): a segmenter
  (:mod:`gaugan.segmenters`) on the generated photos against the label maps, and the same
  segmenter on the real photos as the ceiling.

:func:`evaluate` returns the content of ``reports/metrics.json``: numbers in the units of
the paper's Table 1 (mIoU and accuracy in percent), next to everything needed to
interpret them (segmenter, preprocessing, class mapping, resolution, number of images,
pytorch-fid version).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gaugan.data.registry import DatasetSpec
from gaugan.data.dataset import StoreDataset, make_loader
from gaugan.generated import read_generated, split_stems
from gaugan.metrics import fid as fid_metric
from gaugan.metrics.segmentation import ConfusionMatrix, SegmentationScores, per_class_table
from gaugan.segmenters.base import IGNORE_INDEX, Segmenter
from gaugan.segmenters.published import (
    SEGMENTER_FOR_DATASET,
    Downloader,
    SegmenterWeightsError,
    load_published_segmenter,
)
from gaugan.segmenters.trained import load_trained_segmenter

MIOU_CONVENTION = (
    "one confusion matrix over all validation pixels; ground-truth pixels mapped to the ignore index are "
    "left out; IoU per class = TP / (TP + FP + FN); classes absent from both ground truth and prediction "
    "are excluded from the mean, classes predicted but absent from the ground truth count with IoU 0; "
    "pixel accuracy = correct / scored pixels; both in percent"
)


def percent(value: float) -> float | None:
    return None if value != value else round(100.0 * value, 4)  # NaN (nothing scored) -> null


# --------------------------------------------------------------------------------------
# Pairs of (generated, real, label) in store order.


def validation_batches(
    store_dir: Path, generated_dir: Path, spec: DatasetSpec, batch_size: int, split: str = "val"
) -> Iterator[dict[str, Tensor]]:
    """Batches of ``{"generated", "real"}`` uint8 (B, 3, H, W) and ``"label"`` (B, H, W) indices."""
    stems = split_stems(store_dir, split)
    dataset = StoreDataset(store_dir, split, spec, train=False)
    for batch in make_loader(dataset, batch_size, shuffle=False, num_workers=0):
        batch_stems = [stems[index] for index in batch["index"].tolist()]
        yield {
            "generated": read_generated(generated_dir, batch_stems, spec.image_size),
            "real": batch["image"],
            "label": batch["label"],
        }


# --------------------------------------------------------------------------------------
# Segmentation.


@dataclass(frozen=True)
class SegmentationOutcome:
    generated: SegmentationScores | None
    real: SegmentationScores | None
    class_names: list[str]
    protocol: dict[str, Any]
    status: str  # "ok", "unavailable" or "disabled"
    reason: str = ""


def segmentation_scores(
    segmenter: Segmenter, store_dir: Path, generated_dir: Path, spec: DatasetSpec, device: torch.device,
    batch_size: int,
) -> tuple[SegmentationScores, SegmentationScores]:
    """Scores of the segmenter on the generated photos and on the real ones (the ceiling)."""
    generated = ConfusionMatrix(segmenter.num_classes, IGNORE_INDEX)
    real = ConfusionMatrix(segmenter.num_classes, IGNORE_INDEX)
    for batch in validation_batches(store_dir, generated_dir, spec, batch_size):
        target = segmenter.map_target(batch["label"].to(device, non_blocking=True))
        generated.update(segmenter.predict(batch["generated"].to(device, non_blocking=True)), target)
        real.update(segmenter.predict(batch["real"].to(device, non_blocking=True)), target)
    return generated.scores(), real.scores()


def real_image_scores(
    segmenter: Segmenter, store_dir: Path, spec: DatasetSpec, device: torch.device, batch_size: int,
    split: str = "val",
) -> SegmentationScores:
    """The segmenter on the real photos of ``split``: the ceiling generated images are measured against."""
    confusion = ConfusionMatrix(segmenter.num_classes, IGNORE_INDEX)
    for batch in make_loader(StoreDataset(store_dir, split, spec, train=False), batch_size, False, 0):
        target = segmenter.map_target(batch["label"].to(device, non_blocking=True))
        confusion.update(segmenter.predict(batch["image"].to(device, non_blocking=True)), target)
    return confusion.scores()


def choose_segmenter(choice: str, dataset: str) -> str:
    """``auto``: the published segmenter for the paper's datasets, the pipeline's own otherwise."""
    if choice == "auto":
        return "published" if dataset in SEGMENTER_FOR_DATASET else "trained"
    return choice


def segmentation_outcome(
    choice: str,
    spec: DatasetSpec,
    store_dir: Path,
    generated_dir: Path,
    device: torch.device,
    batch_size: int,
    weights_dir: Path,
    trained_path: Path,
    download: Downloader | None,
) -> SegmentationOutcome:
    """Load the chosen segmenter and score; a missing published weight file under ``auto``
    is recorded as unavailable (the other metrics still complete), under ``published`` it
    is an error."""
    resolved = choose_segmenter(choice, spec.name)
    if resolved == "none":
        return SegmentationOutcome(None, None, [], {"segmenter": "none"}, "disabled",
                                   "evaluate.segmenter is 'none'")
    if resolved == "published":
        try:
            segmenter = load_published_segmenter(spec.name, weights_dir, device, download)
        except SegmenterWeightsError as err:
            if choice == "published":
                raise
            return SegmentationOutcome(None, None, [], {"segmenter": f"published for {spec.name}"}, "unavailable",
                                       str(err))
        names = _published_class_names(segmenter, spec)
    else:
        segmenter = load_trained_segmenter(trained_path, spec, device)
        names = segmenter.class_names()
    generated, real = segmentation_scores(segmenter, store_dir, generated_dir, spec, device, batch_size)
    protocol = {**segmenter.protocol(), "choice": choice, "resolved": resolved}
    return SegmentationOutcome(generated, real, names, protocol, "ok")


def _published_class_names(segmenter: Segmenter, spec: DatasetSpec) -> list[str]:
    """Names in the segmenter's class space, from the names of the stored indices that map to them.

    The dataset's full name list is used (ADE20K index 150 is "flag": with ADE20K's
    convention index 0 is "other" and there is no separate don't-care index).
    """
    from gaugan.data.classes import CLASS_NAMES, class_names

    known = CLASS_NAMES.get(spec.name, ())
    stored = class_names(spec)
    names = segmenter.class_names()
    for index, target in enumerate(segmenter.target_table.cpu().tolist()):
        if target != IGNORE_INDEX and target < len(names):
            names[target] = known[index] if index < len(known) else stored[index]
    return names


# --------------------------------------------------------------------------------------
# FID.


@dataclass(frozen=True)
class FidOutcome:
    value: float | None
    status: str  # "ok" or "unavailable"
    reason: str
    protocol: dict[str, Any]


def fid_statistics_path(stats_dir: Path, spec: DatasetSpec) -> Path:
    height, width = spec.image_size
    return stats_dir / f"{spec.name}_{height}x{width}.npz"


def fid_outcome(
    spec: DatasetSpec,
    store_dir: Path,
    generated_dir: Path,
    batch_size: int,
    stats_dir: Path,
    weights: fid_metric.WeightsLookup,
    device: torch.device,
    make_extractor: Callable[[Path, torch.device], fid_metric.FeatureExtractor] = fid_metric.inception_feature_extractor,
) -> FidOutcome:
    """FID of generated vs real validation photos, or the reason it is unavailable.

    ``make_extractor`` exists for the tests (a tiny stand-in network); the stage always
    uses pytorch-fid's Inception from the verified file.
    """
    version = fid_metric.pytorch_fid_version()
    stats_path = fid_statistics_path(stats_dir, spec)
    protocol: dict[str, Any] = {
        "implementation": f"pytorch-fid {version}",
        "pytorch_fid_version": version,
        "weights_file": fid_metric.FID_WEIGHTS_FILE,
        "feature_dims": fid_metric.FID_FEATURE_DIMS,
        "images": "generated PNGs vs the real validation photos of the store, both at the model's resolution "
                  f"{spec.image_size[0]}x{spec.image_size[1]} (pytorch-fid resizes to 299x299 itself)",
        # The file name only: metrics.json must not depend on where the repository lives.
        "real_statistics": stats_path.name,
    }
    if not weights.available:
        return FidOutcome(None, "unavailable", weights.reason, protocol)
    extract = make_extractor(weights.path, device)

    def real_batches() -> Iterator[Tensor]:
        for batch in make_loader(StoreDataset(store_dir, "val", spec, train=False), batch_size, False, 0):
            yield batch["image"]

    def generated_batches() -> Iterator[Tensor]:
        for batch in validation_batches(store_dir, generated_dir, spec, batch_size):
            yield batch["generated"]

    key = {
        "dataset": spec.name,
        "image_size": list(spec.image_size),
        "images_sha256": fid_metric.fingerprint_images(real_batches()),
        "pytorch_fid_version": version,
        "weights_file": fid_metric.FID_WEIGHTS_FILE,
    }
    real, cached = fid_metric.load_or_compute_statistics(
        stats_path, key, lambda: fid_metric.activation_statistics(real_batches(), extract)
    )
    generated = fid_metric.activation_statistics(generated_batches(), extract)
    if generated.num_images != real.num_images:
        raise ValueError(f"{generated.num_images} generated images for {real.num_images} real ones")
    protocol["real_statistics_cached"] = cached
    protocol["num_images"] = generated.num_images
    return FidOutcome(fid_metric.frechet_distance(generated, real), "ok", "", protocol)


# --------------------------------------------------------------------------------------
# Everything.


@dataclass(frozen=True)
class EvaluationReport:
    metrics: dict[str, Any]  # the content of reports/metrics.json
    per_class_rows: list[dict[str, object]]  # reports/per_class_iou.csv (empty without a segmenter)

    def tracking_metrics(self) -> dict[str, float]:
        """Namespaced numbers for MLflow (what gaugan.report reads), nulls left out."""
        names = {
            "fid": "fid/val", "miou": "miou/val", "accuracy": "accuracy/val",
            "real_miou": "miou/real_val", "real_accuracy": "accuracy/real_val",
        }
        return {key: float(self.metrics[field]) for field, key in names.items() if self.metrics.get(field) is not None}


def evaluate(
    spec: DatasetSpec,
    store_dir: str | os.PathLike,
    generated_dir: str | os.PathLike,
    device: torch.device,
    batch_size: int,
    segmenter_choice: str,
    segmenter_weights_dir: str | os.PathLike,
    trained_segmenter_path: str | os.PathLike,
    fid_weights: fid_metric.WeightsLookup,
    fid_stats_dir: str | os.PathLike,
    generation: dict[str, Any] | None = None,
    download: Downloader | None = None,
    make_extractor: Callable[[Path, torch.device], fid_metric.FeatureExtractor] = fid_metric.inception_feature_extractor,
) -> EvaluationReport:
    """Score ``generated_dir`` against the store's validation split; see the module docstring."""
    store_dir, generated_dir = Path(store_dir), Path(generated_dir)
    num_images = len(split_stems(store_dir, "val"))
    segmentation = segmentation_outcome(
        segmenter_choice, spec, store_dir, generated_dir, device, batch_size, Path(segmenter_weights_dir),
        Path(trained_segmenter_path), download,
    )
    fid = fid_outcome(spec, store_dir, generated_dir, batch_size, Path(fid_stats_dir), fid_weights, device,
                      make_extractor)
    generated, real = segmentation.generated, segmentation.real
    metrics: dict[str, Any] = {
        "fid": None if fid.value is None else round(fid.value, 4),
        "miou": percent(generated.miou) if generated else None,
        "accuracy": percent(generated.accuracy) if generated else None,
        "real_miou": percent(real.miou) if real else None,
        "real_accuracy": percent(real.accuracy) if real else None,
        "fid_status": fid.status,
        "fid_reason": fid.reason,
        "segmentation_status": segmentation.status,
        "segmentation_reason": segmentation.reason,
        "protocol": {
            "dataset": spec.name,
            "comparable_to_paper": spec.comparable_to_paper,
            "split": "val",
            "num_images": num_images,
            "resolution": f"{spec.image_size[0]}x{spec.image_size[1]} (HxW), the model's input size; label maps "
                          "nearest-resized, photos bicubic (as the model's inputs)",
            "units": {"fid": "FID", "miou": "percent", "accuracy": "percent"},
            "miou_convention": MIOU_CONVENTION,
            "num_classes_scored": generated.num_classes_scored if generated else None,
            "segmenter": segmentation.protocol,
            "fid": fid.protocol,
            "generation": generation or {},
            "spec": dataclasses.asdict(spec),
        },
    }
    rows = []
    if generated is not None and real is not None:
        rows = per_class_table({"generated": generated, "real": real}, segmentation.class_names)
    return EvaluationReport(metrics, rows)
