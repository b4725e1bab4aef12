"""The network input built from a label map: one-hot classes plus the instance edge map.

Paper section 3 / docs/SPADE.md section 3. Done on the device inside the step: a stored
one-hot map would be 151-184x larger than the index map it comes from.
"""

from __future__ import annotations

import torch
from torch import Tensor


def instance_edges(instance: Tensor) -> Tensor:
    """(B, H, W) instance ids -> (B, 1, H, W) float edge map.

    A pixel is an edge (1.0) where its id differs from its right or lower neighbour; both
    pixels of every horizontal and vertical change are marked (as the official code).
    """
    if instance.dim() != 3:
        raise ValueError(f"instance map must be (B, H, W), got shape {tuple(instance.shape)}")
    edge = torch.zeros_like(instance, dtype=torch.bool)
    horizontal = instance[:, :, 1:] != instance[:, :, :-1]
    vertical = instance[:, 1:, :] != instance[:, :-1, :]
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    return edge.unsqueeze(1).float()


def semantic_input(
    label: Tensor,
    num_label_values: int,
    instance: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(B, H, W) label indices (+ instance ids) -> (B, C, H, W) network input.

    ``C = num_label_values + (instance is not None)``. Indices must already be in
    ``[0, num_label_values)``: :func:`gaugan.data.io.map_labels` enforces it on data that
    comes from disk, and :func:`check_label_range` can be used on anything else.
    """
    if label.dim() != 3:
        raise ValueError(f"label map must be (B, H, W), got shape {tuple(label.shape)}")
    b, h, w = label.shape
    onehot = torch.zeros(b, num_label_values, h, w, device=label.device, dtype=dtype)
    onehot.scatter_(1, label.long().unsqueeze(1), 1.0)
    if instance is None:
        return onehot
    return torch.cat([onehot, instance_edges(instance).to(dtype)], dim=1)


def check_label_range(label: Tensor, num_label_values: int, source: str = "label map") -> None:
    """Raise a clear error (instead of a CUDA scatter assertion) for out-of-range indices."""
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= num_label_values:
        raise ValueError(
            f"{source}: label indices span {lo}..{hi} but the model expects 0..{num_label_values - 1}"
        )
