"""mIoU and pixel accuracy on hand-made confusion cases: perfect, all wrong, absent classes,
ignored pixels, false positives of absent classes, accumulation, and the CSV table."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from gaugan.metrics.segmentation import (
    PER_CLASS_COLUMNS,
    ConfusionMatrix,
    per_class_table,
    scores_from_confusion,
    write_csv_atomic,
)


def scores_of(prediction, target, num_classes, ignore_index=255):
    confusion = ConfusionMatrix(num_classes, ignore_index)
    confusion.update(torch.tensor(prediction), torch.tensor(target))
    return confusion, confusion.scores()


def test_perfect_prediction():
    target = [[0, 1, 2], [2, 1, 0]]
    _, scores = scores_of(target, target, 3)
    assert scores.miou == 1.0 and scores.accuracy == 1.0
    assert scores.per_class_iou == (1.0, 1.0, 1.0) and scores.num_pixels == 6


def test_all_wrong():
    _, scores = scores_of([[1, 0], [1, 0]], [[0, 1], [0, 1]], 2)
    assert scores.miou == 0.0 and scores.accuracy == 0.0 and scores.per_class_iou == (0.0, 0.0)


def test_hand_computed_confusion():
    # truth:      0 0 0 1 1 2
    # prediction: 0 0 1 1 2 2
    confusion, scores = scores_of([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2], 3)
    assert confusion.matrix().tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # IoU0 = 2/(3+2-2) = 2/3; IoU1 = 1/(2+2-1) = 1/3; IoU2 = 1/(1+2-1) = 1/2
    assert scores.per_class_iou == pytest.approx((2 / 3, 1 / 3, 1 / 2))
    assert scores.miou == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert scores.accuracy == pytest.approx(4 / 6)
    assert scores.ground_truth_pixels == (3, 2, 1)


def test_classes_absent_from_truth_and_prediction_are_excluded_from_the_mean():
    # 5 classes, only 0 and 1 occur anywhere: the mean is over those two.
    _, scores = scores_of([0, 0, 1, 0], [0, 0, 1, 1], 5)
    assert scores.per_class_iou[2:] == (None, None, None)
    assert scores.per_class_iou[0] == pytest.approx(2 / 3) and scores.per_class_iou[1] == pytest.approx(1 / 2)
    assert scores.miou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores.num_classes_scored == 2


def test_class_predicted_but_absent_from_truth_counts_as_zero():
    _, scores = scores_of([0, 0, 3, 3], [0, 0, 0, 0], 4)
    assert scores.per_class_iou == (0.5, None, None, 0.0)
    assert scores.miou == pytest.approx(0.25)


def test_ignored_pixels_count_for_nothing():
    # the ignored pixels are "predicted" as class 1 and as an invalid class: neither matters
    _, with_ignored = scores_of([0, 1, 1, 7], [0, 1, 255, 255], 2)
    _, without = scores_of([0, 1], [0, 1], 2)
    assert with_ignored == without
    assert with_ignored.num_pixels == 2 and with_ignored.miou == 1.0


def test_everything_ignored_gives_undefined_scores():
    _, scores = scores_of([0, 1], [255, 255], 2)
    assert math.isnan(scores.miou) and math.isnan(scores.accuracy) and scores.per_class_iou == (None, None)


def test_out_of_range_values_are_errors_not_silently_dropped():
    with pytest.raises(ValueError, match="target holds class 5"):
        scores_of([0, 1], [0, 5], 2)
    with pytest.raises(ValueError, match="prediction holds class 3"):
        scores_of([0, 3], [0, 1], 2)
    with pytest.raises(ValueError, match="shape"):
        scores_of([0, 1, 1], [0, 1], 2)


def test_accumulation_over_batches_equals_one_batch_and_a_reference_loop():
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randint(0, 6, (4, 9, 7), generator=generator)
    target = torch.randint(0, 6, (4, 9, 7), generator=generator)
    target[0, :3] = 255
    confusion = ConfusionMatrix(6)
    for b in range(4):
        confusion.update(prediction[b], target[b])
    whole = ConfusionMatrix(6)
    whole.update(prediction, target)
    reference = torch.zeros(6, 6, dtype=torch.int64)
    for p, t in zip(prediction.flatten().tolist(), target.flatten().tolist()):
        if t != 255:
            reference[t, p] += 1
    assert torch.equal(confusion.matrix(), reference) and torch.equal(whole.matrix(), reference)


def test_scores_from_an_explicit_matrix():
    scores = scores_from_confusion(torch.tensor([[5, 0], [5, 0]]))
    assert scores.per_class_iou == (0.5, 0.0) and scores.accuracy == 0.5


def test_per_class_csv(tmp_path):
    _, generated = scores_of([0, 0, 1, 1], [0, 0, 1, 0], 3)
    _, real = scores_of([0, 0, 1, 0], [0, 0, 1, 0], 3)
    rows = per_class_table({"generated": generated, "real": real}, ["sky", "grass", "tree"])
    path = tmp_path / "reports" / "per_class_iou.csv"
    write_csv_atomic(rows, path, PER_CLASS_COLUMNS)
    with open(path) as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == list(PER_CLASS_COLUMNS)
    assert read[0]["class_name"] == "sky" and float(read[0]["generated_iou"]) == pytest.approx(2 / 3)
    assert float(read[0]["real_iou"]) == 1.0 and read[0]["ground_truth_pixels"] == "3"
    assert read[2]["generated_iou"] == "" and read[2]["real_iou"] == ""  # tree: absent, undefined, not 0
    write_csv_atomic([], path, PER_CLASS_COLUMNS)  # no segmenter: a header-only table
    assert path.read_text().strip() == ",".join(PER_CLASS_COLUMNS)
    with pytest.raises(ValueError, match="class names"):
        per_class_table({"generated": generated}, ["sky"])
