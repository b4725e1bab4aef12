"""The multi-scale PatchGAN discriminator (paper section 4 "Multi-scale discriminator"; pix2pixHD).

docs/SPADE.md section 1: ``num_discriminators`` N-layer PatchGANs, the second one on the
input average-pooled by 2, each returning every intermediate feature (for the feature
matching loss) and its final patch map. Layer names ``discriminator_<k>.model<n>`` and the
nesting ``model1.0.0`` (conv inside the norm wrapper inside the layer) are the official
ones, so the authors' ``latest_net_D.pth`` loads unchanged.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from gaugan.config import DiscriminatorConfig
from gaugan.models.init import init_weights
from gaugan.models.layers import conv_norm

KERNEL_SIZE = 4
PADDING = math.ceil((KERNEL_SIZE - 1) / 2)  # 2: each layer grows the map by one pixel
MAX_CHANNELS = 512


class NLayerDiscriminator(nn.Module):
    """One PatchGAN: ``model0`` .. ``model<num_layers>``.

    ``model0``: conv stride 2 (plain, with bias) + LeakyReLU(0.2); ``model1`` ..
    ``model<num_layers-1>``: conv (stride 2, the last one stride 1) with spectral norm and
    instance norm + LeakyReLU; ``model<num_layers>``: conv to one channel, stride 1, plain.
    Channels start at ``ndf`` and double per layer, capped at 512.
    """

    def __init__(self, cfg: DiscriminatorConfig, input_channels: int) -> None:
        super().__init__()
        channels = cfg.ndf
        layers: list[list[nn.Module]] = [
            [nn.Conv2d(input_channels, channels, KERNEL_SIZE, stride=2, padding=PADDING), nn.LeakyReLU(0.2)]
        ]
        for n in range(1, cfg.num_layers):
            previous, channels = channels, min(channels * 2, MAX_CHANNELS)
            stride = 1 if n == cfg.num_layers - 1 else 2
            conv = nn.Conv2d(previous, channels, KERNEL_SIZE, stride=stride, padding=PADDING)
            layers.append([conv_norm(conv, cfg.use_spectral_norm, cfg.norm), nn.LeakyReLU(0.2)])
        layers.append([nn.Conv2d(channels, 1, KERNEL_SIZE, stride=1, padding=PADDING)])
        self.num_layers = len(layers)
        for n, layer in enumerate(layers):
            self.add_module(f"model{n}", nn.Sequential(*layer))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for n in range(self.num_layers):
            x = getattr(self, f"model{n}")(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """``D(x) -> list[list[Tensor]]``: per scale, every intermediate feature then the final map.

    ``x`` is ``cat(one-hot label map (+ edge channel), image)``; ``input_channels`` is
    therefore ``label_channels + 3``. Scale k sees the input average-pooled k times
    (3x3, stride 2, padding 1, padding excluded from the average).
    """

    def __init__(self, cfg: DiscriminatorConfig, input_channels: int) -> None:
        super().__init__()
        self.num_discriminators = cfg.num_discriminators
        for k in range(cfg.num_discriminators):
            self.add_module(f"discriminator_{k}", NLayerDiscriminator(cfg, input_channels))
        init_weights(self)

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        outputs = []
        for k in range(self.num_discriminators):
            if k > 0:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            outputs.append(getattr(self, f"discriminator_{k}")(x))
        return outputs


def split_discriminator_output(
    outputs: list[list[Tensor]], num_first: int
) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """Split D's output on ``cat([fake, real])`` (one batch, as published) into (fake, real) parts."""
    first = [[feature[:num_first] for feature in scale] for scale in outputs]
    second = [[feature[num_first:] for feature in scale] for scale in outputs]
    return first, second
