"""Exponential moving average of the generator's weights (not in the paper; used by later
GAN work, e.g. StyleGAN, for smoother samples). Buffers (BatchNorm running statistics,
spectral-norm vectors) are copied, not averaged: they are statistics, not weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class GeneratorEMA:
    """A frozen copy of G whose parameters follow ``ema = decay * ema + (1 - decay) * G``."""

    def __init__(self, generator: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(generator).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, generator: nn.Module) -> None:
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in generator.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("EMA update: the generator's parameters do not match the EMA copy")
        # One fused kernel over all tensors instead of a Python loop of small ops.
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.module.buffers(), generator.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
