"""DRN-D-105 (fyu/drn) for scoring Cityscapes syntheses on the 19 train ids.

Paper section 4 / docs/SPADE.md section 4: Cityscapes mIoU and accuracy come from the
dilated residual network DRN-D-105 (Yu et al., CVPR 2017) trained on Cityscapes fine
annotations. No public URL serves its weights: the user supplies the file. The key layout
of fyu/drn's ``DRNSeg`` is reproduced so that it loads with ``strict=True``:

- ``base.0..8``: the DRN-D-105 trunk without its classifier. ``base.0`` = 7x7 conv (16)
  + BN + ReLU; ``base.1`` and ``base.2`` = 3x3 conv + BN + ReLU (16, then 32 with stride
  2); ``base.3..6`` = bottleneck stages (planes 64, 128, 256, 512; 3, 4, 23, 3 blocks;
  strides 2, 2, 1, 1; dilations 1, 1, 2, 4; stride on the 3x3 conv; projection shortcut
  ``downsample`` in the first block); ``base.7`` and ``base.8`` = 3x3 conv + BN + ReLU
  to 512 at dilation 2 and 1 (no residual). Output stride 8, 512 channels.
- ``seg``: 1x1 conv to 19 classes (with bias).
- ``up``: a fixed bilinear 16x16 transposed conv (stride 8, padding 4, one group per
  class, no bias) back to the input size.

Preprocessing as fyu/drn's test: RGB / 255, then the Cityscapes training mean/std of its
``info.json``. Classes: stored Cityscapes label ids (0..33) -> train ids (0..18) with the
official table; every other id is not scored.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gaugan.segmenters.base import IGNORE_INDEX, Bottleneck, Segmenter, lookup_table

NUM_CLASSES = 19
# fyu/drn datasets/cityscapes/info.json
CITYSCAPES_MEAN = (0.290101, 0.328081, 0.286964)
CITYSCAPES_STD = (0.182954, 0.186566, 0.184475)
DRN_D_105_BLOCKS = (1, 1, 3, 4, 23, 3, 1, 1)
DRN_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)

# Cityscapes labelId -> trainId (cityscapesScripts labels.py); other ids are not evaluated.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
TRAIN_ID_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)


def conv_layers(in_channels: int, out_channels: int, num_convs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """DRN-D's plain stages: (3x3 conv, BN, ReLU) x num_convs, stride on the first."""
    modules: list[nn.Module] = []
    for index in range(num_convs):
        modules += [
            nn.Conv2d(in_channels, out_channels, 3, stride=stride if index == 0 else 1, padding=dilation,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    return nn.Sequential(*modules)


def bottleneck_stage(in_channels: int, planes: int, num_blocks: int, stride: int, dilation: int) -> nn.Sequential:
    # DRN's first block of a dilated stage that continues the previous level uses the
    # stage dilation in its 3x3 conv already (its "new_level=False"), so all blocks match.
    blocks = []
    for index in range(num_blocks):
        blocks.append(Bottleneck(in_channels, planes, stride if index == 0 else 1, dilation))
        in_channels = planes * Bottleneck.expansion
    return nn.Sequential(*blocks)


def drn_d_105_trunk(blocks: tuple[int, ...] = DRN_D_105_BLOCKS, channels: tuple[int, ...] = DRN_CHANNELS) -> nn.Sequential:
    """layer0..layer8 of DRN-D-105, in the order DRNSeg keeps them (``base.0..8``)."""
    layer0 = nn.Sequential(nn.Conv2d(3, channels[0], 7, padding=3, bias=False), nn.BatchNorm2d(channels[0]),
                           nn.ReLU(inplace=True))
    layer1 = conv_layers(channels[0], channels[0], blocks[0])
    layer2 = conv_layers(channels[0], channels[1], blocks[1], stride=2)
    layer3 = bottleneck_stage(channels[1], channels[2], blocks[2], stride=2, dilation=1)
    layer4 = bottleneck_stage(channels[2] * 4, channels[3], blocks[3], stride=2, dilation=1)
    layer5 = bottleneck_stage(channels[3] * 4, channels[4], blocks[4], stride=1, dilation=2)
    layer6 = bottleneck_stage(channels[4] * 4, channels[5], blocks[5], stride=1, dilation=4)
    layer7 = conv_layers(channels[5] * 4, channels[6], blocks[6], dilation=2)
    layer8 = conv_layers(channels[6], channels[7], blocks[7], dilation=1)
    return nn.Sequential(layer0, layer1, layer2, layer3, layer4, layer5, layer6, layer7, layer8)


def bilinear_upsampling_kernel(channels: int, kernel_size: int) -> Tensor:
    """The fixed (channels, 1, k, k) bilinear kernel fyu/drn writes into its ``up`` layer."""
    factor = math.ceil(kernel_size / 2)
    center = (2 * factor - 1 - factor % 2) / (2.0 * factor)
    coords = torch.arange(kernel_size, dtype=torch.float64)
    profile = 1 - (coords / factor - center).abs()
    kernel = (profile[:, None] * profile[None, :]).float()
    return kernel.expand(channels, 1, kernel_size, kernel_size).clone()


class DRNSegmentation(nn.Module):
    """fyu/drn ``DRNSeg`` with ``base`` / ``seg`` / ``up``; returns full-size class scores."""

    def __init__(self, num_classes: int = NUM_CLASSES, blocks: tuple[int, ...] = DRN_D_105_BLOCKS) -> None:
        super().__init__()
        self.base = drn_d_105_trunk(blocks)
        self.seg = nn.Conv2d(DRN_CHANNELS[-1], num_classes, 1, bias=True)
        self.up = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4, groups=num_classes, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(bilinear_upsampling_kernel(num_classes, 16))
        self.up.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.seg(self.base(x)))


def cityscapes_target_table(num_stored_values: int = 35) -> Tensor:
    """Stored Cityscapes label id (0..34) -> train id 0..18; all other ids unscored."""
    return lookup_table(LABEL_ID_TO_TRAIN_ID, num_stored_values)


class DRND105Cityscapes(Segmenter):
    name = "drn_d_105_cityscapes"
    num_classes = NUM_CLASSES

    def __init__(self, blocks: tuple[int, ...] = DRN_D_105_BLOCKS) -> None:
        super().__init__(cityscapes_target_table())
        self.network = DRNSegmentation(NUM_CLASSES, blocks)
        self.register_buffer("mean", torch.tensor(CITYSCAPES_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CITYSCAPES_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        return (images.to(self.mean.device).float() / 255.0 - self.mean) / self.std

    def logits(self, inputs: Tensor) -> Tensor:
        return self.network(inputs)

    def class_names(self) -> list[str]:
        return list(TRAIN_ID_NAMES)

    def protocol(self) -> dict[str, Any]:
        return {
            "segmenter": "DRN-D-105 (fyu/drn DRNSeg, Cityscapes fine, 19 train ids)",
            "weights": ["supplied by the user (no public URL)"],
            "preprocessing": "RGB/255, Cityscapes mean (0.290101, 0.328081, 0.286964) / std (0.182954, 0.186566, "
                             "0.184475); single scale; fixed bilinear x8 upsampling (resized to the label size "
                             "when not a multiple of 8)",
            "class_mapping": "stored Cityscapes labelId -> trainId (7,8,11,12,13,17,19,20,21,22,23,24,25,26,27,28,"
                             "31,32,33 -> 0..18); every other id ignored",
            "num_classes": NUM_CLASSES,
            "ignore_index": IGNORE_INDEX,
        }
