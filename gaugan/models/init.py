"""Weight initialisation as published (docs/SPADE.md section 1: ``init_type=xavier``, ``init_variance=0.02``).

Every convolution (plain and transposed) and linear layer gets ``xavier_normal`` weights
with gain 0.02 and zero biases; affine batch-norm weights (none in the published networks,
whose norms are parameter-free) get N(1, 0.02). For spectral-normed layers the learned
tensor is ``weight_orig``; the normalised ``weight`` is recomputed from it on every forward.
"""

from __future__ import annotations

from torch import nn

INIT_GAIN = 0.02


def init_weights(module: nn.Module, gain: float = INIT_GAIN) -> None:
    """Initialise every conv / linear / affine-norm layer below ``module`` in place."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            weight = getattr(layer, "weight_orig", None)
            if weight is None:
                weight = layer.weight
            nn.init.xavier_normal_(weight, gain=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.SyncBatchNorm)) and layer.affine:
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)
