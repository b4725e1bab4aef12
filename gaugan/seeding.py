"""Every random number of the project comes from a seed: the schemes, in one place.

Two kinds of randomness:

- The data's: every random choice of the training data (the order of an epoch, an item's
  crop position and flip) is a function of ``(seed, epoch, index)`` alone
  (:func:`random_bits`, :func:`epoch_permutation`), never of a process-global generator, so
  a resumed run, any number of loader workers and any number of training processes see
  bit-identical batches.
- The networks' and the training's: initial weights, dropout, the VAE's noise and the 3D
  noise draw from the process-global generators, seeded with :func:`seed_everything`. A
  checkpoint holds their states as plain data (:func:`capture_rng_state`, tensors and
  numbers, no NumPy objects), and a resumed run continues them
  (:func:`restore_rng_state`).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

_MASK = (1 << 64) - 1


# ---- the data's: numbers of (seed, epoch, index) ----


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


# ---- the process-global generators ----


def seed_everything(seed: int) -> None:
    """Seed the process-global generators: Python's, NumPy's and torch's (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """This process's torch, NumPy, Python (and CUDA) random states as plain data."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["key"].numpy().astype(np.uint32)
        np.random.set_state((numpy_state["bit_generator"], key, numpy_state["pos"], numpy_state["has_gauss"],
                             numpy_state["gauss"]))
    else:  # an older checkpoint: NumPy's own tuple
        np.random.set_state(numpy_state)
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            torch.cuda.set_rng_state(cuda_states[0])
