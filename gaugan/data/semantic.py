"""The network input built from a label map: one-hot classes plus the instance edge map.

Paper section 3 / docs/SPADE.md section 3. Done on the device inside the step: a stored
one-hot map would be 151-184x larger than the index map it comes from.

:class:`SemanticLabels` is the same input kept as class indices and a boolean edge map:
layers that convolve the one-hot map can compute that convolution as a lookup of weight
columns (:mod:`gaugan.models.onehot_conv`), and a generator given it never builds the
one-hot map at its many resolutions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gaugan.errors import UserError


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
    comes from disk, the training step checks every batch (:func:`check_label_range`).
    """
    if label.dim() != 3:
        raise ValueError(f"label map must be (B, H, W), got shape {tuple(label.shape)}")
    edge = instance_edges(instance)[:, 0].bool() if instance is not None else None
    return _onehot(label, edge, num_label_values, dtype)


def _onehot(label: Tensor, edge: Tensor | None, num_label_values: int, dtype: torch.dtype) -> Tensor:
    b, h, w = label.shape
    onehot = torch.zeros(b, num_label_values, h, w, device=label.device, dtype=dtype)
    onehot.scatter_(1, label.long().unsqueeze(1), 1.0)
    if edge is None:
        return onehot
    return torch.cat([onehot, edge.unsqueeze(1).to(dtype)], dim=1)


@dataclasses.dataclass(frozen=True, eq=False)
class SemanticLabels:
    """The network input as class indices and edges: what :func:`semantic_input` one-hot encodes.

    ``index`` (B, H, W) int64 in ``[0, num_label_values)``; ``edge`` (B, H, W) bool instance
    edges or None. :meth:`dense` gives the one-hot map (+ edge channel) itself, built once:
    ``onehot`` holds it when the caller has already built it at this size (D's input).
    """

    index: Tensor
    edge: Tensor | None
    num_label_values: int
    onehot: Tensor | None = None

    @property
    def num_channels(self) -> int:
        """Channels of the one-hot map: classes plus the edge channel."""
        return self.num_label_values + (self.edge is not None)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.index.shape[-2]), int(self.index.shape[-1])

    def dense(self, dtype: torch.dtype | None = None) -> Tensor:
        """The (B, C, H, W) one-hot map (+ edge channel), as :func:`semantic_input` builds it.

        In ``dtype``; by default the dtype of the map already built, else fp32.
        """
        if self.onehot is not None:
            return self.onehot if dtype is None else self.onehot.to(dtype)
        return _onehot(self.index, self.edge, self.num_label_values, dtype or torch.float32)

    def resized(self, size: Sequence[int]) -> SemanticLabels:
        """Nearest-neighbour resize, picking the same pixels as ``F.interpolate`` on the one-hot map.

        Indices and edges go through that same interpolation as floats (exact for integers
        below 2**24), so ``resized(s).dense()`` equals ``interpolate(dense(), s, "nearest")``.
        """
        if self.size == tuple(size):
            return self
        planes = [self.index.float()] + ([self.edge.float()] if self.edge is not None else [])
        resized = F.interpolate(torch.stack(planes, dim=1), size=tuple(size), mode="nearest")
        edge = resized[:, 1] > 0.5 if self.edge is not None else None
        return SemanticLabels(resized[:, 0].long(), edge, self.num_label_values)


def semantic_labels(
    label: Tensor,
    num_label_values: int,
    instance: Tensor | None = None,
    with_onehot: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> SemanticLabels:
    """(B, H, W) label indices (+ instance ids) -> :class:`SemanticLabels` on their device.

    ``with_onehot`` also builds the fp32 one-hot map once (in ``memory_format``), for the
    layers that take it dense.
    """
    if label.dim() != 3:
        raise ValueError(f"label map must be (B, H, W), got shape {tuple(label.shape)}")
    edge = instance_edges(instance)[:, 0].bool() if instance is not None else None
    index = label.long()
    onehot = None
    if with_onehot:
        onehot = _onehot(index, edge, num_label_values, torch.float32).contiguous(memory_format=memory_format)
    return SemanticLabels(index, edge, num_label_values, onehot)


class LabelRangeError(UserError, ValueError):
    """Label indices outside ``[0, num_label_values)``."""


def check_label_range(label: Tensor, num_label_values: int, source: str = "label map") -> None:
    """Raise :class:`LabelRangeError` naming the out-of-range values and the valid range.

    The one-hot map would fail on them with torch's index error (a device-side assert on
    CUDA), and the lookup of :mod:`gaugan.models.onehot_conv` would silently read another
    kernel offset's weights. One reduction: call it once per batch, on the host tensor where
    the labels enter (on an accelerator it would wait for the device).
    """
    if label.numel() == 0:
        return
    lo, hi = (int(value) for value in torch.aminmax(label))
    if lo >= 0 and hi < num_label_values:
        return
    values = torch.unique(label[(label < 0) | (label >= num_label_values)]).tolist()
    shown = ", ".join(str(value) for value in values[:10]) + (" ..." if len(values) > 10 else "")
    raise LabelRangeError(
        f"{source}: label {'index' if len(values) == 1 else 'indices'} {shown} outside the valid range "
        f"0..{num_label_values - 1} ({num_label_values} label values)"
    )
