"""The sizes each pair is stored and cropped at, and the NEAREST resize of index maps.

The published policy, applied by :mod:`gaugan.data.preprocess` once instead of on every load.

Paper section 4 "Implementation details", docs/SPADE.md section 3: label and instance maps
with NEAREST (class indices must never be blended), photos with BICUBIC. Training sizes:

- ``resize_and_crop``: square ``load_size`` (286 for ADE20K/COCO), random crop of ``crop_size``;
- ``fixed``: ``load_size`` wide and ``load_size / aspect_ratio`` high (Cityscapes 512x256);
- ``scale_width_and_crop``: ``load_size`` wide keeping the photo's aspect ratio;
- ``none``: as on disk;

then a random crop to ``crop_size`` x ``crop_size / aspect_ratio`` and a horizontal flip
at load time (:mod:`gaugan.data.dataset`). Validation is stored at the test size,
``crop_size`` x ``crop_size / aspect_ratio`` (the official test-time resize).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gaugan.data.io import DataError
from gaugan.data.registry import DatasetSpec


def crop_shape(spec: DatasetSpec) -> tuple[int, int]:
    """(height, width) of a network input: the crop at training time, the whole item at test."""
    return spec.image_size


def train_shape(spec: DatasetSpec, width: int, height: int) -> tuple[int, int]:
    """(height, width) a training photo of ``width`` x ``height`` is stored at."""
    mode = spec.preprocess_mode
    if mode == "resize_and_crop":
        return spec.load_size, spec.load_size
    if mode == "fixed":
        return round(spec.load_size / spec.aspect_ratio), spec.load_size
    if mode == "scale_width_and_crop":
        return max(1, round(spec.load_size * height / width)), spec.load_size
    if mode == "none":
        return height, width
    raise DataError(f"data.preprocess_mode: unknown mode {mode!r}")


def nearest_resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """NEAREST resize by pixel centres (the sampling PIL's NEAREST uses); exact for any dtype."""
    height, width = array.shape[:2]
    if (height, width) == tuple(shape):
        return array
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * height / shape[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * width / shape[1]).astype(np.int64), width - 1)
    return array[rows[:, None], cols[None, :]]


def dense_instances(instance: np.ndarray, source: Path | str) -> np.ndarray:
    """Instance ids -> 0..k-1 as uint16 (the edges, all that is used, are unchanged)."""
    values, inverse = np.unique(instance, return_inverse=True)
    if len(values) > 65536:
        raise DataError(f"{source}: {len(values)} distinct instance ids; at most 65536 per image are supported")
    return inverse.reshape(instance.shape).astype(np.uint16)
