"""Label conventions and published sizes of every dataset (docs/SPADE.md section 3).

A :class:`DatasetSpec` is the resolved, concrete description a network and a loader
need: how many classes, whether there is a don't-care channel, whether instance edges are
appended, and the image sizes. :func:`resolve_dataset` merges the published values with
the ``data`` section of the config (where a size left ``null`` means "as published").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gaugan.config import DATASET_NAMES, ConfigError, DataConfig

# Custom data: crop heights are multiples of this (the default generator's 5 upsamplings).
ASPECT_MULTIPLE = 32
# Datasets whose class 0 holds the unlabelled pixels (ADE20K's "other", Cityscapes' "unlabeled").
ZERO_IS_VOID = ("ade20k", "ade20k_outdoor", "cityscapes")
LANDSCAPE_CLASSES = ("sky", "cloud", "mountain", "snow", "water", "sand", "grass", "tree", "rock", "bush")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    label_nc: int  # number of real classes
    contain_dontcare: bool  # one extra channel (index label_nc) for "don't care"
    dontcare_value: int | None  # raw label value mapped to index label_nc (255 for COCO)
    use_instance: bool  # append the instance edge channel
    load_size: int
    crop_size: int
    aspect_ratio: float  # width / height
    preprocess_mode: str
    comparable_to_paper: bool = True

    @property
    def num_label_values(self) -> int:
        """Valid stored label indices are ``0 .. num_label_values - 1``."""
        return self.label_nc + int(self.contain_dontcare)

    @property
    def label_channels(self) -> int:
        """semantic_nc: channels of the one-hot input to G and D (labels + dontcare + edge)."""
        return self.num_label_values + int(self.use_instance)

    @property
    def void_index(self) -> int | None:
        """The stored index of unlabelled pixels, which the OASIS loss gives no weight; None: none.

        The don't-care index (``label_nc``) where a raw value maps to it (COCO-Stuff's 255, a
        custom dataset's ``dontcare_label``); for ADE20K ("other") and Cityscapes
        ("unlabeled") class 0, as the OASIS code treats them (docs/OASIS.md section 1).
        """
        if self.name in ZERO_IS_VOID:
            return 0
        return self.label_nc if self.contain_dontcare and self.dontcare_value is not None else None

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of network inputs: crop_size wide, crop_size / aspect_ratio high."""
        return round(self.crop_size / self.aspect_ratio), self.crop_size


PUBLISHED: dict[str, DatasetSpec] = {
    # ADE20K: values 0..150, 0 ("other") stays in channel 0; contain_dontcare gives 151
    # channels, the official code's intended shift by -1 never takes effect.
    "ade20k": DatasetSpec("ade20k", 150, True, None, False, 286, 256, 1.0, "resize_and_crop"),
    "ade20k_outdoor": DatasetSpec(
        "ade20k_outdoor", 150, True, None, False, 286, 256, 1.0, "resize_and_crop", comparable_to_paper=False
    ),
    "coco": DatasetSpec("coco", 182, True, 255, True, 286, 256, 1.0, "resize_and_crop"),
    "cityscapes": DatasetSpec("cityscapes", 35, False, None, True, 512, 512, 2.0, "fixed"),
    "facades": DatasetSpec("facades", 13, False, None, False, 286, 256, 1.0, "resize_and_crop"),
    # Built-in: CPU-sized; not a paper dataset.
    "landscapes": DatasetSpec(
        "landscapes", len(LANDSCAPE_CLASSES), False, None, True, 64, 64, 1.0, "resize_and_crop",
        comparable_to_paper=False,
    ),
}


def snapped_aspect_ratio(photo_aspect_ratio: float, crop_size: int) -> float:
    """The aspect ratio (W/H) nearest to the photos' whose crop height is a multiple of
    :data:`ASPECT_MULTIPLE` (or of the crop size, for crops smaller than that)."""
    step = min(ASPECT_MULTIPLE, crop_size)
    heights = range(step, 16 * crop_size + step, step)
    height = min(heights, key=lambda h: abs(math.log(crop_size / h / photo_aspect_ratio)))
    return crop_size / height


def resolve_dataset(data: DataConfig, inferred_num_classes: int | None = None,
                    photo_aspect_ratio: float | None = None) -> DatasetSpec:
    """The concrete spec for ``data.dataset`` with the config's size overrides applied.

    ``inferred_num_classes`` is what preprocessing found in a custom dataset's labels;
    it is used when ``data.custom.num_classes`` is null. Custom datasets are stored with
    ``preprocess_mode`` "fixed": with data.preprocess_mode and data.aspect_ratio both
    null, at ``photo_aspect_ratio`` (the training photos' most common W/H, found by
    preprocessing) snapped by :func:`snapped_aspect_ratio`, so that training and
    validation keep the photos' shape alike.
    """
    if data.dataset not in DATASET_NAMES:
        raise ConfigError(f"data.dataset: got {data.dataset!r}, expected one of {', '.join(DATASET_NAMES)}")
    if data.dataset == "custom":
        num_classes = data.custom.num_classes or inferred_num_classes
        if num_classes is None:
            raise ConfigError(
                "data.custom.num_classes is null and no classes were inferred yet: run the preprocess "
                "stage first (it infers them from the training labels) or set data.custom.num_classes"
            )
        base = DatasetSpec(
            "custom", num_classes, data.custom.dontcare_label is not None, data.custom.dontcare_label,
            True, 286, 256, 1.0, "fixed", comparable_to_paper=False,
        )
        if photo_aspect_ratio is not None and data.aspect_ratio is None and data.preprocess_mode is None:
            aspect = snapped_aspect_ratio(photo_aspect_ratio, data.crop_size or base.crop_size)
            base = dataclasses.replace(base, aspect_ratio=aspect)
    elif data.dataset == "landscapes":
        size = data.builtin.size
        base = dataclasses.replace(PUBLISHED["landscapes"], load_size=size, crop_size=size)
    else:
        base = PUBLISHED[data.dataset]
    overrides = {
        key: getattr(data, key)
        for key in ("load_size", "crop_size", "aspect_ratio", "preprocess_mode", "use_instance")
        if getattr(data, key) is not None
    }
    spec = dataclasses.replace(base, **overrides)
    if spec.load_size < spec.crop_size and spec.preprocess_mode == "resize_and_crop":
        raise ConfigError(
            f"data.load_size ({spec.load_size}) is smaller than data.crop_size ({spec.crop_size}) "
            f"with preprocess_mode 'resize_and_crop' for dataset {spec.name!r}"
        )
    return spec


def published_spec(name: str) -> DatasetSpec:
    """The spec of a dataset as published (custom needs a config: use resolve_dataset)."""
    if name not in PUBLISHED:
        allowed = ", ".join(sorted(PUBLISHED))
        raise ConfigError(f"dataset {name!r} has no published configuration; known: {allowed}")
    return PUBLISHED[name]
