"""Segmentation scores of generated images: confusion matrix, mIoU, pixel accuracy.

Paper section 4 ("Performance metrics"): a semantic segmentation network is run on the
synthesised images and its prediction is compared with the input label map; a generator
that respects the layout scores a high mean intersection-over-union (mIoU) and pixel
accuracy. This module holds only the arithmetic; the segmenters are in
:mod:`gaugan.segmenters`.

Conventions (written down because papers differ on them):

- Everything goes through one confusion matrix ``C`` (rows: ground truth, columns:
  prediction), accumulated over the whole validation set (not averaged per image).
- Ground-truth pixels equal to ``ignore_index`` are left out entirely, whatever was
  predicted there. Any other value outside ``[0, num_classes)`` is an error (a class
  mapping bug), never silently dropped.
- ``IoU_c = C[c, c] / (sum_j C[c, j] + sum_i C[i, c] - C[c, c])``. A class absent from
  both the ground truth and the prediction has a zero denominator: its IoU is undefined
  (reported as empty) and it is excluded from the mean. A class that is predicted but
  absent from the ground truth has IoU 0 and counts in the mean (false positives are
  errors).
- mIoU is the mean IoU over the classes that are defined; pixel accuracy is
  ``trace(C) / sum(C)`` over the non-ignored pixels.

The same segmenter on the real photos gives the ceiling (``real_miou``): what a perfect
generator could reach under this judge. A class whose real-photo IoU is below
:data:`RELIABLE_REAL_IOU` is flagged as not judged reliably: its generated IoU says more
about the segmenter than about the generator.

Registers the metrics ``miou``, ``accuracy``, ``real_miou`` and ``real_accuracy``
(:mod:`gaugan.metrics.registry`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gaugan.data.io import atomic_write_text
from gaugan.metrics.registry import Metric, MetricUnavailable, register

RELIABLE_REAL_IOU = 0.20


class ConfusionMatrix:
    """A ``num_classes x num_classes`` count matrix accumulated batch by batch.

    Counts live on the device of the first batch (int64), so accumulating never forces a
    host-device copy; :meth:`scores` reads them back once.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts: Tensor | None = None

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: ``prediction`` and ``target`` are integer class maps of one shape."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(prediction.shape)} differs from target shape {tuple(target.shape)}"
            )
        n = self.num_classes
        prediction = prediction.reshape(-1).long()
        target = target.reshape(-1).long().to(prediction.device)
        scored = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        # Anything else outside the classes is a mapping bug upstream: fail instead of dropping pixels.
        bad_target = scored & ((target < 0) | (target >= n))
        if bool(bad_target.any()):
            value = int(target[bad_target][0])
            raise ValueError(f"target holds class {value}, outside 0..{n - 1} and not the ignore index "
                             f"{self.ignore_index} (num_classes={n})")
        bad = scored & ((prediction < 0) | (prediction >= n))
        if bool(bad.any()):
            value = int(prediction[bad][0])
            raise ValueError(f"prediction holds class {value}, outside 0..{n - 1} (num_classes={n})")
        valid = scored
        flat = target[valid] * n + prediction[valid]
        batch_counts = torch.bincount(flat, minlength=n * n).reshape(n, n)
        self.counts = batch_counts if self.counts is None else self.counts + batch_counts.to(self.counts.device)

    def matrix(self) -> Tensor:
        """The accumulated counts on the CPU (zeros when nothing was added)."""
        if self.counts is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self.counts.cpu()

    def scores(self) -> SegmentationScores:
        return scores_from_confusion(self.matrix())


@dataclass(frozen=True)
class SegmentationScores:
    miou: float  # mean IoU over defined classes, in [0, 1]; nan if no class is defined
    accuracy: float  # pixel accuracy over non-ignored pixels, in [0, 1]; nan without pixels
    per_class_iou: tuple[float | None, ...]  # None: absent from ground truth and prediction
    num_pixels: int  # non-ignored ground-truth pixels counted
    ground_truth_pixels: tuple[int, ...]  # per class, to show how much each IoU rests on

    @property
    def num_classes_scored(self) -> int:
        return sum(iou is not None for iou in self.per_class_iou)


