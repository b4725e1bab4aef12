"""A convolution over a one-hot label map, computed exactly as a lookup of weight columns.

SPADE's first convolution (``mlp_shared``, label channels -> 128, k x k) runs on the
one-hot map of docs/SPADE.md section 1 at every resolution of the generator. On a one-hot
input the convolution is a sum of looked-up columns: at each pixel, for each kernel offset
(i, j), the weight column ``weight[:, class(neighbour), i, j]`` of the neighbour's class,
plus ``edge(neighbour) * weight[:, C - 1, i, j]`` for the instance-edge channel (edges are
0 or 1), plus the bias; a neighbour outside the image adds nothing (zero padding). That is
``F.embedding_bag(mode="sum")`` over a table that is a reshaped view of the unchanged
weight: the same function, about ``C / 2`` times fewer operations than the convolution
(one add per hidden channel and bag entry instead of a multiply-add per label channel), no
one-hot tensor, and its gradient (a scatter-add into the table) lands in the same parameter,
so checkpoints keep their shapes and names.

Table rows: per offset ``(i, j)`` one row per neighbour state, i.e. class ``c`` (``c``) or,
with an edge map, class and edge ``(c, e)`` (``2c + e``: the class column plus ``e`` times the
edge column, so an edge costs no extra entry); then one bias row, then one zero row (the
entry of a neighbour outside the image). Bags are built once per resolution
(:func:`label_bags`) and shared by every layer at that resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gaugan.data.semantic import SemanticLabels


@dataclass(frozen=True, eq=False)
class LabelBags:
    """Per pixel, the table rows that a ``kernel_size`` convolution over the one-hot map sums.

    ``rows`` is (B * H * W * (k * k + 1),) int32, pixel after pixel: one entry per kernel
    offset (the neighbour's class and edge), then the bias entry. ``labels`` are the labels
    they came from (at the same size).
    """

    rows: Tensor
    labels: SemanticLabels
    kernel_size: int

    @property
    def num_entries(self) -> int:
        return self.kernel_size**2 + 1

    @property
    def num_channels(self) -> int:
        return self.labels.num_channels

    def offsets(self) -> Tensor:
        """Where each pixel's bag starts in ``rows`` (embedding_bag's ``offsets``)."""
        return torch.arange(0, self.rows.numel(), self.num_entries, dtype=self.rows.dtype, device=self.rows.device)


def label_bags(labels: SemanticLabels, kernel_size: int) -> LabelBags:
    """The bags of :func:`onehot_conv` for ``labels`` and an odd ``kernel_size`` (padding ``k // 2``)."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd (padding k // 2 keeps the size), got {kernel_size}")
    k, pad = kernel_size, kernel_size // 2
    batch, (height, width) = labels.index.shape[0], labels.size
    # A pixel's state is (class, edge): its row in the table of one offset. int32 (half the
    # memory of int64); outside the image the map holds the zero row's number, which the
    # clamp keeps whatever the offset (an in-image row is never above it).
    states_per_offset = labels.num_label_values * (2 if labels.edge is not None else 1)
    zero_row = k * k * states_per_offset + 1
    state = labels.index.to(torch.int32)
    if labels.edge is not None:
        state = state * 2 + labels.edge.to(torch.int32)
    state = F.pad(state, (pad, pad, pad, pad), value=zero_row)
    rows = torch.empty(batch, height, width, k * k + 1, dtype=torch.int32, device=state.device)
    for offset in range(k * k):
        i, j = divmod(offset, k)
        entry = rows[..., offset]
        torch.add(state[:, i:i + height, j:j + width], offset * states_per_offset, out=entry)
        entry.clamp_(max=zero_row)
    rows[..., -1] = zero_row - 1  # the bias row
    return LabelBags(rows.view(-1), labels, kernel_size)


def onehot_conv(bags: LabelBags, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(bags.labels.dense(), weight, bias, padding=k // 2)`` as a lookup, (B, out, H, W).

    ``weight`` is (out, C, k, k) as the convolution's. Equal to the convolution up to float
    summation order, in values and in the gradients of ``weight`` and ``bias`` (tested). The
    result is channels-last in memory (the lookup writes one pixel's channels together).
    """
    out_channels, channels, kernel_height, kernel_width = weight.shape
    if channels != bags.num_channels or kernel_height != bags.kernel_size or kernel_width != bags.kernel_size:
        raise ValueError(
            f"weight {tuple(weight.shape)} does not fit bags of {bags.num_channels} label channels and "
            f"kernel {bags.kernel_size}"
        )
    bias_row = bias if bias is not None else weight.new_zeros(out_channels)
    # (out, C, k, k) -> (k * k, C, out): one block of rows per offset, differentiably (the
    # gradient reaches ``weight``).
    columns = weight.permute(2, 3, 1, 0).reshape(-1, channels, out_channels)
    num_label_values = bags.labels.num_label_values
    if bags.labels.edge is not None:
        # Row 2c + e of an offset: class c's column plus, for an edge pixel (e = 1), the edge
        # channel's column.
        classes, edge = columns[:, :num_label_values], columns[:, num_label_values:]
        columns = torch.stack([classes, classes + edge], dim=2)
    table = torch.cat([
        columns.reshape(-1, out_channels),
        bias_row.unsqueeze(0),
        weight.new_zeros(1, out_channels),
    ])
    dtype = torch.get_autocast_dtype(weight.device.type) if torch.is_autocast_enabled(weight.device.type) else None
    if dtype is not None:
        table = table.to(dtype)  # as the convolution would compute under autocast
    # No padding_idx: entries of the zero row add zeros, and embedding_bag's fast CPU path
    # (7x faster here) needs no padding index.
    summed = F.embedding_bag(bags.rows, table, bags.offsets(), mode="sum")
    batch = bags.labels.index.shape[0]
    height, width = bags.labels.size
    return summed.view(batch, height, width, out_channels).permute(0, 3, 1, 2)
