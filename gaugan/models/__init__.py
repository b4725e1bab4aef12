"""The networks of the paper (section 3) and their factory.

``build_generator`` builds the generator that ``generator.arch`` names in :data:`GENERATORS`,
the registry of architectures (an unknown name is an error listing the registered ones);
``build_discriminator`` builds the one ``discriminator.arch`` names in
:data:`DISCRIMINATORS`; ``build_encoder`` takes its own section of the config. All take
derived numbers besides. ``published_*`` give the authors' configuration of a dataset for a
method (SPADE: docs/SPADE.md section 1; OASIS: docs/OASIS.md section 2) for parameter counts
and official checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from gaugan.config import ConfigError, DiscriminatorConfig, EncoderConfig, GeneratorConfig
from gaugan.data.registry import DatasetSpec
from gaugan.models.discriminator import MultiscaleDiscriminator, NLayerDiscriminator, split_discriminator_output
from gaugan.models.encoder import ConvEncoder, reparameterize
from gaugan.models.generator import OASISGenerator, Pix2PixHDGenerator, SPADEGenerator, SPADEResBlock, start_size
from gaugan.models.init import init_weights
from gaugan.models.oasis_discriminator import OASISDiscriminator
from gaugan.models.spade import CLADE, SPADE

__all__ = [
    "CLADE",
    "SPADE",
    "ConvEncoder",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "OASISDiscriminator",
    "OASISGenerator",
    "Pix2PixHDGenerator",
    "SPADEGenerator",
    "SPADEResBlock",
    "DISCRIMINATORS",
    "GENERATORS",
    "GENERATOR_ARCHS",
    "METHODS",
    "build_discriminator",
    "build_encoder",
    "build_generator",
    "count_parameters",
    "init_weights",
    "published_configs",
    "published_generator_config",
    "published_parameter_counts",
    "reparameterize",
    "split_discriminator_output",
    "start_size",
]

IMAGE_CHANNELS = 3

GeneratorBuilder = Callable[[GeneratorConfig, int, "tuple[int, int]", "int | None"], nn.Module]


def _pix2pixhd(cfg: GeneratorConfig, label_channels: int, image_size: tuple[int, int], z_dim: int | None) -> nn.Module:
    if z_dim is not None:
        raise ConfigError(
            "encoder.use_vae: true needs generator.arch 'spade' or 'clade'; the pix2pixhd baseline "
            "has no z input (set encoder.use_vae: false or change generator.arch)"
        )
    return Pix2PixHDGenerator(cfg, label_channels, image_size)


def _oasis(cfg: GeneratorConfig, label_channels: int, image_size: tuple[int, int], z_dim: int | None) -> nn.Module:
    if z_dim is not None:
        raise ConfigError("encoder.use_vae: true needs generator.arch 'spade' or 'clade'; the oasis generator takes "
                          "3D noise instead (set encoder.use_vae: false)")
    return OASISGenerator(cfg, label_channels, image_size)


# The registry of generator architectures: ``generator.arch`` -> builder
# ``(cfg, label_channels, image_size, z_dim) -> G``. Every entry takes the one-hot map or
# SemanticLabels as ``G(seg, z)``; tests run over all of them.
GENERATORS: dict[str, GeneratorBuilder] = {
    "spade": SPADEGenerator,  # SPADE norms
    "clade": SPADEGenerator,  # the same network with CLADE norms (the class reads cfg.arch)
    "pix2pixhd": _pix2pixhd,  # the paper's baseline
    "oasis": _oasis,  # OASIS (Sushko et al. 2021): SPADE blocks and 3D noise
}
GENERATOR_ARCHS = tuple(GENERATORS)

DiscriminatorBuilder = Callable[[DiscriminatorConfig, int, int], nn.Module]

# The registry of discriminator architectures: ``discriminator.arch`` -> builder
# ``(cfg, label_channels, num_classes) -> D``. The multiscale PatchGAN sees the label map
# (``label_channels`` + 3 input channels) and returns features per scale; the OASIS one sees
# the image and returns 1 + ``num_classes`` logits per pixel. The step's adversary
# (gaugan.train.adversaries) knows what each returns.
DISCRIMINATORS: dict[str, DiscriminatorBuilder] = {
    "multiscale": lambda cfg, label_channels, num_classes: MultiscaleDiscriminator(cfg, label_channels + IMAGE_CHANNELS),
    "oasis": lambda cfg, label_channels, num_classes: OASISDiscriminator(cfg, num_classes),
}

# Methods with a published configuration (``gaugan params --model``).
METHODS = ("spade", "oasis")


def build_generator(
    cfg: GeneratorConfig,
    label_channels: int,
    image_size: tuple[int, int],
    z_dim: int | None = None,
) -> nn.Module:
    """The generator for ``cfg.arch``; ``z_dim`` set means the VAE variant (G starts from z)."""
    builder = GENERATORS.get(cfg.arch)
    if builder is None:
        raise ConfigError(f"generator.arch: got {cfg.arch!r}, expected one of {', '.join(GENERATORS)}")
    return builder(cfg, label_channels, image_size, z_dim)


def build_discriminator(cfg: DiscriminatorConfig, label_channels: int, num_classes: int | None = None) -> nn.Module:
    """The discriminator for ``cfg.arch``: ``label_channels`` is the one-hot map's channels (with the
    edge channel), ``num_classes`` the label map's classes (with don't-care; the oasis
    discriminator's output is 1 + num_classes; default: ``label_channels``)."""
    builder = DISCRIMINATORS.get(cfg.arch)
    if builder is None:
        raise ConfigError(f"discriminator.arch: got {cfg.arch!r}, expected one of {', '.join(DISCRIMINATORS)}")
    return builder(cfg, label_channels, label_channels if num_classes is None else num_classes)


