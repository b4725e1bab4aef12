"""Exponential moving average of the generator's weights (not in the SPADE paper; OASIS and
later GAN work, e.g. StyleGAN, use it for smoother samples; docs/OASIS.md section 4).

Parameters are averaged; buffers (batch-norm running statistics, spectral-norm vectors) are
copied from G at every update: they are statistics, not weights. G's batch-norm statistics
describe G's activations, not the averaged network's, so before the EMA generator is
sampled, scored or saved its statistics can be recomputed from a fixed set of training
batches (:meth:`GeneratorEMA.refresh_statistics`; OASIS does this with 51 batches): an equal
average over the batches, in a private random stream, so that training's random numbers and
a resumed run's continuation are unaffected.

The copy's synchronized batch norms are plain ones: the copy only ever runs in one process
(rank 0 samples, scores and saves), where the two compute the same, and a plain one never
waits for the other ranks. Their state-dict keys are the same.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

Forward = Callable[[nn.Module], None]  # runs the generator on one batch


def _plain_batch_norms(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.SyncBatchNorm`` replaced by an equal ``nn.BatchNorm2d`` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=child.running_mean.device
                                   if child.running_mean is not None else None)
            plain.load_state_dict(child.state_dict())
            setattr(module, name, plain)
        else:
            _plain_batch_norms(child)
    return module


class GeneratorEMA:
    """A frozen copy of G whose parameters follow ``ema = decay * ema + (1 - decay) * G``."""

    def __init__(self, generator: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = _plain_batch_norms(copy.deepcopy(generator)).eval()
        self.module.requires_grad_(False)
        self.batch_norms = [m for m in self.module.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]

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

    @torch.no_grad()
    def refresh_statistics(self, batches: Iterable[Forward], seed: int) -> int:
        """Recompute the batch-norm running statistics as the equal average over ``batches``.

        Each item runs the EMA generator (in training mode) on one batch. Random numbers
        drawn meanwhile (3D noise) come from a stream seeded with ``seed``; the global random
        state is restored afterwards. Returns the number of batches used (0: no batch norm).
        """
        if not self.batch_norms:
            return 0
        momenta = [norm.momentum for norm in self.batch_norms]
        devices = [self.module_device()] if self.module_device().type == "cuda" else []
        count = 0
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            try:
                for forward in batches:
                    if count == 0:  # G's statistics stay when there is no batch at all
                        for norm in self.batch_norms:
                            norm.reset_running_stats()
                            norm.momentum = None  # cumulative: every batch counts the same
                        self.module.train()
                    forward(self.module)
                    count += 1
            finally:
                self.module.eval()
                for norm, momentum in zip(self.batch_norms, momenta):
                    norm.momentum = momentum
        return count

    def module_device(self) -> torch.device:
        return next(self.module.parameters()).device

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
