"""The training losses of the paper (section 3 and appendix A; docs/SPADE.md section 2).

Each function returns the UNWEIGHTED term; the generator step multiplies by the config's
weights (``loss.lambda_feat / num_discriminators`` for feature matching, ``loss.lambda_vgg``,
``loss.lambda_kld``), as the official code's totals are formed.

- GAN loss (hinge by default; least squares and the original cross-entropy too), on the
  final map of every discriminator scale, averaged over the scales. The generator and the
  discriminator sides are separate (``for_discriminator``).
- Feature matching (pix2pixHD): L1 between D's intermediate features of fake and real, every
  layer of every scale, real detached.
- VGG19 perceptual loss: L1 between relu1_1 .. relu5_1 features, weights 1/32 .. 1, real
  detached, images fed in [-1, 1] as they are (no ImageNet normalisation, as published).
- KL divergence of the VAE posterior from N(0, 1), summed over batch and dimensions.
- OASIS (Sushko et al. 2021, section 3; docs/OASIS.md section 1): the class-balanced N+1
  cross-entropy of a segmentation discriminator, its class weights, and LabelMix.

Every reduction runs in float32, so the losses are safe under bf16 / fp16 autocast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from gaugan.checkpoint import CheckpointError, read_torch_file
from gaugan.errors import UserError
from gaugan.pinned import Pin, pin_problem

GanMode = Literal["hinge", "ls", "original"]
GAN_MODES = ("hinge", "ls", "original")

VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision VGG19_Weights.IMAGENET1K_V1
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
# The published file: its name carries the first 8 hex digits of this SHA-256 (torch hub's
# convention); the full value and the size are those other projects pin for this URL.
VGG19_PIN = Pin(574_673_361, "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44")
# Feature slices of torchvision's vgg19().features ending at relu1_1, relu2_1, relu3_1,
# relu4_1, relu5_1, and their weights in the loss.
VGG_SLICE_ENDS = (2, 7, 12, 21, 30)
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class VGGWeightsError(UserError, FileNotFoundError):
    """The VGG19 ImageNet weights are missing or unusable."""


# --------------------------------------------------------------------------------------
# Adversarial and feature matching.


def _gan_term(prediction: Tensor, mode: str, target_is_real: bool, for_discriminator: bool) -> Tensor:
    prediction = prediction.float()
    if mode == "hinge":
        if not for_discriminator:
            if not target_is_real:
                raise ValueError("the generator's hinge loss is defined for target_is_real=True only")
            return -prediction.mean()
        if target_is_real:
            return F.relu(1.0 - prediction).mean()
        return F.relu(1.0 + prediction).mean()
    target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
    if mode == "ls":
        return F.mse_loss(prediction, target)
    if mode == "original":
        return F.binary_cross_entropy_with_logits(prediction, target)
    raise ValueError(f"loss.gan_mode: got {mode!r}, expected one of {', '.join(GAN_MODES)}")


def gan_loss(
    predictions: list[list[Tensor]] | list[Tensor],
    mode: GanMode = "hinge",
    target_is_real: bool = True,
    for_discriminator: bool = True,
) -> Tensor:
    """Adversarial loss averaged over D's scales, on each scale's final map.

    ``predictions`` is D's output: per scale, a list of features whose last entry is the
    final patch map (or directly that map). Hinge: D gets ``mean(relu(1 - D(real)))`` /
    ``mean(relu(1 + D(fake)))``, G gets ``-mean(D(fake))``. ``ls`` / ``original``: mean
    squared error / binary cross-entropy against 1 (real) or 0 (fake) on both sides.
    """
    if not predictions:
        raise ValueError("gan_loss: no discriminator outputs")
    total = torch.zeros((), device=_first_tensor(predictions).device)
    for scale in predictions:
        final = scale[-1] if isinstance(scale, (list, tuple)) else scale
        total = total + _gan_term(final, mode, target_is_real, for_discriminator)
    return total / len(predictions)


def feature_matching_loss(pred_fake: list[list[Tensor]], pred_real: list[list[Tensor]]) -> Tensor:
    """Sum over scales and intermediate layers of ``L1(fake feature, real feature.detach())``.

    The final map of each scale is excluded (it is the GAN loss's input). The published
    weight is ``lambda_feat / num_discriminators`` (applied by the generator step).
    """
    if len(pred_fake) != len(pred_real):
        raise ValueError(f"feature_matching_loss: {len(pred_fake)} fake scales but {len(pred_real)} real ones")
    total = torch.zeros((), device=_first_tensor(pred_fake).device)
    for fake_scale, real_scale in zip(pred_fake, pred_real):
        for fake_feature, real_feature in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + F.l1_loss(fake_feature.float(), real_feature.detach().float())
    return total


def _first_tensor(predictions: list) -> Tensor:
    first = predictions[0]
    return first[0] if isinstance(first, (list, tuple)) else first


# --------------------------------------------------------------------------------------
# VAE.


def kld_loss(mu: Tensor, logvar: Tensor) -> Tensor:
    """``-0.5 * sum(1 + logvar - mu^2 - exp(logvar))``: summed over batch and z (official reduction)."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


# --------------------------------------------------------------------------------------
# Perceptual.


def default_vgg_weights_path() -> Path:
    """``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth`` (torch hub's cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def load_vgg19_features(weights_path: str | os.PathLike | None = None) -> nn.Sequential:
    """torchvision's VGG19 ``features[:30]`` (up to relu5_1) with ImageNet weights, frozen, eval mode.

    The weights come from the torch hub cache, where they must be the published file (size
    and full SHA-256, :data:`VGG19_PIN`, checked before the file is read), or from
    ``weights_path`` (``loss.vgg_weights``): a file the user chose, which needs the
    ``features.*`` tensors only. Either is read weights-only (no pickled code runs). They
    are never downloaded here and never left random: a missing, altered or unreadable file
    raises :class:`VGGWeightsError` saying what to do.
    """
    path = Path(weights_path) if weights_path is not None else default_vgg_weights_path()
    setting = "loss.vgg_weights" if weights_path is not None else "loss.vgg_weights (null: the torch hub cache)"
    how_to = (
        f"download {VGG19_URL} (torchvision's VGG19_Weights.IMAGENET1K_V1, 548 MiB) to "
        f"{default_vgg_weights_path()} or set loss.vgg_weights to its path; or set loss.use_vgg_loss=false "
        f"to train without the perceptual loss"
    )
    if not path.is_file():
        raise VGGWeightsError(f"{path}: VGG19 ImageNet weights not found ({setting}); {how_to}")
    if weights_path is None and (problem := pin_problem(path, VGG19_PIN)):
        raise VGGWeightsError(
            f"{path}: not the published VGG19 weights ({problem}); delete it and run the weights stage again "
            f"(dvc repro weights), or download {VGG19_URL} and place it there by hand, or set loss.vgg_weights to "
            "a VGG19 file you trust"
        )
    try:
        state = read_torch_file(path)
    except CheckpointError as err:
        reason = str(err).removeprefix(f"{path}: ")
        raise VGGWeightsError(f"{path}: unreadable VGG19 weights ({reason}); {how_to}") from err
    # Built on the meta device: the 120 M classifier parameters are never allocated.
    with torch.device("meta"):
        features = torchvision.models.vgg19(weights=None).features[: VGG_SLICE_ENDS[-1]]
    expected = features.state_dict()
    wanted = {}
    problems = []
    for key, tensor in expected.items():
        found = state.get(f"features.{key}") if isinstance(state, dict) else None
        if found is None:
            problems.append(f"missing features.{key}")
        elif found.shape != tensor.shape:
            problems.append(f"features.{key} has shape {tuple(found.shape)}, expected {tuple(tensor.shape)}")
        else:
            wanted[key] = found.float()
    if problems:
        raise VGGWeightsError(f"{path}: not torchvision VGG19 weights ({'; '.join(problems[:5])}); {how_to}")
    features.load_state_dict(wanted, strict=True, assign=True)
    features.requires_grad_(False)
    return features.eval()


class VGGLoss(nn.Module):
    """``sum_i w_i * L1(vgg_i(fake), vgg_i(real).detach())`` over relu1_1 .. relu5_1."""

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        features = load_vgg19_features(weights_path)
        starts = (0,) + VGG_SLICE_ENDS[:-1]
        self.slices = nn.ModuleList(features[start:end] for start, end in zip(starts, VGG_SLICE_ENDS))
        self.layer_weights = VGG_LAYER_WEIGHTS

    def train(self, mode: bool = True) -> VGGLoss:
        # A fixed feature extractor: never in training mode (it has no dropout / norm, but
        # keeping it in eval mode makes that independent of torchvision's layer choice).
        return super().train(False)

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        # One pass over fake and real together: same result, half the kernel launches.
        x = torch.cat([fake, real.detach()], dim=0)
        total = torch.zeros((), device=fake.device)
        for weight, block in zip(self.layer_weights, self.slices):
            x = block(x)
            fake_features, real_features = x.split(fake.shape[0], dim=0)
            total = total + weight * F.l1_loss(fake_features.float(), real_features.detach().float())
        return total


# --------------------------------------------------------------------------------------
# OASIS: the N+1 segmentation loss and LabelMix.


def class_balance_weights(labels: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """(B, H, W) label indices -> (B, H, W) per-pixel weights: inverse class frequency in the batch.

    As OASIS computes them: class c's weight is ``B*H*W / (K * n_c)``, with ``n_c`` the pixels
    of class c in the whole batch and K the number of classes present, so that every present
    class carries the same total weight and a uniform map weighs 1 everywhere. Pixels of
    ``ignore_index`` (the don't-care class) weigh 0 and are neither counted in K nor in the
    class pixels (they still count in ``B*H*W``, as published). Shapes stay static and nothing
    is read back to the host, so this runs inside CUDA graphs.
    """
    flat = labels.reshape(-1).long()
    counts = torch.zeros(num_classes, device=labels.device, dtype=torch.float32)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
    if ignore_index is not None:
        counts[ignore_index] = 0.0
    present = (counts > 0).sum()
    coefficients = torch.where(counts > 0, flat.numel() / (present * counts).clamp_min(1.0), torch.zeros_like(counts))
    return coefficients[labels.long()]


def n_plus_one_loss(logits: Tensor, labels: Tensor, target_is_real: bool, weights: Tensor | None = None) -> Tensor:
    """OASIS's adversarial loss on a segmentation discriminator's (B, 1 + N, H, W) logits.

    Real: every pixel against its class (index ``label + 1``), weighted by ``weights`` (class
    balancing; None: 1) and averaged over all pixels. Fake: every pixel against the fake class
    (index 0), a plain average. D gets real images as real and fakes as fake; G gets its fakes
    as real (against their label map's classes).
    """
    logits = logits.float()
    if target_is_real:
        per_pixel = F.cross_entropy(logits, labels.long() + 1, reduction="none")
        return (per_pixel * weights).mean() if weights is not None else per_pixel.mean()
    return F.cross_entropy(logits, torch.zeros_like(labels, dtype=torch.long))


def labelmix_mask(labels: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) labels -> (B, 1, H, W) float mask in {0, 1}: one fair coin per class, shared by the batch.

    The binary mask of LabelMix: the pixels of each class all come from the real image (1) or
    all from the fake (0). The coins come from the global RNG of the labels' device; the
    shape is static (no ``unique``), so it also runs inside CUDA graphs.
    """
    coins = torch.randint(0, 2, (num_classes,), device=labels.device).float()
    return coins[labels.long()].unsqueeze(1)


def labelmix_loss(mask: Tensor, mixed: Tensor, fake: Tensor, real: Tensor) -> Tensor:
    """LabelMix's consistency loss: ``MSE(D(mix(real, fake)), mix(D(real), D(fake)))`` on the logits.

    ``mixed``, ``fake`` and ``real`` are D's logits of the mixed, fake and real images; the
    mask mixes the logits the way it mixed the images (gradients reach all three).
    """
    mask = mask.float()
    target = mask * real.float() + (1.0 - mask) * fake.float()
    return F.mse_loss(mixed.float(), target)
