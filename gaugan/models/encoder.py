"""The VAE style encoder (paper section 3.3 "Multi-modal synthesis", appendix B; docs/SPADE.md section 1).

``E(image) -> (mu, logvar)``: six stride-2 3x3 convolutions with spectral norm and instance
norm on a 256x256 input (other sizes are resized bilinearly first, as published), then two
linear heads on the flattened 4x4 map. Names ``layer1..layer6``, ``fc_mu``, ``fc_var`` are
the official ones.

The official code builds ``layer6`` only for crop sizes >= 256 yet always resizes the input
to 256, so below 256 its flattened size no longer fits ``fc_mu`` and it fails; the input
here is always 256x256, hence ``layer6`` always exists (identical to the official network
wherever that one runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gaugan.config import EncoderConfig
from gaugan.models.init import init_weights
from gaugan.models.layers import conv_norm

INPUT_SIZE = 256
FINAL_SIZE = 4  # 256 / 2**6


class ConvEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        nef = cfg.nef
        widths = [3, nef, 2 * nef, 4 * nef, 8 * nef, 8 * nef, 8 * nef]
        for n in range(1, 7):
            conv = nn.Conv2d(widths[n - 1], widths[n], 3, stride=2, padding=1)
            self.add_module(f"layer{n}", conv_norm(conv, cfg.use_spectral_norm, "instance"))
        self.fc_mu = nn.Linear(8 * nef * FINAL_SIZE * FINAL_SIZE, cfg.z_dim)
        self.fc_var = nn.Linear(8 * nef * FINAL_SIZE * FINAL_SIZE, cfg.z_dim)
        init_weights(self)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        if image.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            image = F.interpolate(image, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.layer1(image)
        for n in range(2, 7):
            x = getattr(self, f"layer{n}")(F.leaky_relu(x, 0.2))
        x = F.leaky_relu(x, 0.2).flatten(1)
        return self.fc_mu(x), self.fc_var(x)


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + eps * exp(logvar / 2), eps ~ N(0, 1) (optionally from a seeded generator)."""
    std = torch.exp(0.5 * logvar)
    eps = torch.randn(std.shape, device=std.device, dtype=std.dtype, generator=generator)
    return mu + eps * std
