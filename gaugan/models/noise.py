"""3D noise for the generator (OASIS, Sushko et al. 2021, section 3.3; docs/OASIS.md section 3).

A generator with ``generator.noise_channels`` C > 0 takes a (B, C, H, W) noise tensor at the
image's size, concatenated in front of the one-hot label map at its input and in every SPADE
layer (resized with nearest neighbours, as the label map). As published, the noise of one
image is one N(0, 1) vector repeated at every pixel; re-sampling the whole vector gives a new
image of the same layout, and re-sampling it only where the label map holds one class changes
that class's region (the paper's local editing): a tensor that differs between pixels is as
valid an input as a uniform one.

The functions here build such tensors reproducibly: from a seed, per image of a split (so that
generated images do not depend on the batching), and with one class's pixels re-drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

# Different streams for the noise of image i, and of class c's region, under one seed.
_IMAGE_STRIDE = 1_000_003
_CLASS_STRIDE = 7_919


def noise_vector(channels: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """(channels,) N(0, 1), a function of ``seed`` only (drawn on the CPU, then moved)."""
    return torch.randn(channels, generator=torch.Generator().manual_seed(seed)).to(device)


def spread(vectors: Tensor, size: Sequence[int]) -> Tensor:
    """(B, C) vectors -> (B, C, H, W), each image's vector at every pixel (a view, no copy)."""
    height, width = size
    return vectors[:, :, None, None].expand(-1, -1, height, width)


def sample_noise(batch: int, channels: int, size: Sequence[int], device: torch.device | str,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """What a generator draws when given no noise: one vector per image from the global RNG, spread."""
    return spread(torch.randn(batch, channels, device=device, dtype=dtype), size)


def noise_for_images(indices: Tensor, channels: int, size: Sequence[int], seed: int,
                     device: torch.device | str = "cpu") -> Tensor:
    """(B, C, H, W) noise whose image ``b`` depends only on ``(seed, indices[b])``."""
    vectors = torch.stack([noise_vector(channels, seed * _IMAGE_STRIDE + int(i)) for i in indices.tolist()])
    return spread(vectors.to(device), size)


def region_seed(seed: int, class_index: int, class_seed: int) -> int:
    """The seed of class ``class_index``'s re-drawn noise: a function of the image's seed too, so
    that a new image seed ("new style") gives every region a new vector."""
    return ((seed * _IMAGE_STRIDE + class_index + 1) * _CLASS_STRIDE + class_seed) % 2**63


def edited_noise(labels: Tensor, channels: int, seed: int, class_seeds: Mapping[int, int] | None = None) -> Tensor:
    """(1, C, H, W) noise for one label map (H, W): ``seed``'s vector everywhere, except that the
    pixels of each class ``c`` in ``class_seeds`` take a vector of their own, drawn from
    ``(seed, c, class_seeds[c])``.

    The same ``(seed, class_seeds)`` always gives the same tensor, so a re-rolled region can be
    reproduced; a class absent from ``labels`` changes nothing.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (H, W), got shape {tuple(labels.shape)}")
    device, labels = labels.device, labels.cpu()
    noise = spread(noise_vector(channels, seed)[None], labels.shape).clone()
    for class_index, own_seed in (class_seeds or {}).items():
        mask = labels == class_index
        if bool(mask.any()):
            noise[0][:, mask] = noise_vector(channels, region_seed(seed, class_index, own_seed))[:, None]
    return noise.to(device)
