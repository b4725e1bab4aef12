"""Spatially-adaptive normalization layers: SPADE (paper section 3.1) and CLADE.

SPADE (Park et al. 2019, eq. 1; docs/SPADE.md section 1): a parameter-free normalisation of
the activations, then a per-pixel scale and bias predicted from the label map by a small
convolutional network:

    out = norm(x) * (1 + gamma(seg)) + beta(seg)

CLADE (Tan et al., "Efficient Semantic Image Synthesis via Class-Adaptive Normalization",
TPAMI 2021): the same modulation, but gamma and beta are looked up per class from learned
tables instead of being convolved from the label map. It drops SPADE's hidden convolutions
(about 28 M of the 96.5 M parameters of the ADE20K generator) and most of their compute.

Submodule names (``param_free_norm``, ``mlp_shared.0``, ``mlp_gamma``, ``mlp_beta``) are
the official code's, so official checkpoints load into :class:`SPADE` unchanged.

Computed with the same maths but fewer passes over memory than the official module (the
64x64 hidden maps dominate a CPU step): gamma and beta come from one convolution over the
hidden map with their weights concatenated (one read of the hidden map, and one input
gradient instead of two summed), SPADE's ``1 +`` is folded into gamma's bias, the
modulation is one ``addcmul``, the ReLU is in place, and the label map is resized once per
resolution. Results equal the official order of operations to float rounding (tested).

The label map comes in one of three forms (:data:`Segmap`): the one-hot tensor (as
published), or :class:`~gaugan.data.semantic.SemanticLabels` (class indices and edges), or
:class:`~gaugan.models.onehot_conv.LabelBags` prepared from them for one resolution. Given
labels, ``mlp_shared`` (and CLADE's tables) are computed as an exact lookup instead of a
convolution over the one-hot map (:mod:`gaugan.models.onehot_conv`); the parameters are the
same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gaugan.data.semantic import SemanticLabels
from gaugan.models.onehot_conv import LabelBags, label_bags, onehot_conv

ParamFreeNorm = Literal["instance", "batch", "syncbatch"]
PARAM_FREE_NORMS: tuple[str, ...] = ("instance", "batch", "syncbatch")

# The label map: the one-hot tensor, or class indices + edges, or those prepared for a lookup.
Segmap = Tensor | SemanticLabels | LabelBags


def make_param_free_norm(kind: ParamFreeNorm, channels: int) -> nn.Module:
    """The normalisation without learned affine parameters that SPADE / CLADE modulate.

    ``syncbatch`` is torch's own ``nn.SyncBatchNorm`` (the published default): it
    synchronises statistics across DDP processes and behaves as ``BatchNorm2d`` in a single
    process. Batch variants track running statistics, used in eval mode; ``instance``
    normalises each image on its own and has no state (as the official code).
    """
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "syncbatch":
        return nn.SyncBatchNorm(channels, affine=False)
    raise ValueError(f"generator.param_free_norm: got {kind!r}, expected one of {', '.join(PARAM_FREE_NORMS)}")


def resize_segmap(seg: Tensor, size: Sequence[int]) -> Tensor:
    """The label map at an activation's size, nearest neighbours (it stays a hard one-hot map).

    Returned unchanged when it already has that size, so a caller that resizes once per
    resolution saves every later layer the copy.
    """
    if tuple(seg.shape[-2:]) == tuple(size):
        return seg
    return F.interpolate(seg, size=tuple(size), mode="nearest")


def prepare_segmap(seg: Segmap, size: Sequence[int], kernel_size: int) -> Tensor | LabelBags:
    """The label map ready for the layers at ``size``: resized, and as lookup bags when given labels.

    A one-hot tensor is resized (:func:`resize_segmap`); labels become the
    :class:`LabelBags` of a ``kernel_size`` lookup at ``size``, built once and shared by the
    layers that use them.
    """
    if isinstance(seg, Tensor):
        return resize_segmap(seg, size)
    if isinstance(seg, LabelBags):
        if seg.labels.size == tuple(size) and seg.kernel_size == kernel_size:
            return seg
        seg = seg.labels
    return label_bags(seg.resized(size), kernel_size)


def dense_segmap(seg: Segmap, size: Sequence[int] | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The one-hot tensor (+ edge channel), nearest-resized to ``size`` when given.

    ``dtype`` applies to a map built from labels (a given one-hot tensor is used as it is).
    """
    if isinstance(seg, LabelBags):
        seg = seg.labels
    if isinstance(seg, SemanticLabels):
        return (seg.resized(size) if size is not None else seg).dense(dtype)
    return resize_segmap(seg, size) if size is not None else seg


def _like(hidden: Tensor, x: Tensor) -> Tensor:
    """The lookup's channels-last result in ``x``'s memory format (NCHW models stay NCHW)."""
    if x.dim() == 4 and not x.is_contiguous(memory_format=torch.channels_last):
        return hidden.contiguous()
    return hidden


