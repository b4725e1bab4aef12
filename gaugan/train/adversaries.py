"""What the discriminator sees and which adversarial losses each side gets, per discriminator family.

The training step (:mod:`gaugan.train.steps`) is the same for every method: G makes a fake,
G's losses are summed and stepped, D's are. What differs between SPADE and OASIS is the
adversary, an object with two methods:

- ``generator_losses(D, seg, fake, real)``: G's adversarial terms (D's weights get no
  gradient from them: the step freezes D around the call);
- ``discriminator_losses(D, seg, fake, real)``: D's terms, ``fake`` made without a graph.

:class:`PatchGANAdversary` is SPADE's (paper section 4; docs/SPADE.md section 2): the
multiscale PatchGAN on ``cat(label map, image)``, hinge (or ls / original) loss, feature
matching. :class:`SegmentationAdversary` is OASIS's (Sushko et al. 2021, section 3;
docs/OASIS.md section 1): a per-pixel N+1 classifier of the image alone, the class-balanced
cross-entropy, LabelMix. Terms are namespaced (``loss/g_gan``, ``loss/d_real``, ...) and
unweighted where the config has no weight for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from gaugan import losses
from gaugan.config import Config, ConfigError, LossConfig
from gaugan.data.registry import DatasetSpec
from gaugan.data.semantic import SemanticLabels
from gaugan.models import split_discriminator_output

# The label map as the steps take it: the one-hot tensor, or labels carrying it.
Seg = Tensor | SemanticLabels


class Adversary(Protocol):
    def generator_losses(self, D: nn.Module, seg: Seg, fake: Tensor, real: Tensor) -> dict[str, Tensor]: ...

    def discriminator_losses(self, D: nn.Module, seg: Seg, fake: Tensor, real: Tensor) -> dict[str, Tensor]: ...


def dense(seg: Seg) -> Tensor:
    """The one-hot map (+ edge channel) of ``seg``."""
    return seg.dense() if isinstance(seg, SemanticLabels) else seg


def class_indices(seg: Seg, num_classes: int) -> Tensor:
    """(B, H, W) class indices of ``seg`` (the one-hot map's first ``num_classes`` channels)."""
    if isinstance(seg, SemanticLabels):
        return seg.index
    return seg[:, :num_classes].argmax(dim=1)


def _to_fp32(outputs: list[list[Tensor]]) -> list[list[Tensor]]:
    return [[t.float() for t in scale] for scale in outputs]


def discriminate(D: nn.Module, seg: Seg, fake: Tensor, real: Tensor) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """PatchGAN D on [seg|fake ; seg|real] as one batch; per scale, features then the final map, for each half.

    The images take the one-hot map's dtype (D's first convolution would cast them to the
    autocast dtype in any case).
    """
    onehot = dense(seg)
    halves = [torch.cat([onehot, image.to(onehot.dtype)], dim=1) for image in (fake, real)]
    return split_discriminator_output(_to_fp32(D(torch.cat(halves, dim=0))), fake.shape[0])


@dataclass(frozen=True)
class PatchGANAdversary:
    """SPADE's: GAN loss (``loss.gan_mode``) on each scale's final map, feature matching (``lambda_feat / num_D``)."""

    loss: LossConfig
    num_discriminators: int

    def generator_losses(self, D: nn.Module, seg: Seg, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        pred_fake, pred_real = discriminate(D, seg, fake, real)
        pred_real = [[t.detach() for t in scale] for scale in pred_real]  # targets, not trained
        terms = {"loss/g_gan": losses.gan_loss(pred_fake, self.loss.gan_mode, target_is_real=True,
                                               for_discriminator=False)}
        if self.loss.use_feat_loss:
            terms["loss/g_feat"] = losses.feature_matching_loss(pred_fake, pred_real) * (
                self.loss.lambda_feat / self.num_discriminators
            )
        return terms

    def discriminator_losses(self, D: nn.Module, seg: Seg, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        pred_fake, pred_real = discriminate(D, seg, fake, real)
        mode = self.loss.gan_mode
        return {
            "loss/d_fake": losses.gan_loss(pred_fake, mode, target_is_real=False, for_discriminator=True),
            "loss/d_real": losses.gan_loss(pred_real, mode, target_is_real=True, for_discriminator=True),
        }


@dataclass(frozen=True)
class SegmentationAdversary:
    """OASIS's: D classifies every pixel of the image into the ``num_classes`` classes or "fake".

    D's loss: real pixels against their class, weighted by inverse class frequency
    (``use_class_balancing``; ``void_index`` pixels weigh 0), plus fake pixels against
    "fake"; with ``use_labelmix``, ``lambda_labelmix`` x the LabelMix consistency loss. G's:
    its fake's pixels against their classes, balanced the same way. D sees fake, real (and
    the mix) as one batch: it has no batch statistics, so this equals separate passes
    (docs/OASIS.md: the authors call it three times).
    """

    num_classes: int
    void_index: int | None
    use_class_balancing: bool = True
    use_labelmix: bool = False
    lambda_labelmix: float = 10.0

    def weights(self, labels: Tensor) -> Tensor | None:
        if not self.use_class_balancing:
            return None
        return losses.class_balance_weights(labels, self.num_classes, self.void_index)

    def generator_losses(self, D: nn.Module, seg: Seg, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        labels = class_indices(seg, self.num_classes)
        logits = D(fake)
        return {"loss/g_gan": losses.n_plus_one_loss(logits, labels, True, self.weights(labels))}

    def discriminator_losses(self, D: nn.Module, seg: Seg, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        labels = class_indices(seg, self.num_classes)
        images = [fake, real.to(fake.dtype)]
        if self.use_labelmix:
            mask = losses.labelmix_mask(labels, self.num_classes).to(fake.dtype)
            images.append(mask * images[1] + (1 - mask) * fake)
        logits = D(torch.cat(images, dim=0)).chunk(len(images), dim=0)
        terms = {
            "loss/d_fake": losses.n_plus_one_loss(logits[0], labels, False),
            "loss/d_real": losses.n_plus_one_loss(logits[1], labels, True, self.weights(labels)),
        }
        if self.use_labelmix:
            terms["loss/d_labelmix"] = self.lambda_labelmix * losses.labelmix_loss(mask, logits[2], logits[0], logits[1])
        return terms


# The adversary of each discriminator family: ``discriminator.arch`` (a key of
# gaugan.models.DISCRIMINATORS) -> builder ``(cfg, spec) -> Adversary``.
ADVERSARIES: dict[str, Callable[[Config, DatasetSpec], Adversary]] = {
    "multiscale": lambda cfg, spec: PatchGANAdversary(cfg.loss, cfg.discriminator.num_discriminators),
    "oasis": lambda cfg, spec: SegmentationAdversary(spec.num_label_values, spec.void_index,
                                                     cfg.loss.use_class_balancing, cfg.loss.use_labelmix,
                                                     cfg.loss.lambda_labelmix),
}


def make_adversary(cfg: Config, spec: DatasetSpec) -> Adversary:
    """The adversary of ``discriminator.arch`` for ``spec``'s classes."""
    builder = ADVERSARIES.get(cfg.discriminator.arch)
    if builder is None:
        raise ConfigError(f"discriminator.arch: got {cfg.discriminator.arch!r}, expected one of {', '.join(ADVERSARIES)}")
    return builder(cfg, spec)
