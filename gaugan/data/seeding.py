"""The data pipeline's one source of randomness: numbers that depend only on (seed, epoch, index).

Every random choice of the training data (the order of an epoch, an item's crop position
and flip) is a function of these integers alone, never of a process-global generator, so a
resumed run, any number of loader workers and any number of training processes see
bit-identical batches.
"""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def random_bits(*values: int) -> int:
    """64 random bits from integers, e.g. ``(seed, epoch, index)`` (splitmix64 steps).

    Cheap, and stable across processes, platforms and versions (unlike ``hash``).
    """
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK
        state ^= state >> 29
    return state


def epoch_permutation(num_items: int, seed: int, epoch: int) -> list[int]:
    """The order of an epoch's items: a permutation of ``range(num_items)`` fixed by (seed, epoch)."""
    generator = torch.Generator().manual_seed(random_bits(seed, epoch) & ((1 << 63) - 1))
    return torch.randperm(num_items, generator=generator).tolist()