class SPADE(nn.Module):
    """SPADE layer: ``norm(x) * (1 + gamma(seg)) + beta(seg)`` with gamma, beta from a conv MLP."""

    def __init__(
        self,
        norm_channels: int,
        label_channels: int,
        param_free_norm: ParamFreeNorm = "syncbatch",
        kernel_size: int = 3,
        hidden_channels: int = 128,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"generator.spade_kernel_size: got {kernel_size}, expected an odd size (1, 3 or 5)")
        self.param_free_norm = make_param_free_norm(param_free_norm, norm_channels)
        padding = kernel_size // 2
        # No spectral norm on these convolutions (as published).
        self.mlp_shared = nn.Sequential(
            nn.Conv2d(label_channels, hidden_channels, kernel_size, padding=padding),
            nn.ReLU(inplace=True),  # in place: the convolution's backward needs its input, not its output
        )
        self.mlp_gamma = nn.Conv2d(hidden_channels, norm_channels, kernel_size, padding=padding)
        self.mlp_beta = nn.Conv2d(hidden_channels, norm_channels, kernel_size, padding=padding)
        self.label_kernel_size = kernel_size

    # True: compute in the official module's order of operations instead (a resize in every
    # layer, two convolutions, an out-of-place ReLU). Only the speed benchmark's emulation
    # of the official code sets it; the values are the same.
    official_order = False

    def forward(self, x: Tensor, seg: Segmap) -> Tensor:
        normalized = self.param_free_norm(x)
        if self.official_order:
            dense = dense_segmap(seg, dtype=x.dtype)
            hidden = F.relu(self.mlp_shared[0](F.interpolate(dense, size=x.shape[-2:], mode="nearest")))
            return normalized * (1 + self.mlp_gamma(hidden)) + self.mlp_beta(hidden)
        seg = prepare_segmap(seg, x.shape[-2:], self.label_kernel_size)
        if isinstance(seg, LabelBags):
            conv = self.mlp_shared[0]
            # In place: the lookup's backward needs neither its input nor its output.
            hidden = _like(F.relu_(onehot_conv(seg, conv.weight, conv.bias)), x)
        else:
            hidden = self.mlp_shared(seg)
        scale, shift = self.modulation(hidden)
        return torch.addcmul(shift, normalized, scale)

    def modulation(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``(1 + gamma, beta)`` from the hidden map, by one convolution (see the module docstring).

        The same parameters as ``mlp_gamma`` / ``mlp_beta`` (their hooks, if any, do not run).
        """
        weight = torch.cat([self.mlp_gamma.weight, self.mlp_beta.weight])
        bias = torch.cat([self.mlp_gamma.bias + 1, self.mlp_beta.bias])
        both = F.conv2d(hidden, weight, bias, padding=self.mlp_gamma.padding)
        scale, shift = both.chunk(2, dim=1)
        return scale, shift


class CLADE(nn.Module):
    """Class-adaptive normalization: ``norm(x) * (1 + G[class]) + B[class]``.

    ``class_gamma`` and ``class_beta`` are ``(label_channels, norm_channels)`` tables. The
    modulation is the label map contracted with the tables over the channel axis (a 1x1
    "einsum" without bias): for a one-hot pixel of class c that is exactly row c of each
    table, i.e. CLADE's per-class lookup, at a cost of one multiply-add per label channel and
    feature channel (no hidden layer, no spatial kernel).

    The instance-edge channel, when the input has one, is treated as one more row of the
    tables: an edge pixel gets its class's gamma/beta plus a learned edge offset (the edge
    value, 0 or 1, weights that row). A don't-care channel is a class like any other. No
    part of the label map is ignored.
    """

    def __init__(
        self,
        norm_channels: int,
        label_channels: int,
        param_free_norm: ParamFreeNorm = "syncbatch",
    ) -> None:
        super().__init__()
        self.param_free_norm = make_param_free_norm(param_free_norm, norm_channels)
        self.class_gamma = nn.Parameter(torch.empty(label_channels, norm_channels))
        self.class_beta = nn.Parameter(torch.empty(label_channels, norm_channels))
        self.label_kernel_size = 1
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Small values, as SPADE's gamma/beta at initialisation (xavier gain 0.02): the layer
        # starts close to a plain normalisation.
        nn.init.normal_(self.class_gamma, 0.0, 0.02)
        nn.init.normal_(self.class_beta, 0.0, 0.02)

    def forward(self, x: Tensor, seg: Segmap) -> Tensor:
        normalized = self.param_free_norm(x)
        seg = prepare_segmap(seg, x.shape[-2:], self.label_kernel_size)
        if isinstance(seg, LabelBags):
            # Both tables in one lookup: (2 * norm_channels, label_channels, 1, 1).
            tables = torch.cat([self.class_gamma, self.class_beta], dim=1).t()[:, :, None, None]
            gamma, beta = _like(onehot_conv(seg, tables, None), x).chunk(2, dim=1)
        else:
            # (label_channels, norm_channels) -> a 1x1 convolution kernel (norm_channels, label_channels, 1, 1).
            gamma = F.conv2d(seg, self.class_gamma.t()[:, :, None, None])
            beta = F.conv2d(seg, self.class_beta.t()[:, :, None, None])
        return normalized * (1 + gamma) + beta
