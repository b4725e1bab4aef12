"""torch.compile for the training step (``train.compile``): per block, or whole networks.

``"blocks"`` compiles the repeated pieces in place, each with static shapes: every SPADE
residual block of G (and pix2pixHD's residual blocks), every PatchGAN scale of D (every
residual block of the OASIS discriminator), and the encoder. The blocks repeat, so the pieces are small; the norm, modulation and activation
between two convolutions become one fused pass each. The GAN pitfalls of whole-network
compilation stay outside the compiled regions: the step's two optimisers and backward
passes, D run once with and once without weight gradients, the regenerated fake. In-place
compilation (``nn.Module.compile``) leaves parameter names and state-dict keys unchanged,
so checkpoints do not see it.

Spectral norm's forward pre-hook (a power iteration that updates ``weight_u`` /
``weight_v`` in place, then ``weight = weight_orig / sigma``) runs outside the compiled
code, eagerly, in both modes: with torch 2.14's inductor inside the region, the gradient of
``weight_orig`` came out wrong in training mode (by 2-8% of its largest value on a two-conv
test module on the CPU; values, buffers and eval mode were right, and AOT autograd without
inductor was exact). Each hook is a graph break, so a block compiles into a few regions
split at its convolutions; each norm + modulation + activation stays inside one of them.

``"full"`` compiles G, D (and E) as wholes, G and D separately (the advice for GANs: one
graph per network forward, the optimiser steps stay eager).

Each block is compiled once per variant it runs in (with and without gradients, training
and eval), and the blocks share their code: the recompile limit per code object is raised
so that none of them falls back to eager.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch._dynamo
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

from gaugan.models.discriminator import NLayerDiscriminator
from gaugan.models.generator import ResnetBlock, SPADEResBlock
from gaugan.models.oasis_discriminator import DownBlock, UpBlock
from gaugan.train.performance import SpectralNormWithoutAutocast, WrappedHook

# torch.compile backend; tests swap in "aot_eager" (the same tracing, no code generation).
BACKEND = "inductor"
# Blocks x (grad, no grad, eval) x D scales x (with, without D weight grads) share code objects.
RECOMPILE_LIMIT = 64

COMPILED_BLOCKS = (SPADEResBlock, ResnetBlock, NLayerDiscriminator, DownBlock, UpBlock)


def compile_blocks(module: nn.Module) -> int:
    """Compile every block of ``module`` in place (static shapes); returns how many were compiled.

    A module without blocks (the encoder) is compiled whole, in place.
    """
    _raise_recompile_limit()
    keep_spectral_norm_eager(module)
    blocks = [block for block in module.modules() if isinstance(block, COMPILED_BLOCKS)]
    for block in blocks or [module]:
        block.compile(backend=BACKEND, dynamic=False)
    return len(blocks) or 1


def compile_whole(module: nn.Module) -> Callable:
    """``module`` (possibly DDP-wrapped) compiled as one graph per forward (static shapes)."""
    _raise_recompile_limit()
    keep_spectral_norm_eager(module)
    return torch.compile(module, backend=BACKEND, dynamic=False)


class _EagerSpectralNorm(WrappedHook):
    """A spectral-norm forward pre-hook that compiled code calls eagerly (see the module docstring)."""

    @torch.compiler.disable
    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        self.hook(module, inputs)


def keep_spectral_norm_eager(module: nn.Module) -> int:
    """Make every spectral-norm hook below ``module`` run outside compiled code; returns how many."""
    count = 0
    for layer in module.modules():
        for key, hook in list(layer._forward_pre_hooks.items()):
            if isinstance(hook, (SpectralNorm, SpectralNormWithoutAutocast)):
                layer._forward_pre_hooks[key] = _EagerSpectralNorm(hook)
                count += 1
    return count


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
