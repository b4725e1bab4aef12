"""Generators: the SPADE generator (paper section 3.2, Fig. 4 and appendix A) and the baseline.

``SPADEResBlock`` and ``SPADEGenerator`` follow docs/SPADE.md section 1 layer for layer, with
the official submodule names (``fc``, ``head_0``, ``G_middle_0/1``, ``up_0..up_4``,
``conv_img``) so that the authors' ``latest_net_G.pth`` loads with ``strict=True``. The
normalisation inside the blocks is SPADE or, as a drop-in, CLADE (``generator.arch``).

``Pix2PixHDGenerator`` is the paper's baseline family (Table 1, "pix2pixHD"): an
encoder / residual / decoder network that sees the label map only at its input.

``OASISGenerator`` is the generator of OASIS (Sushko et al., ICLR 2021; docs/OASIS.md
section 2): the same SPADE residual blocks, one fewer of them at full width, no encoder,
and 3D noise concatenated with the label map. Its submodule names (``fc``, ``body.<i>``,
``conv_img``) are the authors' so that their weights map onto it key for key.

Both SPADE-based generators take 3D noise when ``generator.noise_channels`` > 0
(:mod:`gaugan.models.noise`): ``G(seg, z)`` with ``z`` the (B, C, H, W) noise (or (B, C)
vectors, spread over the image), drawn from the global RNG when not given.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gaugan.config import ConfigError, GeneratorConfig
from gaugan.data.semantic import SemanticLabels
from gaugan.models.init import init_weights
from gaugan.models.layers import conv_norm, maybe_spectral_norm
from gaugan.models.noise import sample_noise, spread
from gaugan.models.spade import CLADE, SPADE, Segmap, dense_segmap, prepare_segmap

# Number of x2 upsamplings from the start size to the output (docs/SPADE.md section 1).
NUM_UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}

NormFactory = Callable[[int], nn.Module]


# --------------------------------------------------------------------------------------
# Blocks.


class SPADEResBlock(nn.Module):
    """Residual block with a SPADE (or CLADE) norm before each of its two 3x3 convolutions.

    ``fin -> min(fin, fout) -> fout``; a learned 1x1 shortcut (no bias) with its own norm
    only when ``fin != fout``. LeakyReLU(0.2) after each norm.
    """

    def __init__(self, in_channels: int, out_channels: int, make_norm: NormFactory, use_spectral_norm: bool) -> None:
        super().__init__()
        middle_channels = min(in_channels, out_channels)
        self.learned_shortcut = in_channels != out_channels
        # Registration order follows the official module so state_dict keys come out in
        # the same order (convs first, then norms).
        self.conv_0 = maybe_spectral_norm(nn.Conv2d(in_channels, middle_channels, 3, padding=1), use_spectral_norm)
        self.conv_1 = maybe_spectral_norm(nn.Conv2d(middle_channels, out_channels, 3, padding=1), use_spectral_norm)
        if self.learned_shortcut:
            self.conv_s = maybe_spectral_norm(nn.Conv2d(in_channels, out_channels, 1, bias=False), use_spectral_norm)
        self.norm_0 = make_norm(in_channels)
        self.norm_1 = make_norm(middle_channels)
        if self.learned_shortcut:
            self.norm_s = make_norm(in_channels)

    def forward(self, x: Tensor, seg: Segmap) -> Tensor:
        seg = prepare_segmap(seg, x.shape[-2:], self.norm_0.label_kernel_size)  # once for the block's norms
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return shortcut + dx


class ResnetBlock(nn.Module):
    """pix2pixHD residual block: reflect-pad, conv, norm, ReLU, reflect-pad, conv, norm; plus x."""

    def __init__(self, channels: int, use_spectral_norm: bool, kernel_size: int = 3) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(padding),
            conv_norm(nn.Conv2d(channels, channels, kernel_size), use_spectral_norm, "instance"),
            nn.ReLU(),
            nn.ReflectionPad2d(padding),
            conv_norm(nn.Conv2d(channels, channels, kernel_size), use_spectral_norm, "instance"),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


# --------------------------------------------------------------------------------------
# Networks.


def start_size(cfg: GeneratorConfig, image_size: tuple[int, int]) -> tuple[int, int]:
    """(sh, sw): the spatial size G starts from, ``image_size / 2**num_upsamplings``.

    The official code computes ``sw = crop // 2**n`` and ``sh = round(sw / aspect_ratio)``;
    both agree with this whenever the output has the requested size, and a size that is not
    a multiple of ``2**n`` (which the official code silently turns into a smaller output) is
    an error here.
    """
    height, width = image_size
    factor = 2 ** NUM_UPSAMPLINGS[cfg.num_upsampling_layers]
    if height % factor or width % factor or height < factor or width < factor:
        raise ConfigError(
            f"image size {height}x{width} (HxW, from data.crop_size and data.aspect_ratio) must be a positive "
            f"multiple of {factor} in both sides for generator.num_upsampling_layers="
            f"{cfg.num_upsampling_layers!r} ({NUM_UPSAMPLINGS[cfg.num_upsampling_layers]} upsamplings); "
            f"change data.crop_size / data.aspect_ratio or generator.num_upsampling_layers"
        )
    return height // factor, width // factor


class SPADEGenerator(nn.Module):
    """The SPADE generator: from the downsampled label map (or from z with the VAE) up to the image.

    ``G(seg, z=None)``: ``seg`` is the (B, label_channels, H, W) one-hot map (+ edge channel),
    or the same as :class:`~gaugan.data.semantic.SemanticLabels` (the norms then compute
    their label convolutions as exact lookups). With ``z_dim`` set (VAE), the start tensor
    comes from ``fc(z)``; ``z=None`` draws N(0, 1) on ``seg``'s device (in ``seg``'s dtype
    for a one-hot tensor, else fp32). ``cfg.arch`` selects SPADE or CLADE norms.
    """

    def __init__(
        self,
        cfg: GeneratorConfig,
        label_channels: int,
        image_size: tuple[int, int],
        z_dim: int | None = None,
    ) -> None:
        super().__init__()
        if cfg.arch not in ("spade", "clade"):
            raise ConfigError(f"generator.arch: SPADEGenerator builds 'spade' or 'clade', got {cfg.arch!r}")
        self.num_upsampling_layers = cfg.num_upsampling_layers
        self.z_dim = z_dim
        self.noise_channels = cfg.noise_channels
        if self.noise_channels and (z_dim is not None or cfg.arch != "spade"):
            raise ConfigError("generator.noise_channels > 0 needs generator.arch 'spade' or 'oasis' without the VAE "
                              "encoder (set generator.noise_channels=0 or encoder.use_vae=false)")
        self.start_height, self.start_width = start_size(cfg, image_size)
        if cfg.param_free_norm == "instance" and self.start_height * self.start_width == 1:
            # Instance statistics of a single pixel are undefined (torch refuses them).
            raise ConfigError(
                f"generator.param_free_norm='instance' needs more than one pixel at the start size, but image "
                f"size {image_size[0]}x{image_size[1]} with generator.num_upsampling_layers="
                f"{cfg.num_upsampling_layers!r} starts at 1x1; use a batch norm, a larger data.crop_size or "
                f"fewer upsamplings"
            )
        ngf = cfg.ngf
        self.start_channels = 16 * ngf
        condition_channels = label_channels + self.noise_channels
        if cfg.arch == "spade":
            make_norm: NormFactory = _spade_norm(cfg, condition_channels)
        else:
            make_norm = functools.partial(CLADE, label_channels=label_channels, param_free_norm=cfg.param_free_norm)
        block = functools.partial(SPADEResBlock, make_norm=make_norm, use_spectral_norm=cfg.use_spectral_norm)

        if z_dim is not None:
            # VAE: z -> the start tensor; the label map enters only through the norms.
            self.fc = nn.Linear(z_dim, 16 * ngf * self.start_height * self.start_width)
        else:
            self.fc = nn.Conv2d(condition_channels, 16 * ngf, 3, padding=1)
        self.head_0 = block(16 * ngf, 16 * ngf)
        self.G_middle_0 = block(16 * ngf, 16 * ngf)
        self.G_middle_1 = block(16 * ngf, 16 * ngf)
        self.up_0 = block(16 * ngf, 8 * ngf)
        self.up_1 = block(8 * ngf, 4 * ngf)
        self.up_2 = block(4 * ngf, 2 * ngf)
        self.up_3 = block(2 * ngf, 1 * ngf)
        final_channels = ngf
        if cfg.num_upsampling_layers == "most":
            self.up_4 = block(1 * ngf, ngf // 2)
            final_channels = ngf // 2
        self.conv_img = nn.Conv2d(final_channels, 3, 3, padding=1)
        init_weights(self)

    def forward(self, seg: Tensor | SemanticLabels, z: Tensor | None = None) -> Tensor:
        if self.z_dim is not None:
            if z is None:
                like = seg if isinstance(seg, Tensor) else seg.index
                dtype = seg.dtype if isinstance(seg, Tensor) else torch.float32
                z = torch.randn(like.shape[0], self.z_dim, device=like.device, dtype=dtype)
            x = self.fc(z).view(-1, self.start_channels, self.start_height, self.start_width)
        else:
            seg = with_noise(seg, z, self.noise_channels, self.fc.weight.dtype)
            x = self.fc(dense_segmap(seg, (self.start_height, self.start_width), self.fc.weight.dtype))

        x = self.head_0(x, seg)
        x = _up(x)
        x = self.G_middle_0(x, seg)
        if self.num_upsampling_layers in ("more", "most"):
            x = _up(x)
        x = self.G_middle_1(x, seg)
        x = self.up_0(_up(x), seg)
        x = self.up_1(_up(x), seg)
        x = self.up_2(_up(x), seg)
        x = self.up_3(_up(x), seg)
        if self.num_upsampling_layers == "most":
            x = self.up_4(_up(x), seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _spade_norm(cfg: GeneratorConfig, condition_channels: int) -> NormFactory:
    return functools.partial(
        SPADE,
        label_channels=condition_channels,
        param_free_norm=cfg.param_free_norm,
        kernel_size=cfg.spade_kernel_size,
        hidden_channels=cfg.spade_hidden,
    )


def with_noise(seg: Segmap, noise: Tensor | None, noise_channels: int, dtype: torch.dtype) -> Segmap:
    """The label map with the 3D noise in front of its channels: ``cat(noise, one-hot)``.

    Without noise channels, ``seg`` as it is (and a given ``noise`` is an error). ``noise`` is
    (B, C, H, W) at the label map's size, or (B, C) vectors to spread over it; None draws one
    vector per image from the global RNG (the published sampling).
    """
    if not noise_channels:
        if noise is not None:
            raise ValueError("this generator takes no noise (generator.noise_channels is 0)")
        return seg
    onehot = dense_segmap(seg, dtype=seg.dtype if isinstance(seg, Tensor) else dtype)
    batch, _, height, width = onehot.shape
    if noise is None:
        noise = sample_noise(batch, noise_channels, (height, width), onehot.device)
    elif noise.dim() == 2:
        noise = spread(noise, (height, width))
    if tuple(noise.shape) != (batch, noise_channels, height, width):
        raise ValueError(f"noise of shape {tuple(noise.shape)} for a ({batch}, {noise_channels}, {height}, {width}) "
                         f"input: (batch, generator.noise_channels, label map height, width) expected")
    return torch.cat([noise.to(device=onehot.device, dtype=onehot.dtype), onehot], dim=1)


class Pix2PixHDGenerator(nn.Module):
    """The pix2pixHD-style baseline (the official SPADE code's ``pix2pixhd`` generator).

    Label map only at the input: reflection pad + 7x7 conv (ngf), ``pix2pixhd_num_downsample``
    stride-2 3x3 convs (channels doubling), ``pix2pixhd_num_blocks`` residual blocks,
    as many stride-2 transposed convs back, reflection pad + 7x7 conv to RGB, tanh. Every
    conv but the last has a parameter-free instance norm; ReLU activations. Spectral norm
    on those convs follows ``generator.use_spectral_norm`` (the official baseline's default
    ``norm_G`` is plain "instance": set it to false for that exact variant).
    """

    def __init__(self, cfg: GeneratorConfig, label_channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        factor = 2**cfg.pix2pixhd_num_downsample
        height, width = image_size
        if height % factor or width % factor:
            raise ConfigError(
                f"image size {height}x{width} (HxW) must be a multiple of {factor} for "
                f"generator.pix2pixhd_num_downsample={cfg.pix2pixhd_num_downsample}; change data.crop_size / "
                f"data.aspect_ratio or generator.pix2pixhd_num_downsample"
            )
        sn = cfg.use_spectral_norm
        ngf = cfg.ngf
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            conv_norm(nn.Conv2d(label_channels, ngf, 7), sn, "instance"),
            nn.ReLU(),
        ]
        channels = ngf
        for _ in range(cfg.pix2pixhd_num_downsample):
            layers += [conv_norm(nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), sn, "instance"), nn.ReLU()]
            channels *= 2
        layers += [ResnetBlock(channels, sn) for _ in range(cfg.pix2pixhd_num_blocks)]
        for _ in range(cfg.pix2pixhd_num_downsample):
            upsample = nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1)
            layers += [conv_norm(upsample, sn, "instance"), nn.ReLU()]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, seg: Segmap, z: Tensor | None = None) -> Tensor:
        if z is not None:
            raise ValueError("the pix2pixhd generator takes no z (encoder.use_vae needs generator.arch spade or clade)")
        return self.model(dense_segmap(seg, dtype=next(self.parameters()).dtype))


# Channels of the OASIS generator's blocks, in units of ngf (docs/OASIS.md section 2): six
# blocks for the published five upsamplings; "more" adds one block at full width in front.
OASIS_BLOCK_WIDTHS = {"normal": (16, 16, 16, 8, 4, 2, 1), "more": (16, 16, 16, 16, 8, 4, 2, 1)}


class OASISGenerator(nn.Module):
    """The OASIS generator: ``fc`` on the downsampled (noise, label map), then SPADE residual
    blocks ``body.0 .. body.5`` with a nearest x2 upsampling between two blocks, then
    LeakyReLU(0.2), ``conv_img`` and tanh.

    Block widths are :data:`OASIS_BLOCK_WIDTHS` x ngf (16, 16, 16, 8, 4, 2, 1 at the published
    "normal": 16->16, 16->16, 16->8, 8->4, 4->2, 2->1), so G starts at ``image_size / 32``.
    The SPADE layers see ``cat(noise, one-hot)`` (``label_channels + noise_channels``
    channels, hidden width ``spade_hidden``), as does ``fc``. ``G(seg, z=None)``: ``z`` is the
    3D noise (:func:`with_noise`).
    """

    def __init__(self, cfg: GeneratorConfig, label_channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        if cfg.num_upsampling_layers not in OASIS_BLOCK_WIDTHS:
            raise ConfigError(
                f"generator.num_upsampling_layers: got {cfg.num_upsampling_layers!r} with generator.arch 'oasis', "
                f"expected one of {', '.join(OASIS_BLOCK_WIDTHS)}"
            )
        widths = [w * cfg.ngf for w in OASIS_BLOCK_WIDTHS[cfg.num_upsampling_layers]]
        self.noise_channels = cfg.noise_channels
        self.start_height, self.start_width = start_size(cfg, image_size)
        condition_channels = label_channels + self.noise_channels
        block = functools.partial(SPADEResBlock, make_norm=_spade_norm(cfg, condition_channels),
                                  use_spectral_norm=cfg.use_spectral_norm)
        self.fc = nn.Conv2d(condition_channels, widths[0], 3, padding=1)
        self.body = nn.ModuleList(block(fin, fout) for fin, fout in zip(widths[:-1], widths[1:]))
        self.conv_img = nn.Conv2d(widths[-1], 3, 3, padding=1)
        init_weights(self)

    def forward(self, seg: Segmap, z: Tensor | None = None) -> Tensor:
        seg = with_noise(seg, z, self.noise_channels, self.fc.weight.dtype)
        x = self.fc(dense_segmap(seg, (self.start_height, self.start_width), self.fc.weight.dtype))
        for index, block in enumerate(self.body):
            if index:
                x = _up(x)
            x = block(x, seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