def build_encoder(cfg: EncoderConfig) -> ConvEncoder:
    return ConvEncoder(cfg)


def count_parameters(module: nn.Module) -> int:
    """Learned parameters (spectral norm's u/v vectors are buffers and not counted, as published)."""
    return sum(p.numel() for p in module.parameters())


def published_generator_config(dataset: str) -> GeneratorConfig:
    """The official generator settings for ``dataset``: the defaults, "more" upsamplings for Cityscapes."""
    if dataset == "cityscapes":
        return dataclasses.replace(GeneratorConfig(), num_upsampling_layers="more")
    return GeneratorConfig()


# OASIS's published networks (docs/OASIS.md section 2): 64 channels, 3D noise of 64, six
# generator blocks (five upsamplings, Cityscapes too), the segmentation discriminator.
OASIS_GENERATOR = GeneratorConfig(arch="oasis", noise_channels=64)
OASIS_DISCRIMINATOR = DiscriminatorConfig(arch="oasis")


def published_configs(dataset: str, method: str) -> tuple[GeneratorConfig, DiscriminatorConfig]:
    """The authors' generator and discriminator settings of ``method`` for ``dataset``."""
    if method == "spade":
        return published_generator_config(dataset), DiscriminatorConfig()
    if method == "oasis":
        return OASIS_GENERATOR, OASIS_DISCRIMINATOR
    raise ConfigError(f"method: got {method!r}, expected one of {', '.join(METHODS)}")


def published_parameter_counts(spec: DatasetSpec, method: str = "spade") -> dict[str, int]:
    """Parameter counts of the networks of ``method`` at the authors' configuration for ``spec``.

    SPADE: G, D and E. OASIS: G and D; OASIS uses no instance maps, so its label input is
    the classes alone (``spec.num_label_values``: 151 for ADE20K, 183 for COCO-Stuff, 35 for
    Cityscapes), and it has no encoder. Built on the meta device: no memory is allocated and
    nothing is initialised, so the full-size networks cost milliseconds.
    """
    generator_cfg, discriminator_cfg = published_configs(spec.name, method)
    label_channels = spec.label_channels if method == "spade" else spec.num_label_values
    with torch.device("meta"):
        generator = build_generator(generator_cfg, label_channels, spec.image_size)
        discriminator = build_discriminator(discriminator_cfg, label_channels, spec.num_label_values)
        encoder = build_encoder(EncoderConfig()) if method == "spade" else None
    counts = {"G": count_parameters(generator), "D": count_parameters(discriminator)}
    if encoder is not None:
        counts["E"] = count_parameters(encoder)
    return counts
