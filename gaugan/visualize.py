"""Sample grids shown to people: rows of (coloured label map | generated | real).

One implementation for the training samples and the generation grid, so both read alike.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, 3, H, W) on the CPU, rounded as saved PNGs are."""
    return images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()


def sample_grid(labels: Tensor, generated: Tensor, real: Tensor, palette: np.ndarray) -> Image.Image:
    """Rows of (coloured label map | generated | real) from uint8 images and label indices.

    ``palette`` is the (num_label_values, 3) uint8 colour of every stored index: the store's
    own (``gaugan.data.classes.class_table``), so a classes file's colours appear here too.
    """
    colour = palette[labels.long().cpu().numpy()]  # (B, H, W, 3)
    rows = [
        np.concatenate([c, g.permute(1, 2, 0).numpy(), r.permute(1, 2, 0).numpy()], axis=1)
        for c, g, r in zip(colour, generated.cpu(), real.cpu())
    ]
    return Image.fromarray(np.concatenate(rows, axis=0))
