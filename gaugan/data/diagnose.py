"""Likely mistakes in a dataset that are not errors, said as warnings by check-data and preprocess.

Each names the value or files involved and the setting that would fix it; nothing is
changed silently:

- a void / unlabelled value trained as a class: its name in the class file says so, or it
  is the highest value, next to the others, and lies mostly along region boundaries (where annotation tools
  leave unlabelled pixels) or covers almost nothing (docs/SPADE.md section 3: a don't-care
  value gets its own channel and is never scored);
- a stray label value that inflates an inferred class count (one 200 among 0..10);
- a value beyond the classes in most label maps, which makes every one of them an error: a
  void value the settings do not name (a hint beside those errors, with the setting);
- photos that training and validation distort differently (a non-square photo squashed to
  a square for training but resized whole for validation).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gaugan.data.classes import ClassFile, class_names, named_class_count
from gaugan.data.registry import DatasetSpec
from gaugan.data.resize import crop_shape, train_shape

VOID_NAMES = frozenset({"void", "unlabeled", "unlabelled", "ignore", "ignored", "dontcare", "don't care", "dont care",
                        "unknown"})  # "background" is left out on purpose: it is often a real class
BOUNDARY_SHARE = 0.25  # a void value has at least this share of its pixels on region boundaries ...
BOUNDARY_RATIO = 3.0  # ... and at least this many times the other classes' share
RARE_SHARE = 0.0005  # or covers less than this share of the training pixels
DISTORTION_TOLERANCE = 0.02  # train and val aspect changes that differ by more are reported


@dataclass
class LabelStatistics:
    """Per stored label index: pixels, and pixels with a 4-neighbour of another index."""

    pixels: np.ndarray
    boundary: np.ndarray

    @classmethod
    def zeros(cls, num_values: int) -> LabelStatistics:
        return cls(np.zeros(num_values, dtype=np.int64), np.zeros(num_values, dtype=np.int64))

    def add(self, other: LabelStatistics) -> None:
        self.pixels += other.pixels
        self.boundary += other.boundary


def label_statistics(label: np.ndarray, num_values: int) -> LabelStatistics:
    """The statistics of one (H, W) map of stored indices."""
    edge = np.zeros(label.shape, dtype=bool)
    horizontal = label[:, 1:] != label[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    vertical = label[1:] != label[:-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    return LabelStatistics(np.bincount(label.ravel(), minlength=num_values),
                           np.bincount(label[edge], minlength=num_values))


def _normalise(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def void_warning(spec: DatasetSpec, classes: ClassFile | None, train: LabelStatistics) -> str | None:
    """A custom dataset's likely void value that is trained as a class, and what to set."""
    if spec.name != "custom":
        return None
    used = [i for i in range(spec.label_nc) if train.pixels[i] > 0]
    total = int(train.pixels.sum())
    if not used or not total:
        return None
    names = class_names(spec, classes)
    named = [i for i in used if classes is not None and i < len(classes.names) and _normalise(names[i]) in VOID_NAMES]
    if named:
        value = named[-1]
        reason = f"{classes.path.name} names it {names[value]!r}"
    else:
        value, others = used[-1], used[:-1]
        if not others or value - others[-1] > 1:
            return None  # a value far above the others is a stray value (stray_value_warning), not a void
        share_on_boundaries = train.boundary[value] / train.pixels[value]
        others_on_boundaries = train.boundary[others].sum() / max(1, train.pixels[others].sum())
        if share_on_boundaries >= max(BOUNDARY_SHARE, BOUNDARY_RATIO * others_on_boundaries):
            reason = (f"it is the highest value and {share_on_boundaries:.0%} of its pixels lie along region boundaries "
                      f"(other classes: {others_on_boundaries:.0%})")
        elif train.pixels[value] / total < RARE_SHARE:
            reason = f"it is the highest value and covers only {train.pixels[value] / total:.3%} of the training pixels"
        else:
            return None
    return (f"label value {value} ({names[value]}) looks like a void / unlabelled value, not a class: {reason}. "
            f"It is trained and scored as a class ({train.pixels[value] / total:.1%} of the training pixels). If it "
            f"marks unlabelled pixels, set data.custom.dontcare_label: {value} (and, if you set "
            f"data.custom.num_classes, leave that value out of the count)")


@dataclass
class OutsideValues:
    """How many label maps were read, and how many of them hold each value outside the spec's range."""

    label_maps: int = 0
    files: Counter = field(default_factory=Counter)

    def add(self, values: tuple[int, ...] | None) -> None:
        """The values outside the range of one label map (None: it could not be read)."""
        if values is not None:
            self.label_maps += 1
            self.files.update(values)


