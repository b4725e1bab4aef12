"""What every segmenter used for evaluation provides: preprocessing, prediction, class mapping.

Paper section 4 scores a synthesised image by segmenting it and comparing the prediction
with the label map it was generated from. A segmenter therefore bundles three things that
must never drift apart: the exact input preprocessing its weights were trained with, the
network, and the map from this project's stored label indices to the segmenter's own
class ids (with 255 for pixels that are not scored).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = 255  # target value of pixels that are left out of the scores


class Segmenter(nn.Module):
    """Base class: subclasses define :meth:`preprocess`, :meth:`logits` and :meth:`map_target`."""

    num_classes: int
    name: str

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 RGB (B, 3, H, W) -> the float input the network was trained on."""
        raise NotImplementedError

    def logits(self, inputs: Tensor) -> Tensor:
        """Preprocessed input -> (B, num_classes, h, w) class scores at any resolution."""
        raise NotImplementedError

    def map_target(self, labels: Tensor) -> Tensor:
        """Stored label indices (B, H, W) -> this segmenter's class ids, IGNORE_INDEX where unscored."""
        raise NotImplementedError

    def protocol(self) -> dict[str, Any]:
        """What is needed to interpret the numbers: weights, preprocessing, class mapping."""
        raise NotImplementedError

    def class_names(self) -> list[str]:
        return [str(index) for index in range(self.num_classes)]

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """uint8 RGB (B, 3, H, W) -> (B, H, W) int64 class ids at the images' resolution.

        Scores are upsampled bilinearly to the input size before the argmax, as all three
        published evaluation scripts do.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        height, width = images.shape[-2:]
        scores = self.logits(self.preprocess(images))
        if scores.shape[-2:] != (height, width):
            scores = F.interpolate(scores.float(), size=(height, width), mode="bilinear", align_corners=False)
        return scores.argmax(dim=1)


def lookup_table(mapping: dict[int, int], num_values: int, device: torch.device | None = None) -> Tensor:
    """A (num_values,) int64 table: ``table[k] = mapping.get(k, IGNORE_INDEX)``."""
    table = torch.full((num_values,), IGNORE_INDEX, dtype=torch.int64, device=device)
    for source, target in mapping.items():
        table[source] = target
    return table


def apply_table(labels: Tensor, table: Tensor) -> Tensor:
    """Map label indices through ``table``; indices outside it are an error, not a silent ignore."""
    labels = labels.long()
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= table.numel():
        raise ValueError(f"label indices span {low}..{high}; the class mapping covers 0..{table.numel() - 1}")
    return table.to(labels.device)[labels]
