"""The OASIS discriminator: a semantic segmentation network with one extra "fake" class.

Sushko et al., "You Only Need Adversarial Supervision for Semantic Image Synthesis" (ICLR
2021), section 3.1; docs/OASIS.md section 1. D sees the image alone (not the label map) and
classifies every pixel into the N semantic classes of the label map or into "fake"; its
logits are (B, 1 + N, H, W) with the fake class at index 0 and class c at index c + 1
(the N+1 loss is in :mod:`gaugan.losses`).

An encoder-decoder (U-Net) of residual blocks: six down blocks (each ending in a 2x2 average
pooling) and six up blocks (each starting with a nearest x2 upsampling), every up block after
the first taking the matching down block's output concatenated in front of its input, then a
1x1 convolution to the 1 + N logits. Widths: ``ndf`` x (2, 2, 4, 4, 8, 8) down, back up to
``ndf``; at the published ndf 64: 128, 128, 256, 256, 512, 512 and 64.
``discriminator.num_res_blocks`` < 6 keeps the first blocks of each path (small images). Every 3x3 convolution
and every learned (1x1) shortcut carries spectral norm; no normalisation layers; LeakyReLU(0.2)
before each convolution but the very first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gaugan.config import ConfigError, DiscriminatorConfig
from gaugan.models.init import init_weights
from gaugan.models.layers import maybe_spectral_norm

IMAGE_CHANNELS = 3
# Down-block widths in units of ndf (the published six); the up path mirrors them and ends at 1 x ndf.
DOWN_WIDTHS = (2, 2, 4, 4, 8, 8)


# --------------------------------------------------------------------------------------
# Blocks.


class _ResidualConvs(nn.Module):
    """A residual block's convolutions: two 3x3 (``conv_0``, ``conv_1``) and, where the width
    changes, a 1x1 learned shortcut (``conv_s``); the subclasses say where the resampling goes."""

    def __init__(self, in_channels: int, out_channels: int, use_spectral_norm: bool) -> None:
        super().__init__()
        self.conv_0 = maybe_spectral_norm(nn.Conv2d(in_channels, out_channels, 3, padding=1), use_spectral_norm)
        self.conv_1 = maybe_spectral_norm(nn.Conv2d(out_channels, out_channels, 3, padding=1), use_spectral_norm)
        self.conv_s = None
        if in_channels != out_channels:
            self.conv_s = maybe_spectral_norm(nn.Conv2d(in_channels, out_channels, 1), use_spectral_norm)


class DownBlock(_ResidualConvs):
    """``x -> avgpool(conv(lrelu(conv(lrelu(x))))) + shortcut(x)``, halving the size.

    The first block of the network has no activation in front of its first convolution and
    pools its input before the shortcut convolution; the others convolve the shortcut first
    and pool after (as published: the same function, cheaper where the channels grow).
    """

    def __init__(self, in_channels: int, out_channels: int, use_spectral_norm: bool, first: bool) -> None:
        super().__init__(in_channels, out_channels, use_spectral_norm)
        self.first = first

    def forward(self, x: Tensor) -> Tensor:
        if self.first:
            shortcut = F.avg_pool2d(x, 2)
            if self.conv_s is not None:
                shortcut = self.conv_s(shortcut)
            dx = self.conv_0(x)
        else:
            shortcut = F.avg_pool2d(self.conv_s(x), 2) if self.conv_s is not None else F.avg_pool2d(x, 2)
            dx = self.conv_0(F.leaky_relu(x, 0.2))
        dx = self.conv_1(F.leaky_relu(dx, 0.2))
        return shortcut + F.avg_pool2d(dx, 2)


class UpBlock(_ResidualConvs):
    """``x -> conv(lrelu(conv(up(lrelu(x))))) + shortcut(up(x))``, doubling the size."""

    def forward(self, x: Tensor) -> Tensor:
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        shortcut = self.conv_s(up) if self.conv_s is not None else up
        # LeakyReLU and nearest upsampling commute: one activation pass at the lower resolution.
        dx = self.conv_0(F.interpolate(F.leaky_relu(x, 0.2), scale_factor=2, mode="nearest"))
        dx = self.conv_1(F.leaky_relu(dx, 0.2))
        return shortcut + dx


# --------------------------------------------------------------------------------------
# Network.


class OASISDiscriminator(nn.Module):
    """``D(image) -> (B, 1 + num_classes, H, W)`` logits: index 0 "fake", index c + 1 class c.

    ``num_classes`` is the label map's N (classes + don't-care; the instance edge channel is
    not a class). The image's sides must be multiples of ``2**num_res_blocks`` (64 as published).
    """

    def __init__(self, cfg: DiscriminatorConfig, num_classes: int) -> None:
        super().__init__()
        if not 1 <= cfg.num_res_blocks <= len(DOWN_WIDTHS):
            raise ConfigError(f"discriminator.num_res_blocks: got {cfg.num_res_blocks}, expected 1 to {len(DOWN_WIDTHS)}")
        sn = cfg.use_spectral_norm
        widths = [cfg.ndf * w for w in DOWN_WIDTHS[:cfg.num_res_blocks]]
        ins = [IMAGE_CHANNELS] + widths[:-1]
        self.body_down = nn.ModuleList(
            DownBlock(fin, fout, sn, first=index == 0) for index, (fin, fout) in enumerate(zip(ins, widths))
        )
        # Up: the bottom block keeps the deepest width; each later one takes [skip, x].
        outs = widths[::-1][1:] + [cfg.ndf]  # 8, 4, 4, 2, 2, 1 (x ndf)
        up_ins = [widths[-1]] + [skip + previous for skip, previous in zip(widths[::-1][1:], outs[:-1])]
        self.body_up = nn.ModuleList(UpBlock(fin, fout, sn) for fin, fout in zip(up_ins, outs))
        self.layer_up_last = nn.Conv2d(cfg.ndf, 1 + num_classes, 1)
        self.num_classes = num_classes
        init_weights(self)

    def check_image_size(self, height: int, width: int) -> None:
        """Six (``num_res_blocks``) halvings and back: the sides must be multiples of ``2**n``."""
        factor = 2 ** len(self.body_down)
        if height % factor or width % factor:
            raise ConfigError(
                f"discriminator.arch 'oasis' with discriminator.num_res_blocks={len(self.body_down)} needs image sides "
                f"that are multiples of {factor}, got {height}x{width}; lower discriminator.num_res_blocks or change "
                f"data.crop_size / data.aspect_ratio"
            )

    def forward(self, image: Tensor) -> Tensor:
        self.check_image_size(*image.shape[-2:])
        skips = []
        x = image
        for block in self.body_down:
            x = block(x)
            skips.append(x)
        x = self.body_up[0](x)
        for block, skip in zip(self.body_up[1:], reversed(skips[:-1])):
            x = block(torch.cat([skip, x], dim=1))
        return self.layer_up_last(x)
