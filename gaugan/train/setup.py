"""What a training runs, built in one place: networks, optimisers and the training step.

The training loop (:mod:`gaugan.train.loop`) and the speed benchmark
(:mod:`gaugan.train.bench`) both build their training with :func:`build_training` and take
their step from :meth:`Training.step`, so ``gaugan bench`` times exactly the step that
``stages.train`` runs: the G step, the D step (executed as ``train.label_conv``,
``train.compile`` and ``train.cuda_graph`` say, :mod:`gaugan.train.runner`), the networks
wrapped for DDP when there are several processes, then the EMA update.

``reference_schedule`` builds the benchmark's emulation of the official code instead (its
differences are listed in :mod:`gaugan.train.bench`): SPADE layers in the official order
and the official step's wasted work; the configuration passed in is then the official
code's (:func:`gaugan.train.bench.reference_config`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gaugan import losses
from gaugan.config import Config
from gaugan.data.registry import DatasetSpec
from gaugan.models import OASISDiscriminator, build_discriminator, build_encoder, build_generator
from gaugan.models.spade import SPADE
from gaugan.seeding import seed_everything
from gaugan.train.distributed import DistributedContext, wrap_ddp
from gaugan.train.ema import GeneratorEMA
from gaugan.train.performance import autocast_dtype, spectral_norm_in_fp32
from gaugan.train.runner import StepRunner, make_step_runner
from gaugan.train.schedule import adam_betas, learning_rates
from gaugan.train.steps import Optimizers, StepSettings, step_settings


def build_training_models(cfg: Config, spec: DatasetSpec) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """G, D and (VAE only) E for ``spec``'s label channels and image size, initialised on the CPU."""
    z_dim = cfg.encoder.z_dim if cfg.encoder.use_vae else None
    G = build_generator(cfg.generator, spec.label_channels, spec.image_size, z_dim)
    D = build_discriminator(cfg.discriminator, spec.label_channels, spec.num_label_values)
    if isinstance(D, OASISDiscriminator):  # its depth fits the image size: said before training, not in the first step
        D.check_image_size(*spec.image_size)
    E = build_encoder(cfg.encoder) if cfg.encoder.use_vae else None
    return G, D, E


def make_vgg_loss(cfg: Config, device: torch.device) -> nn.Module:
    """The VGG19 perceptual loss (weights from loss.vgg_weights or the torch hub cache; never downloaded)."""
    return losses.VGGLoss(cfg.loss.vgg_weights).to(device)


def make_optimizers(
    cfg: Config, G: nn.Module, D: nn.Module, E: nn.Module | None, device: torch.device, epoch: int
) -> Optimizers:
    """Adam for G (+E, as the official code) and for D, at the rates of ``epoch``.

    optim.fused: torch's fused Adam (one kernel over all parameters; CUDA and, since torch
    2.4, CPU, where it measured 4x faster than the multi-tensor default for G here). The
    same update rule; rounding may differ in the last bit from the unfused version.
    """
    lr_g, lr_d = learning_rates(cfg.optim, epoch)
    betas = adam_betas(cfg.optim)
    fused = True if (cfg.optim.fused and device.type in ("cuda", "cpu")) else None
    g_params = list(G.parameters()) + (list(E.parameters()) if E is not None else [])
    optimizer_g = torch.optim.Adam(g_params, lr=lr_g, betas=betas, fused=fused)
    optimizer_d = torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas, fused=fused)
    use_scaler = device.type == "cuda" and cfg.train.precision == "fp16"
    scaler_g = torch.amp.GradScaler(device.type) if use_scaler else None
    scaler_d = torch.amp.GradScaler(device.type) if use_scaler else None
    return Optimizers(optimizer_g, optimizer_d, scaler_g, scaler_d)


def place_models(
    G: nn.Module, D: nn.Module, E: nn.Module | None, device: torch.device, channels_last: bool
) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """Move to ``device``; channels_last (NHWC) is faster for these convolutions on GPU and CPU alike."""
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    E = E.to(device, memory_format=memory_format) if E is not None else None
    return G, D, E


@dataclass
class TrainingStep:
    """``step(batch) -> loss tensors``: one G step and one D step on a loader batch (``runner``),
    then the EMA generator follows G (``ema``, when kept)."""

    runner: StepRunner
    ema: GeneratorEMA | None
    generator: nn.Module  # the bare G that the EMA copy follows

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        step_losses = self.runner(batch)
        if self.ema is not None:
            self.ema.update(self.generator)
        return step_losses


@dataclass
class Training:
    """The networks (bare, on the device), the EMA copy, the optimisers and the step's maths of a training."""

    cfg: Config
    spec: DatasetSpec
    context: DistributedContext
    G: nn.Module
    D: nn.Module
    E: nn.Module | None
    ema: GeneratorEMA | None
    optimizers: Optimizers
    settings: StepSettings

    @property
    def models(self) -> dict[str, nn.Module]:
        """What checkpoints hold: the bare networks, and the EMA generator as ``G_ema``."""
        models = {"G": self.G, "D": self.D} | ({"E": self.E} if self.E is not None else {})
        if self.ema is not None:
            models["G_ema"] = self.ema.module
        return models

    def step(self, cfg: Config | None = None) -> TrainingStep:
        """The training step, executed as ``cfg.train`` says (default: this training's own
        configuration; the benchmark also counts FLOPs eagerly), on the networks wrapped for
        DDP when the run has several processes."""
        cfg = self.cfg if cfg is None else cfg
        runner = make_step_runner(cfg, self.spec, self.context.device, (self.G, self.D, self.E), self.optimizers,
                                  self.settings, wrap=lambda module: wrap_ddp(module, self.context),
                                  num_processes=self.context.world_size)
        return TrainingStep(runner, self.ema, self.G)


def build_training(cfg: Config, spec: DatasetSpec, context: DistributedContext,
                   reference_schedule: bool = False) -> Training:
    """Networks from ``cfg.train.seed`` (the same on every rank), on ``context.device``, with
    spectral norm in fp32 under autocast, the EMA copy (``train.use_ema``), the VGG loss,
    optimisers at the first epoch's rates and the step's settings.

    Seeds the global random generators with ``cfg.train.seed``; nothing after the networks,
    the EMA copy and the VGG network draws from them.
    """
    device = context.device
    seed_everything(cfg.train.seed)
    G, D, E = place_models(*build_training_models(cfg, spec), device, cfg.train.channels_last)
    if reference_schedule:
        for module in G.modules():
            if isinstance(module, SPADE):
                module.official_order = True
    dtype = autocast_dtype(cfg.train.precision, device)
    if dtype is not None:
        for network in (G, D, E):
            if network is not None:
                spectral_norm_in_fp32(network)
    ema = GeneratorEMA(G, cfg.train.ema_decay) if cfg.train.use_ema else None
    vgg = make_vgg_loss(cfg, device) if cfg.loss.use_vgg_loss else None
    optimizers = make_optimizers(cfg, G, D, E, device, epoch=0)
    settings = step_settings(cfg, spec, dtype, vgg, reference=reference_schedule)
    return Training(cfg, spec, context, G, D, E, ema, optimizers, settings)


def single_process(device: torch.device) -> DistributedContext:
    """The context of a run in this process alone (the benchmark, tests)."""
    return DistributedContext(rank=0, local_rank=0, world_size=1, device=device)