def scores_from_confusion(confusion: Tensor) -> SegmentationScores:
    """mIoU, pixel accuracy and per-class IoU from a confusion matrix (rows = truth)."""
    counts = confusion.to(torch.float64)
    true_positive = counts.diagonal()
    ground_truth = counts.sum(dim=1)
    predicted = counts.sum(dim=0)
    union = ground_truth + predicted - true_positive
    defined = union > 0
    iou = torch.where(defined, true_positive / union.clamp(min=1), torch.zeros_like(union))
    total = float(counts.sum())
    miou = float(iou[defined].mean()) if bool(defined.any()) else float("nan")
    accuracy = float(true_positive.sum()) / total if total > 0 else float("nan")
    per_class = tuple(float(v) if d else None for v, d in zip(iou.tolist(), defined.tolist()))
    return SegmentationScores(
        miou=miou,
        accuracy=accuracy,
        per_class_iou=per_class,
        num_pixels=int(total),
        ground_truth_pixels=tuple(int(v) for v in ground_truth.tolist()),
    )


def judged_reliably(real_iou: float | None) -> str:
    """'yes' when the segmenter reaches :data:`RELIABLE_REAL_IOU` on the real photos, 'no' below, '' undefined."""
    if real_iou is None:
        return ""
    return "yes" if real_iou >= RELIABLE_REAL_IOU else "no"


def per_class_table(
    columns: dict[str, SegmentationScores], class_names: Sequence[str]
) -> list[dict[str, object]]:
    """Rows ``{class_index, class_name, <column>_iou..., ground_truth_pixels[, judged_reliably]}``.

    ``columns`` maps a column prefix (e.g. ``"generated"``, ``"real"``) to its scores;
    undefined IoUs are left empty rather than written as 0. With a ``"real"`` column,
    ``judged_reliably`` says whether the segmenter recognises the class on real photos.
    """
    if not columns:
        raise ValueError("per_class_table needs at least one column of scores")
    num_classes = len(next(iter(columns.values())).per_class_iou)
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    rows = []
    for index in range(num_classes):
        row: dict[str, object] = {"class_index": index, "class_name": class_names[index]}
        for prefix, scores in columns.items():
            iou = scores.per_class_iou[index]
            row[f"{prefix}_iou"] = "" if iou is None else round(iou, 6)
        row["ground_truth_pixels"] = next(iter(columns.values())).ground_truth_pixels[index]
        if "real" in columns:
            row["judged_reliably"] = judged_reliably(columns["real"].per_class_iou[index])
        rows.append(row)
    return rows


PER_CLASS_COLUMNS = ("class_index", "class_name", "generated_iou", "real_iou", "ground_truth_pixels",
                     "judged_reliably")


def write_csv_atomic(rows: list[dict[str, object]], path: str | os.PathLike,
                     fieldnames: Sequence[str] | None = None) -> None:
    """Write rows (dicts with the same keys) as CSV via a temporary file and rename.

    ``fieldnames`` gives the header when there may be no rows (a header-only file).
    """
    if fieldnames is None:
        if not rows:
            raise ValueError(f"{path}: no rows and no column names to write")
        fieldnames = list(rows[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------------------
# The metrics (in percent, as the paper's Table 1).


def _percent(value: float) -> float:
    if value != value:  # NaN: no pixel was scored
        raise MetricUnavailable("no pixel of the split was scored (every label maps to the ignore index)")
    return 100.0 * value


SEGMENTATION_NEEDS = frozenset({"generated", "real", "labels", "segmenter"})

register(Metric(
    name="miou", compute=lambda inputs: _percent(inputs.segmentation().generated.miou), needs=SEGMENTATION_NEEDS,
    tracking_key="miou/val", label="mIoU", unit="%", higher_is_better=True, rank=20,
    description="mean IoU of the segmenter's prediction on the generated images vs their label maps",
))
register(Metric(
    name="accuracy", compute=lambda inputs: _percent(inputs.segmentation().generated.accuracy),
    needs=SEGMENTATION_NEEDS, tracking_key="accuracy/val", label="accuracy", unit="%", higher_is_better=True,
    rank=30, description="pixel accuracy of the segmenter's prediction on the generated images",
))
register(Metric(
    name="real_miou", compute=lambda inputs: _percent(inputs.segmentation().real.miou), needs=SEGMENTATION_NEEDS,
    tracking_key="miou/real_val", label="judge mIoU on real", unit="%", higher_is_better=None, rank=40,
    description="the same segmenter on the real photos: the ceiling the generated mIoU is measured against",
))
register(Metric(
    name="real_accuracy", compute=lambda inputs: _percent(inputs.segmentation().real.accuracy),
    needs=SEGMENTATION_NEEDS, tracking_key="accuracy/real_val", label="judge accuracy on real", unit="%",
    higher_is_better=None, rank=50, description="the segmenter's pixel accuracy on the real photos (the ceiling)",
))
