"""The networks of the paper (section 3) and their factory.

``build_generator`` picks the generator named by ``generator.arch`` (an unknown name is an
error listing the valid ones); ``build_discriminator`` and ``build_encoder`` take their own
section of the config plus derived numbers. ``published_*`` give the official configuration
of a dataset (docs/SPADE.md section 1) for parameter counts and official checkpoints.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from gaugan.config import ConfigError, DiscriminatorConfig, EncoderConfig, GeneratorConfig
from gaugan.data.registry import DatasetSpec
from gaugan.models.discriminator import MultiscaleDiscriminator, NLayerDiscriminator, split_discriminator_output
from gaugan.models.encoder import ConvEncoder, reparameterize
from gaugan.models.generator import Pix2PixHDGenerator, SPADEGenerator, SPADEResBlock, start_size
from gaugan.models.init import init_weights
from gaugan.models.spade import CLADE, SPADE

__all__ = [
    "CLADE",
    "SPADE",
    "ConvEncoder",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "Pix2PixHDGenerator",
    "SPADEGenerator",
    "SPADEResBlock",
    "GENERATOR_ARCHS",
    "build_discriminator",
    "build_encoder",
    "build_generator",
    "count_parameters",
    "init_weights",
    "published_generator_config",
    "published_parameter_counts",
    "reparameterize",
    "split_discriminator_output",
    "start_size",
]

GENERATOR_ARCHS = ("spade", "clade", "pix2pixhd")
IMAGE_CHANNELS = 3


def build_generator(
    cfg: GeneratorConfig,
    label_channels: int,
    image_size: tuple[int, int],
    z_dim: int | None = None,
) -> nn.Module:
    """The generator for ``cfg.arch``; ``z_dim`` set means the VAE variant (G starts from z)."""
    if cfg.arch in ("spade", "clade"):
        return SPADEGenerator(cfg, label_channels, image_size, z_dim)
    if cfg.arch == "pix2pixhd":
        if z_dim is not None:
            raise ConfigError(
                "encoder.use_vae: true needs generator.arch 'spade' or 'clade'; the pix2pixhd baseline "
                "has no z input (set encoder.use_vae: false or change generator.arch)"
            )
        return Pix2PixHDGenerator(cfg, label_channels, image_size)
    raise ConfigError(f"generator.arch: got {cfg.arch!r}, expected one of {', '.join(GENERATOR_ARCHS)}")


def build_discriminator(cfg: DiscriminatorConfig, label_channels: int) -> MultiscaleDiscriminator:
    """D on ``cat(label map, image)``: ``label_channels + 3`` input channels."""
    return MultiscaleDiscriminator(cfg, label_channels + IMAGE_CHANNELS)


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


def published_parameter_counts(spec: DatasetSpec) -> dict[str, int]:
    """Parameter counts of G, D and E at the official configuration for ``spec``'s channels.

    Built on the meta device: no memory is allocated and nothing is initialised, so the
    full-size networks cost milliseconds.
    """
    with torch.device("meta"):
        generator = build_generator(published_generator_config(spec.name), spec.label_channels, spec.image_size)
        discriminator = build_discriminator(DiscriminatorConfig(), spec.label_channels)
        encoder = build_encoder(EncoderConfig())
    return {
        "G": count_parameters(generator),
        "D": count_parameters(discriminator),
        "E": count_parameters(encoder),
    }