def void_value_hint(spec: DatasetSpec, classes: ClassFile | None, outside: OutsideValues) -> str | None:
    """A custom dataset's one value beyond the classes found in most label maps: probably a void
    value that the settings do not name (every such map is a problem), and what to set."""
    if spec.name != "custom" or not outside.label_maps:
        return None
    common = [value for value, count in outside.files.items() if count > outside.label_maps / 2]
    if len(common) != 1:
        return None
    value, count = common[0], outside.files[common[0]]
    named = classes is not None and named_class_count(classes, spec.dontcare_value) == spec.label_nc
    source = f"named in {classes.path.name}" if named else "of data.custom.num_classes"
    otherwise = f"name it in {classes.path.name}" if named else "raise data.custom.num_classes"
    found = f"all {count}" if count == outside.label_maps else f"{count} of {outside.label_maps}"
    return (f"label value {value} is in {found} label maps, beyond the {spec.label_nc} classes {source} "
            f"(0..{spec.label_nc - 1}): it is probably the void / unlabelled label. If so, set "
            f"data.custom.dontcare_label: {value} (check-data: --dontcare {value}); if it is a class, {otherwise}")


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0..2, 5, 7..8"."""
    parts, start = [], values[0]
    for previous, value in zip(values, values[1:] + [None]):
        if value != previous + 1:
            parts.append(str(start) if start == previous else f"{start}..{previous}")
            start = value
    return ", ".join(parts)


def stray_value_warning(files_by_value: dict[int, list[Path]], count_by_value: dict[int, int],
                        num_files: int) -> str | None:
    """Values above a gap wider than the block below it, which make an inferred class count jump.

    ``files_by_value``: a few files holding each value; ``count_by_value``: how many do.
    """
    values = sorted(count_by_value)
    if len(values) < 2:
        return None
    gap, split = max((high - low - 1, k) for k, (low, high) in enumerate(zip(values, values[1:]), 1))
    if gap <= split:
        return None
    lower, upper = values[:split], values[split:]
    stray = []
    for value in upper[:3]:
        shown = ", ".join(str(f) for f in files_by_value[value][:3])
        count = count_by_value[value]
        stray.append(f"{value} only in {shown}" if count <= 3 else f"{value} in {count} files (e.g. {shown})")
    more = f" (and values {_ranges(upper[3:])})" if len(upper) > 3 else ""
    classes = values[-1] + 1
    return (f"label values {_ranges(lower)} in {num_files} training files, but {'; '.join(stray)}{more}: {classes} "
            f"classes inferred (max value + 1), {classes - len(values)} of them never used; set "
            f"data.custom.num_classes or fix the file(s)")


def _aspect_changes(spec: DatasetSpec, width: int, height: int) -> tuple[float, float]:
    """How training and validation storage stretch a photo's aspect ratio (1.0: kept)."""
    aspect = width / height
    train_h, train_w = train_shape(spec, width, height)
    val_h, val_w = crop_shape(spec)
    return (train_w / train_h) / aspect, (val_w / val_h) / aspect


def describe_aspects(sizes: Counter) -> str:
    """Counter of (width, height) -> "1.33 (367), 1.50 (2)": aspect ratios W/H and photo counts."""
    aspects: Counter = Counter()
    for (width, height), count in sizes.items():
        aspects[round(width / height, 2)] += count
    return ", ".join(f"{aspect:.2f} ({count})" for aspect, count in aspects.most_common(5))


def describe_storage(spec: DatasetSpec) -> str:
    """How photos are stored for training and validation, in words (check-data's summary)."""
    load = spec.load_size
    crop_h, crop_w = crop_shape(spec)
    train = {
        "resize_and_crop": f"resized to {load}x{load} (squares)",
        "fixed": f"resized to {load}x{round(load / spec.aspect_ratio)} (aspect {spec.aspect_ratio:.2f})",
        "scale_width_and_crop": f"scaled to {load} wide (aspect kept)",
        "none": "kept as on disk",
    }.get(spec.preprocess_mode, spec.preprocess_mode)
    return (f"preprocess_mode {spec.preprocess_mode!r}: train photos {train}, then random {crop_w}x{crop_h} crops; "
            f"val photos resized whole to {crop_w}x{crop_h} (WxH)")


def distortion_warning(spec: DatasetSpec, sizes_by_split: dict[str, Counter]) -> str | None:
    """Photos whose aspect ratio training storage changes differently from validation storage."""
    differing: Counter = Counter()
    example: dict[tuple[float, float, float], tuple[int, int]] = {}
    for sizes in sizes_by_split.values():
        for (width, height), count in sizes.items():
            train, val = _aspect_changes(spec, width, height)
            if abs(train / val - 1) > DISTORTION_TOLERANCE:
                key = (round(width / height, 2), round(train * width / height, 2), round(val * width / height, 2))
                differing[key] += count
                example.setdefault(key, (width, height))
    if not differing:
        return None
    (aspect, train_aspect, val_aspect), count = differing.most_common(1)[0]
    width, height = example[(aspect, train_aspect, val_aspect)]
    return (f"train and val distort the photos differently: {sum(differing.values())} photos (e.g. {count} of aspect "
            f"{aspect:.2f} like {width}x{height}) are stored at aspect {train_aspect:.2f} for training "
            f"(data.preprocess_mode {spec.preprocess_mode!r}) but {val_aspect:.2f} for validation, so the generator is "
            f"scored on shapes it was not trained on. Leave data.preprocess_mode and data.aspect_ratio null for custom "
            f"data (fixed at the photos' own aspect ratio), or set data.preprocess_mode: fixed and data.aspect_ratio: "
            f"{aspect:.2f}")
