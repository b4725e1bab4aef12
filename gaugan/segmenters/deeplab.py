"""DeepLab v2 ResNet-101 MSC (kazuto1011/deeplab-pytorch v1.0) for scoring COCO-Stuff syntheses.

Paper section 4 / docs/SPADE.md section 4: COCO-Stuff mIoU and accuracy come from
DeepLab v2 (Chen et al., TPAMI 2018) trained on COCO-Stuff 164k, the release file
``deeplabv2_resnet101_msc-cocostuff164k-100000.pth``. Its key layout, reproduced here so
the file loads with ``strict=True``:

- ``base``: the DeepLab v2 network inside the multi-scale wrapper (MSC).
- ``base.layer1``: stem, ``conv1`` = 7x7/2 conv + BN (+ ReLU), then a 3x3/2 max pool
  (padding 1, ceil mode). Every conv-BN unit is a ``conv`` / ``bn`` pair.
- ``base.layer2..5``: bottleneck stages of 3, 4, 23, 3 blocks named ``block1..``, with
  ``reduce`` (1x1, carries the stride), ``conv3x3`` (dilated), ``increase`` (1x1) and,
  in the first block of each stage, a projection ``shortcut``. Strides 1, 2, 1, 1 and
  dilations 1, 1, 2, 4: output stride 8.
- ``base.aspp.c0..c3``: four 3x3 convs (with bias) at dilations 6, 12, 18, 24 straight to
  the 182 classes, summed.

MSC at test time: logits at scales 1, 0.5 and 0.75 (bilinear input resize), the smaller
ones resized to the full-scale logits, pixel-wise max. Preprocessing as the release's
data loader: BGR channel order, 0..255 floats minus the mean (B 104.008, G 116.669,
R 122.675), no scaling. Classes: COCO-Stuff 0..181 as stored; our don't-care index 182
(raw 255) is not scored.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gaugan.segmenters.base import IGNORE_INDEX, Segmenter, lookup_table

WEIGHTS_URL = (
    "https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
    "deeplabv2_resnet101_msc-cocostuff164k-100000.pth"
)
NUM_CLASSES = 182
MEAN_BGR = (104.008, 116.669, 122.675)
RESNET101_BLOCKS = (3, 4, 23, 3)
ATROUS_RATES = (6, 12, 18, 24)
MSC_SCALES = (0.5, 0.75)


class ConvBN(nn.Sequential):
    """conv (no bias) -> BN (-> ReLU); the release names the parts ``conv`` and ``bn``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, relu: bool = True) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                                          bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_channels, eps=1e-5))
        if relu:
            self.add_module("relu", nn.ReLU())


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int, project: bool) -> None:
        super().__init__()
        middle = out_channels // 4
        self.reduce = ConvBN(in_channels, middle, 1, stride, 0, 1)
        self.conv3x3 = ConvBN(middle, middle, 3, 1, dilation, dilation)
        self.increase = ConvBN(middle, out_channels, 1, 1, 0, 1, relu=False)
        self.shortcut = ConvBN(in_channels, out_channels, 1, stride, 0, 1, relu=False) if project else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.increase(self.conv3x3(self.reduce(x)))
        return F.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResStage(nn.Sequential):
    def __init__(self, num_blocks: int, in_channels: int, out_channels: int, stride: int, dilation: int) -> None:
        super().__init__()
        for index in range(num_blocks):
            first = index == 0
            self.add_module(
                f"block{index + 1}",
                Bottleneck(in_channels if first else out_channels, out_channels, stride if first else 1, dilation,
                           project=first),
            )


class Stem(nn.Sequential):
    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.add_module("conv1", ConvBN(3, out_channels, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of DeepLab v2: parallel dilated 3x3 classifiers, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        for index, rate in enumerate(rates):
            self.add_module(f"c{index}", nn.Conv2d(in_channels, num_classes, 3, 1, padding=rate, dilation=rate,
                                                   bias=True))

    def forward(self, x: Tensor) -> Tensor:
        return sum(branch(x) for branch in self.children())


class DeepLabV2(nn.Sequential):
    def __init__(self, num_classes: int = NUM_CLASSES, blocks_per_stage: tuple[int, ...] = RESNET101_BLOCKS,
                 rates: tuple[int, ...] = ATROUS_RATES) -> None:
        super().__init__()
        self.add_module("layer1", Stem(64))
        self.add_module("layer2", ResStage(blocks_per_stage[0], 64, 256, 1, 1))
        self.add_module("layer3", ResStage(blocks_per_stage[1], 256, 512, 2, 1))
        self.add_module("layer4", ResStage(blocks_per_stage[2], 512, 1024, 1, 2))
        self.add_module("layer5", ResStage(blocks_per_stage[3], 1024, 2048, 1, 4))
        self.add_module("aspp", ASPP(2048, num_classes, rates))


class MultiScale(nn.Module):
    """MSC: logits at full and reduced input scales, resized to the full-scale logits, max-fused."""

    def __init__(self, base: nn.Module, scales: tuple[float, ...] = MSC_SCALES) -> None:
        super().__init__()
        self.base = base
        self.scales = scales

    def forward(self, x: Tensor) -> Tensor:
        logits = self.base(x)
        size = logits.shape[-2:]
        fused = [logits]
        for scale in self.scales:
            scaled = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            fused.append(F.interpolate(self.base(scaled), size=size, mode="bilinear", align_corners=False))
        return torch.stack(fused).max(dim=0).values


def cocostuff_target_table(num_stored_values: int = NUM_CLASSES + 1) -> Tensor:
    """Stored COCO-Stuff index 0..181 -> the same class; the don't-care index 182 unscored."""
    return lookup_table({k: k for k in range(NUM_CLASSES)}, num_stored_values)


class DeepLabV2COCOStuff(Segmenter):
    name = "deeplabv2_resnet101_msc_cocostuff164k"
    num_classes = NUM_CLASSES

    def __init__(self, blocks_per_stage: tuple[int, ...] = RESNET101_BLOCKS) -> None:
        super().__init__(cocostuff_target_table())
        self.network = MultiScale(DeepLabV2(NUM_CLASSES, blocks_per_stage))
        self.register_buffer("mean_bgr", torch.tensor(MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        bgr = images.to(self.mean_bgr.device).flip(1).float()  # RGB -> BGR, as the release reads with OpenCV
        return bgr - self.mean_bgr

    def logits(self, inputs: Tensor) -> Tensor:
        return self.network(inputs)

    def protocol(self) -> dict[str, Any]:
        return {
            "segmenter": "DeepLab v2 ResNet-101 MSC (kazuto1011/deeplab-pytorch v1.0, cocostuff164k, 100k iterations)",
            "weights": [WEIGHTS_URL],
            "preprocessing": "BGR, 0..255 minus mean (104.008, 116.669, 122.675); MSC scales 1, 0.5, 0.75 "
                             "max-fused; no CRF; scores upsampled bilinearly to the label size",
            "class_mapping": "stored COCO-Stuff index k in 0..181 -> class k; don't-care (raw 255, index 182) ignored",
            "num_classes": NUM_CLASSES,
            "ignore_index": IGNORE_INDEX,
        }
