"""One generator step and one discriminator step on the same batch (paper section 3, 4;
docs/SPADE.md section 2; OASIS: docs/OASIS.md section 1).

G step: fake = G(seg[, z]); loss = the adversary's terms for G + lambda_vgg * VGG (optional)
+ lambda_kld * KL (VAE). D step, as the official codes: the fake is generated again, under
no_grad, by the just-updated G (with fresh noise); loss = the adversary's terms for D. The
adversary (:mod:`gaugan.train.adversaries`) is SPADE's multiscale PatchGAN (hinge + feature
matching, D sees fake and real in one concatenated batch) or OASIS's segmentation
discriminator (the N+1 loss, LabelMix).

Speed-ups that leave the maths unchanged: D's weights get no gradients during the G step
(``requires_grad`` off; the official code computes and then discards them), graphs are
built only where a backward follows, losses see fp32 tensors under bf16 autocast, and no
value is copied to the host (the loop decides when to read losses). The label map can reach
G as :class:`~gaugan.data.semantic.SemanticLabels` (its label convolutions are then exact
lookups) while D gets the one-hot map, built once per batch, in the autocast dtype (0 and 1
are exact in it, and D's first convolution would cast to it anyway).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gaugan import losses
from gaugan.config import Config, LossConfig
from gaugan.data.registry import DatasetSpec
from gaugan.data.semantic import SemanticLabels, check_label_range, semantic_labels
from gaugan.models import reparameterize
from gaugan.train.adversaries import Adversary, Seg, make_adversary


@dataclass
class Networks:
    """The callables used in the steps (possibly DDP-wrapped or compiled) and the bare D.

    ``D_module`` is D without its DDP wrapper: the G step needs D's function only, not a
    gradient all-reduce of D's weights, and DDP would expect one.
    """

    G: nn.Module
    D: nn.Module
    D_module: nn.Module
    E: nn.Module | None = None


@dataclass
class Optimizers:
    G: torch.optim.Optimizer
    D: torch.optim.Optimizer
    # Gradient scalers for fp16 autocast only (bf16 and fp32 need none).
    scaler_G: torch.amp.GradScaler | None = None
    scaler_D: torch.amp.GradScaler | None = None


@dataclass
class StepSettings:
    adversary: Adversary  # the discriminator family's losses
    loss: LossConfig  # the weights of the VGG and KL terms
    autocast_dtype: torch.dtype | None = None  # None: full fp32
    # The official schedule computes D's weight gradients in the G step too (and zeroes them
    # before the D step); kept as an option so the benchmark can measure its cost.
    skip_d_weight_grads_in_g_step: bool = True
    # The official D step marks the regenerated fake as requiring grad, so D's backward also
    # computes an unused input gradient; also kept only for the benchmark's reference.
    fake_requires_grad_in_d_step: bool = False
    vgg: nn.Module | None = field(default=None, repr=False)


def step_settings(cfg: Config, spec: DatasetSpec, autocast_dtype: torch.dtype | None = None,
                  vgg: nn.Module | None = None, reference: bool = False) -> StepSettings:
    """The settings of ``cfg``'s step for ``spec``; ``reference``: the official schedule's wasted work too."""
    return StepSettings(make_adversary(cfg, spec), cfg.loss, autocast_dtype,
                        skip_d_weight_grads_in_g_step=not reference, fake_requires_grad_in_d_step=reference, vgg=vgg)


def prepare_batch(
    batch: dict[str, Tensor],
    num_label_values: int,
    device: torch.device,
    channels_last: bool = False,
    label_lookup: bool = False,
    onehot_dtype: torch.dtype = torch.float32,
) -> tuple[Seg, Tensor]:
    """Loader batch (uint8 on the host) -> (seg, real in [-1, 1]) on ``device``.

    ``seg`` is the one-hot map + edge channel (in ``onehot_dtype``), or with ``label_lookup``
    the :class:`SemanticLabels` that carry it. Built on the device: the one-hot map is
    label_channels times larger than the indices. The label indices are checked here, on the
    host before they move (no device sync), once for every layer that reads them: out of
    range, the lookup would read other weights without a word (:func:`check_label_range`). A
    batch already on the device (a CUDA graph's static inputs) is its caller's to check.
    """
    if batch["label"].device.type == "cpu":
        check_batch_labels(batch, num_label_values)
    label = batch["label"].to(device, non_blocking=True)
    instance = batch.get("instance")
    if instance is not None:
        instance = instance.to(device, non_blocking=True)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    labels = semantic_labels(label, num_label_values, instance, with_onehot=True, memory_format=memory_format)
    onehot = labels.onehot.to(onehot_dtype)
    seg: Seg = SemanticLabels(labels.index, labels.edge, num_label_values, onehot) if label_lookup else onehot
    real = batch["image"].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    return seg, real.contiguous(memory_format=memory_format)


def check_batch_labels(batch: dict[str, Tensor], num_label_values: int) -> None:
    """A loader batch's label indices are in ``[0, num_label_values)`` (:func:`check_label_range`,
    naming the batch's store items)."""
    items = batch.get("index")
    source = "batch" if items is None else "batch of store items " + ", ".join(str(i) for i in items.tolist())
    check_label_range(batch["label"], num_label_values, source)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _encode(E: nn.Module, real: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    mu, logvar = E(real)
    mu, logvar = mu.float(), logvar.float()
    return reparameterize(mu, logvar), mu, logvar


def generator_step(
    networks: Networks, optimizers: Optimizers, seg: Seg, real: Tensor, settings: StepSettings
) -> dict[str, Tensor]:
    """One Adam step of G (and E) on the batch; returns the detached loss terms (on device)."""
    device = real.device
    loss_cfg = settings.loss
    D_module = networks.D_module
    if settings.skip_d_weight_grads_in_g_step:
        D_module.requires_grad_(False)
    optimizers.G.zero_grad(set_to_none=True)
    terms: dict[str, Tensor] = {}
    try:
        with _autocast(device, settings.autocast_dtype):
            z = None
            if networks.E is not None:
                z, mu, logvar = _encode(networks.E, real)
                terms["loss/g_kld"] = losses.kld_loss(mu, logvar) * loss_cfg.lambda_kld
            fake = networks.G(seg, z)
            terms.update(settings.adversary.generator_losses(D_module, seg, fake, real))
            if loss_cfg.use_vgg_loss:
                if settings.vgg is None:
                    raise ValueError("loss.use_vgg_loss is true but no VGG network was given to the step")
                terms["loss/g_vgg"] = settings.vgg(fake.float(), real.float()) * loss_cfg.lambda_vgg
        total = torch.stack(list(terms.values())).sum()
        _backward_and_step(total, optimizers.G, optimizers.scaler_G)
    finally:
        if settings.skip_d_weight_grads_in_g_step:
            D_module.requires_grad_(True)
    terms = {name: value.detach() for name, value in terms.items()}
    terms["loss/g_total"] = total.detach()
    return terms


@torch.no_grad()
def generate_fake(networks: Networks, seg: Seg, real: Tensor) -> Tensor:
    """The D step's fake: G (and E) as they are now, no graph."""
    z = _encode(networks.E, real)[0] if networks.E is not None else None
    return networks.G(seg, z)


def discriminator_step(
    networks: Networks, optimizers: Optimizers, seg: Seg, real: Tensor, settings: StepSettings
) -> dict[str, Tensor]:
    """One Adam step of D on the batch, with the fake regenerated by the current G."""
    device = real.device
    optimizers.D.zero_grad(set_to_none=True)
    with _autocast(device, settings.autocast_dtype):
        fake = generate_fake(networks, seg, real)
        if settings.fake_requires_grad_in_d_step:
            fake.requires_grad_()
        terms = settings.adversary.discriminator_losses(networks.D, seg, fake, real)
    total = torch.stack(list(terms.values())).sum()
    _backward_and_step(total, optimizers.D, optimizers.scaler_D)
    terms = {name: value.detach() for name, value in terms.items()}
    terms["loss/d_total"] = total.detach()
    return terms


def train_step(
    networks: Networks, optimizers: Optimizers, seg: Seg, real: Tensor, settings: StepSettings
) -> dict[str, Tensor]:
    """One G step, then one D step on the same batch (the official schedule); all loss terms."""
    step_losses = generator_step(networks, optimizers, seg, real, settings)
    step_losses.update(discriminator_step(networks, optimizers, seg, real, settings))
    return step_losses


def _backward_and_step(loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
