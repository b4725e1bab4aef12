"""Photo -> label map for the studio, through the dataset's segmenter (as NVIDIA's demo did).

:func:`load_dataset_segmenter` is the one place the studio reaches the segmenters: the
published one of paper section 4 where the dataset has one and its weights are on disk,
else the pipeline-trained one (docs/ARCHITECTURE.md "Evaluation"). Nothing is downloaded:
a server request should not start a multi-hundred-megabyte download.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from gaugan.data.registry import DatasetSpec
from gaugan.errors import UserError
from gaugan.segmenters.base import IGNORE_INDEX, Segmenter
from gaugan.segmenters.loading import load_segmenter_for, resolve_choice


class SegmenterUnavailable(UserError, RuntimeError):
    """No segmenter can be loaded for the model's dataset; the message says what is missing."""


def load_dataset_segmenter(
    spec: DatasetSpec, device: torch.device, weights_dir: str | os.PathLike, trained_path: str | os.PathLike
) -> Segmenter:
    """The segmenter for ``spec``'s dataset: published (weights under ``weights_dir``), else ours."""
    problems = []
    if resolve_choice("auto", spec.name) == "published":
        try:
            return load_segmenter_for(spec, "published", device, weights_dir=weights_dir)
        except UserError as err:
            problems.append(str(err))
    try:
        return load_segmenter_for(spec, "trained", device, trained_path=trained_path)
    except UserError as err:
        problems.append(str(err))
    raise SegmenterUnavailable(f"no segmenter for dataset {spec.name!r}: " + "; ".join(problems))


def stored_index_of_class(segmenter: Segmenter, spec: DatasetSpec, device: torch.device) -> torch.Tensor:
    """(num_classes,) table: the segmenter's class id -> the first stored label index that maps to it.

    Inverts the segmenter's own ``map_target``, so every segmenter's class mapping is used
    as defined; a class no stored index maps to becomes index 0.
    """
    stored = torch.arange(spec.num_label_values, device=device)
    classes = segmenter.map_target(stored.view(1, 1, -1)).view(-1)
    table = torch.zeros(segmenter.num_classes, dtype=torch.int64, device=device)
    for index in reversed(range(spec.num_label_values)):  # reversed: the first index wins
        if int(classes[index]) != IGNORE_INDEX:
            table[classes[index]] = index
    return table


@torch.no_grad()
def labels_from_photo(segmenter: Segmenter, spec: DatasetSpec, photo: Image.Image, device: torch.device) -> np.ndarray:
    """A photo -> label indices (H, W) at the network size (resized bicubic first, as training photos)."""
    height, width = spec.image_size
    resized = photo.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    batch = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).unsqueeze(0).to(device)
    classes = segmenter.predict(batch)[0]
    return stored_index_of_class(segmenter, spec, device)[classes].cpu().numpy()
