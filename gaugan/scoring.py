"""Scoring generated validation images with every registered metric, with their protocol.

Paper section 4 and docs/SPADE.md section 4. The generated PNGs (:mod:`gaugan.generate`)
are compared with the validation split of the store, i.e. the real photos and label maps
preprocessed exactly like the model's inputs. The numbers are the metrics of the registry
(:mod:`gaugan.metrics.registry`: FID, KID, mIoU, pixel accuracy, the segmenter's
ceiling on real photos); each is computed, or recorded as unavailable with the reason
(no Inception weights, no segmenter). The judges, the networks the images are measured
with, are loaded by :func:`inception_judge` and
:func:`gaugan.segmenters.loading.judge_for`.

:func:`score_generated` returns the content of ``reports/metrics.json``: numbers in the units of
the paper's Table 1 (mIoU and accuracy in percent), next to everything needed to
interpret them (segmenter, preprocessing, class mapping, resolution, number of images,
pytorch-fid version), and the per-class table with the classes the segmenter does not
recognise reliably even on real photos.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gaugan.data.dataset import StoreDataset, make_loader
from gaugan.data.registry import DatasetSpec
from gaugan.generated import read_generated, split_stems
from gaugan.metrics import fid as fid_metric
from gaugan.metrics.inputs import Judges, MetricInputs, missing_judge
from gaugan.metrics.registry import Metric, compute_metrics, registered_metrics
from gaugan.metrics.segmentation import (
    RELIABLE_REAL_IOU,
    ConfusionMatrix,
    SegmentationScores,
    per_class_table,
)
from gaugan.segmenters.base import IGNORE_INDEX, Segmenter

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


def real_batches(store_dir: Path, spec: DatasetSpec, batch_size: int, split: str = "val") -> Iterator[Tensor]:
    for batch in make_loader(StoreDataset(store_dir, split, spec, train=False), batch_size, False, 0):
        yield batch["image"]


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


# --------------------------------------------------------------------------------------
# The Inception judge and its cache of real-image features.


def inception_judge(
    weights: fid_metric.WeightsLookup,
    device: torch.device,
    make_extractor: Callable[[Path, torch.device], fid_metric.FeatureExtractor] = fid_metric.inception_feature_extractor,
) -> tuple[fid_metric.FeatureExtractor | None, str]:
    """pytorch-fid's Inception from the verified file, or None and why not.

    ``make_extractor`` exists for the tests (a tiny stand-in network); the stages always
    use pytorch-fid's Inception from the verified file.
    """
    if not weights.available:
        return None, weights.reason
    return make_extractor(weights.path, device), ""


def real_features_path(stats_dir: Path, spec: DatasetSpec) -> Path:
    height, width = spec.image_size
    return stats_dir / f"{spec.name}_{height}x{width}.npz"


def real_features_key(spec: DatasetSpec, store_dir: Path, batch_size: int, split: str = "val") -> dict[str, object]:
    """Everything the real-image Inception features depend on (the cache key)."""
    return {
        "dataset": spec.name,
        "image_size": list(spec.image_size),
        "images_sha256": fid_metric.fingerprint_images(real_batches(store_dir, spec, batch_size, split)),
        "pytorch_fid_version": fid_metric.pytorch_fid_version(),
        "weights_file": fid_metric.FID_WEIGHTS_FILE,
    }


# --------------------------------------------------------------------------------------
# Everything.


@dataclass(frozen=True)
class EvaluationReport:
    metrics: dict[str, Any]  # the content of reports/metrics.json
    per_class_rows: list[dict[str, object]]  # reports/per_class_iou.csv (empty without a segmenter)
    tracking: dict[str, float]  # MLflow keys of the registry -> the values of metrics.json (unavailable ones left out)


def needs_of(metrics: Sequence[Metric], judges: Judges) -> set[str]:
    """What to compute: the needs of the metrics whose judges are there."""
    return set().union(*(metric.needs for metric in metrics if missing_judge(judges, metric.needs) is None))


def score_generated(
    spec: DatasetSpec,
    store_dir: str | os.PathLike,
    generated_dir: str | os.PathLike,
    device: torch.device,
    batch_size: int,
    judges: Judges,
    fid_stats_dir: str | os.PathLike | None = None,
    generation: dict[str, Any] | None = None,
    metrics: Sequence[Metric] | None = None,
) -> EvaluationReport:
    """Score ``generated_dir`` against the store's validation split with ``metrics`` (default:
    every registered one); see the module docstring. Real-image Inception features are cached
    in ``fid_stats_dir`` (keyed by a fingerprint of the images) when it is given."""
    store_dir, generated_dir = Path(store_dir), Path(generated_dir)
    metrics = registered_metrics() if metrics is None else tuple(metrics)
    needs = needs_of(metrics, judges)

    cache: dict[str, Any] = {}
    real_features = None
    if "inception" in needs and fid_stats_dir is not None:
        cache["path"] = real_features_path(Path(fid_stats_dir), spec)
        cache["key"] = real_features_key(spec, store_dir, batch_size)
        real_features = fid_metric.load_cached_features(cache["path"], cache["key"])

    inputs = MetricInputs(
        lambda: validation_batches(store_dir, generated_dir, spec, batch_size), judges, device, needs,
        real_features=real_features,
        on_real_features=(lambda features: fid_metric.store_features(cache["path"], cache["key"], features))
        if cache else None,
    )
    num_images = inputs.num_images
    values = compute_metrics(metrics, inputs)

    rows: list[dict[str, object]] = []
    unreliable: list[str] = []
    if "segmenter" in needs:
        pair = inputs.segmentation()
        rows = per_class_table({"generated": pair.generated, "real": pair.real}, judges.segmenter.class_names())
        unreliable = [row["class_name"] for row in rows if row["judged_reliably"] == "no"]
    document: dict[str, Any] = {
        **{metric.name: None if values.values[metric.name] is None else round(values.values[metric.name], 4)
           for metric in metrics},
        "unavailable": values.unavailable,
        "classes_not_judged_reliably": unreliable,
        "protocol": {
            "dataset": spec.name,
            "comparable_to_paper": spec.comparable_to_paper,
            "split": "val",
            "num_images": num_images,
            "resolution": f"{spec.image_size[0]}x{spec.image_size[1]} (HxW), the model's input size; label maps "
                          "nearest-resized, photos bicubic (as the model's inputs)",
            "metrics": {metric.name: {"label": metric.heading, "mlflow_key": metric.tracking_key,
                                      "description": metric.description, **metric.protocol} for metric in metrics},
            "miou_convention": MIOU_CONVENTION,
            "judged_reliably": f"a class is judged reliably when the segmenter's IoU on the real photos is at least "
                               f"{100 * RELIABLE_REAL_IOU:.0f}%",
            "num_classes_scored": inputs.segmentation().generated.num_classes_scored if "segmenter" in needs else None,
            "segmenter": judges.segmenter_protocol or {"segmenter": judges.segmenter_reason},
            "inception": inception_protocol(spec, judges, cache, inputs),
            "generation": generation or {},
            "spec": dataclasses.asdict(spec),
        },
    }
    tracking = {metric.tracking_key: document[metric.name] for metric in metrics if document[metric.name] is not None}
    return EvaluationReport(document, rows, tracking)


def inception_protocol(spec: DatasetSpec, judges: Judges, cache: dict[str, Any], inputs: MetricInputs) -> dict:
    if judges.extract is None:
        return {"status": "unavailable", "reason": judges.inception_reason}
    protocol: dict[str, Any] = {
        "status": "ok",
        "weights_file": fid_metric.FID_WEIGHTS_FILE,
        "images": "generated PNGs vs the real validation photos of the store, both at the model's resolution "
                  f"{spec.image_size[0]}x{spec.image_size[1]} (pytorch-fid resizes to 299x299 itself)",
    }
    if cache:
        # The file name only: metrics.json must not depend on where the repository lives.
        protocol["real_features"] = cache["path"].name
        protocol["real_features_cached"] = inputs.real_features_given
    return protocol

