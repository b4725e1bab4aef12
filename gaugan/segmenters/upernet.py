"""UperNet-101 (CSAIL semantic-segmentation-pytorch) for scoring ADE20K syntheses.

Paper section 4 / docs/SPADE.md section 4: ADE20K mIoU and accuracy are measured with the
CSAIL scene-parsing model "ade20k-resnet101-upernet" (Xiao et al., ECCV 2018). Its
weights come as two files, ``encoder_epoch_50.pth`` and ``decoder_epoch_50.pth``, whose
key layout this module reproduces so that both load with ``strict=True``:

- encoder: a ResNet-101 with the "deep stem" (three 3x3 convs, 64-64-128 channels, the
  first with stride 2, then a 3x3/2 max pool), bottlenecks with the stride on the 3x3
  conv, layers of 3, 4, 23, 3 blocks; the four stage outputs (256, 512, 1024, 2048 ch.)
  feed the decoder. No dilation.
- decoder ("upernet", fpn_dim 512): a pyramid pooling module on the last stage (scales
  1, 2, 3, 6; pooled maps resized back, then 1x1 conv + BN + ReLU to 512 each; concat with
  the input and a 3x3 conv to 512), a feature pyramid (1x1 lateral convs, top-down sum,
  3x3 output convs), all levels resized to the finest and fused by a 3x3 conv, then a 1x1
  classifier over 150 classes. Every conv before a BN has no bias.

Preprocessing as in CSAIL's test code: RGB / 255, ImageNet mean/std; sizes rounded up to
a multiple of 32 (their ``padding_constant``) by resizing. Classes: CSAIL's class ``c``
(0..149) is ADE20K class ``c + 1``; our stored ADE20K index 0 ("other") is not scored.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gaugan.segmenters.base import IGNORE_INDEX, Bottleneck, Segmenter, lookup_table

WEIGHTS_URL = "https://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/{part}_epoch_50.pth"
NUM_CLASSES = 150
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE_MULTIPLE = 32
RESNET101_BLOCKS = (3, 4, 23, 3)
POOL_SCALES = (1, 2, 3, 6)
FPN_DIM = 512


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DeepStemResNet(nn.Module):
    """ResNet-101 with the three-conv stem; returns the outputs of the four stages."""

    def __init__(self, blocks_per_stage: tuple[int, ...] = RESNET101_BLOCKS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 128
        stages = []
        for index, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(Bottleneck(in_channels, planes, stride if block_index == 0 else 1))
                in_channels = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features


class UPerNetDecoder(nn.Module):
    """Pyramid pooling on the top stage + a feature pyramid over all four, fused at 1/4 size."""

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        in_channels: tuple[int, ...] = (256, 512, 1024, 2048),
        fpn_dim: int = FPN_DIM,
        pool_scales: tuple[int, ...] = POOL_SCALES,
    ) -> None:
        super().__init__()
        top = in_channels[-1]
        self.ppm_pooling = nn.ModuleList(nn.AdaptiveAvgPool2d(scale) for scale in pool_scales)
        self.ppm_conv = nn.ModuleList(conv_bn_relu(top, 512, 1) for _ in pool_scales)
        self.ppm_last_conv = conv_bn_relu(top + len(pool_scales) * 512, fpn_dim, 3)
        self.fpn_in = nn.ModuleList(conv_bn_relu(channels, fpn_dim, 1) for channels in in_channels[:-1])
        self.fpn_out = nn.ModuleList(nn.Sequential(conv_bn_relu(fpn_dim, fpn_dim, 3)) for _ in in_channels[:-1])
        self.conv_last = nn.Sequential(
            conv_bn_relu(len(in_channels) * fpn_dim, fpn_dim, 3),
            nn.Conv2d(fpn_dim, num_classes, 1),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        top = features[-1]
        size = top.shape[-2:]
        # The published model resizes each pooled map back before its 1x1 conv.
        pooled = [
            conv(F.interpolate(pool(top), size=size, mode="bilinear", align_corners=False))
            for pool, conv in zip(self.ppm_pooling, self.ppm_conv)
        ]
        f = self.ppm_last_conv(torch.cat([top, *pooled], dim=1))
        pyramid = [f]
        for level in reversed(range(len(features) - 1)):
            lateral = self.fpn_in[level](features[level])
            f = lateral + F.interpolate(f, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            pyramid.append(self.fpn_out[level](f))
        pyramid.reverse()  # finest first
        finest = pyramid[0].shape[-2:]
        fused = [pyramid[0]] + [
            F.interpolate(level, size=finest, mode="bilinear", align_corners=False) for level in pyramid[1:]
        ]
        return self.conv_last(torch.cat(fused, dim=1))


def ade20k_target_table(num_stored_values: int = NUM_CLASSES + 1) -> Tensor:
    """Stored ADE20K index ``k`` (0 = "other", 1..150 = classes) -> CSAIL class ``k - 1``; 0 unscored."""
    return lookup_table({k: k - 1 for k in range(1, NUM_CLASSES + 1)}, num_stored_values)


class UperNet101(Segmenter):
    """The CSAIL ADE20K scene parser ("resnet101" encoder + "upernet" decoder)."""

    name = "upernet101_ade20k"
    num_classes = NUM_CLASSES

    def __init__(self, blocks_per_stage: tuple[int, ...] = RESNET101_BLOCKS) -> None:
        super().__init__(ade20k_target_table())
        self.encoder = DeepStemResNet(blocks_per_stage)
        self.decoder = UPerNetDecoder()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        x = (images.to(self.mean.device).float() / 255.0 - self.mean) / self.std
        height, width = x.shape[-2:]
        target = (-(-height // SIZE_MULTIPLE) * SIZE_MULTIPLE, -(-width // SIZE_MULTIPLE) * SIZE_MULTIPLE)
        if target != (height, width):
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        return x

    def logits(self, inputs: Tensor) -> Tensor:
        return self.decoder(self.encoder(inputs))

    def protocol(self) -> dict[str, Any]:
        return {
            "segmenter": "UperNet-101 (CSAIL semantic-segmentation-pytorch, ade20k-resnet101-upernet, epoch 50)",
            "weights": [WEIGHTS_URL.format(part=part) for part in ("encoder", "decoder")],
            "preprocessing": "RGB/255, ImageNet mean/std; sides rounded up to a multiple of 32 (bilinear); "
                             "single scale; scores upsampled bilinearly to the label size",
            "class_mapping": "stored ADE20K index k in 1..150 -> segmenter class k-1; index 0 ('other') ignored",
            "num_classes": NUM_CLASSES,
            "ignore_index": IGNORE_INDEX,
        }
