"""What every segmenter used for evaluation provides: preprocessing, prediction, class mapping.

Paper section 4 scores a synthesised image by segmenting it and comparing the prediction
with the label map it was generated from. A segmenter therefore bundles three things that
must never drift apart: the exact input preprocessing its weights were trained with, the
network, and the map from this project's stored label indices to the segmenter's own
class ids (with 255 for pixels that are not scored).
"""

from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gaugan.data.registry import DatasetSpec

IGNORE_INDEX = 255  # target value of pixels that are left out of the scores


class Segmenter(nn.Module, abc.ABC):
    """Base class: subclasses define :meth:`preprocess`, :meth:`logits` and :meth:`protocol`
    (abstract, so a subclass missing one cannot be instantiated) and pass their class
    mapping, a :func:`lookup_table` from stored label indices to their class ids, to
    ``__init__``."""

    num_classes: int
    name: str
    names: list[str] | None = None  # class names in the segmenter's class space, when known

    def __init__(self, target_table: Tensor) -> None:
        super().__init__()
        self.register_buffer("target_table", target_table, persistent=False)

    @abc.abstractmethod
    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 RGB (B, 3, H, W) -> the float input the network was trained on."""

    @abc.abstractmethod
    def logits(self, inputs: Tensor) -> Tensor:
        """Preprocessed input -> (B, num_classes, h, w) class scores at any resolution."""

    def map_target(self, labels: Tensor) -> Tensor:
        """Stored label indices (B, H, W) -> this segmenter's class ids, IGNORE_INDEX where unscored."""
        return apply_table(labels, self.target_table)

    @abc.abstractmethod
    def protocol(self) -> dict[str, Any]:
        """What is needed to interpret the numbers: weights, preprocessing, class mapping."""

    def class_names(self) -> list[str]:
        return list(self.names) if self.names is not None else [str(index) for index in range(self.num_classes)]

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


def stored_target_table(spec: DatasetSpec) -> Tensor:
    """Segmenters trained on the dataset's own labels: stored index k -> class k for the
    ``label_nc`` classes, the don't-care index unscored."""
    return lookup_table({k: k for k in range(spec.label_nc)}, spec.num_label_values)


def apply_table(labels: Tensor, table: Tensor) -> Tensor:
    """Map label indices through ``table``; indices outside it are an error, not a silent ignore."""
    labels = labels.long()
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= table.numel():
        raise ValueError(f"label indices span {low}..{high}; the class mapping covers 0..{table.numel() - 1}")
    return table.to(labels.device)[labels]


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (stride, dilation), 1x1 expand x4; projection shortcut when needed.

    Shared by UperNet's ResNet-101 encoder (dilation 1) and DRN-D-105; the submodule names
    (conv1..3, bn1..3, downsample.0/1) are those of the published weight files.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, dilation: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)
