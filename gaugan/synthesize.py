"""One image from one label map: the paper's test-time use (section 4; docs/SPADE.md section 3).

The label map is read as class indices, mapped with the dataset's conventions (don't-care
value or the stored don't-care index, valid range), resized with nearest neighbours to the generator's size (as the
official test does), turned into the one-hot map with the instance edge channel where the
dataset uses one, and fed to the generator in eval mode. A VAE generator draws z from the
prior with the given seed, or encodes a style image. A generator with 3D noise (OASIS) gets
the seed's noise vector at every pixel, and optionally other seeds' vectors in the regions
of chosen classes (the paper's local re-sampling; :func:`gaugan.models.noise.edited_noise`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gaugan.data.io import atomic_save_image, check_same_size, image_format, map_labels, read_image, read_index_map
from gaugan.data.registry import PUBLISHED, DatasetSpec
from gaugan.data.semantic import semantic_input
from gaugan.errors import UserError
from gaugan.models.encoder import ConvEncoder, reparameterize
from gaugan.models.loading import LoadedGenerator, load_encoder, load_generator
from gaugan.models.noise import edited_noise
from gaugan.train.distributed import resolve_device
from gaugan.visualize import to_uint8


class SynthesisError(UserError, ValueError):
    """The inputs of a synthesis do not fit the model (instance map, style image, device)."""


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) integer map -> ``size`` (H, W) as int64, with PIL's nearest neighbour (the official test's resize).

    8-bit maps are resized as they are; wider ones as 32-bit ids (Cityscapes instances),
    whose nearest-neighbour grid is the same.
    """
    height, width = size
    if array.shape == (height, width):
        return array.astype(np.int64)
    image = Image.fromarray(array if array.dtype == np.uint8 else array.astype(np.int32))  # mode "L" or "I"
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST), dtype=np.int64)


def read_label_map(
    spec: DatasetSpec, label_path: str | os.PathLike, setting: str | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Stored label indices at the network size ``spec.image_size``, and the file's own (H, W).

    The file is decoded in its own width (one byte a pixel for 8-bit and palette maps) and
    checked at full resolution before the resize. Both the dataset's raw don't-care value
    (255 for COCO-Stuff) and the stored don't-care index ``label_nc`` (what the studio
    paints and saves) mean don't care. Errors name the file, the value and ``setting``.
    """
    raw = read_index_map(label_path, compact=True)
    map_labels(np.unique(raw), spec, label_path, setting, dontcare_index=True)  # every value, checked once
    labels = map_labels(resize_nearest(raw, spec.image_size), spec, label_path, setting, dontcare_index=True)
    return labels, raw.shape


def read_instance_map(
    spec: DatasetSpec, instance_path: str | os.PathLike, label_shape: tuple[int, int], label_path: str | os.PathLike
) -> np.ndarray:
    """Instance ids at the network size; the map must have its label map's size (H, W) ``label_shape``."""
    ids = read_index_map(instance_path, "instance map", compact=True)
    check_same_size(np.broadcast_to(False, label_shape), ids, label_path, instance_path, "the instance map")
    return resize_nearest(ids, spec.image_size)


def read_label_input(
    spec: DatasetSpec,
    label_path: str | os.PathLike,
    instance_path: str | os.PathLike | None = None,
    setting: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Label indices (and instance ids) at the network size ``spec.image_size`` (``gaugan synthesize``).

    Errors name the file, the value and ``setting`` (what to change): out-of-range labels,
    a missing or unexpected instance map, label and instance maps of different sizes.
    """
    labels, label_shape = read_label_map(spec, label_path, setting)
    instance = None
    if spec.use_instance:
        if instance_path is None:
            raise SynthesisError(
                f"{label_path}: dataset {spec.name!r} uses instance edges (the model has an edge input channel); "
                f"pass its instance map with --instance"
            )
        instance = read_instance_map(spec, instance_path, label_shape, label_path)
    elif instance_path is not None:
        raise SynthesisError(
            f"{instance_path}: dataset {spec.name!r} has no instance edge channel in this model; drop --instance"
        )
    return labels, instance


def style_tensor(style_path: str | os.PathLike, size: tuple[int, int], device: torch.device) -> Tensor:
    """A photo -> (1, 3, H, W) in [-1, 1] at the network size (bicubic, as training images)."""
    height, width = size
    image = read_image(style_path).resize((width, height), Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return (array.float().div(127.5).sub(1.0)).unsqueeze(0).to(device)


def to_pil(image: Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> an RGB image."""
    return Image.fromarray(to_uint8(image[None])[0].permute(1, 2, 0).numpy())


@torch.no_grad()
def synthesize_image(
    loaded: LoadedGenerator,
    labels: np.ndarray,
    instance: np.ndarray | None = None,
    seed: int = 0,
    style: Tensor | None = None,
    encoder: ConvEncoder | None = None,
    class_seeds: Mapping[int, int] | None = None,
) -> Image.Image:
    """One image from label indices (H, W) at the generator's size, with the generator in eval mode.

    VAE generators: z from N(0, 1) seeded by ``seed``, or, with ``style`` (and its
    ``encoder``), sampled from the encoder's posterior for that image (the same seed).
    Generators with 3D noise: ``seed``'s noise, re-drawn from ``class_seeds[c]`` in class
    ``c``'s pixels.
    """
    generator = loaded.generator.eval()
    device = next(generator.parameters()).device
    label_tensor = torch.from_numpy(labels).unsqueeze(0).to(device)
    instance_tensor = torch.from_numpy(instance).unsqueeze(0).to(device) if instance is not None else None
    seg = semantic_input(label_tensor, loaded.spec.num_label_values, instance_tensor)
    z = None
    if loaded.z_dim is not None:
        random = torch.Generator(device=device).manual_seed(seed)
        if style is not None:
            if encoder is None:
                raise SynthesisError("a style image needs the style encoder of the checkpoint")
            mu, logvar = encoder.eval()(style.to(device))
            z = reparameterize(mu, logvar, generator=random)
        else:
            z = torch.randn(1, loaded.z_dim, device=device, generator=random)
    elif style is not None:
        raise SynthesisError(f"{loaded.path}: --style needs a VAE generator (encoder.use_vae=true); this one is not")
    noise_channels = loaded.config.noise_channels
    if noise_channels:
        z = edited_noise(label_tensor[0], noise_channels, seed, class_seeds)
    elif class_seeds:
        raise SynthesisError(f"{loaded.path}: re-drawing a class's noise needs a generator with 3D noise "
                             f"(generator.noise_channels > 0, e.g. OASIS); this one has none")
    return to_pil(generator(seg, z)[0])


def load_generator_for(
    checkpoint: str | os.PathLike, dataset: str | None, device: torch.device, prefer_ema: bool = True
) -> LoadedGenerator:
    """The generator of ``checkpoint``, refusing one trained on another dataset than ``dataset``.

    ``dataset`` gives an official file its published spec; ours carry their own, so it may
    be None for them.
    """
    spec = PUBLISHED.get(dataset) if dataset is not None else None
    loaded = load_generator(checkpoint, spec=spec, prefer_ema=prefer_ema, device=device)
    if dataset is not None and loaded.spec.name != dataset:
        raise SynthesisError(
            f"{checkpoint}: the checkpoint was trained on dataset {loaded.spec.name!r} but --dataset is {dataset!r}; "
            f"use --dataset {loaded.spec.name} (its label conventions are the model's)"
        )
    return loaded


def synthesize_file(
    checkpoint: str | os.PathLike,
    dataset: str,
    label_path: str | os.PathLike,
    output: str | os.PathLike,
    instance_path: str | os.PathLike | None = None,
    style_path: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    prefer_ema: bool = True,
    class_seeds: Mapping[int, int] | None = None,
) -> Path:
    """``gaugan synthesize``: read the inputs, generate, write ``output`` atomically in the
    format its suffix names (PNG, JPEG, WebP)."""
    output = Path(output)
    if output.is_dir():  # checked before the model is loaded, as the suffix is
        raise SynthesisError(f"--output {output}: is a folder; name the image file, e.g. {output / 'image.png'}")
    try:
        image_format(output)
    except ValueError as err:
        raise SynthesisError(f"--output {err}") from err
    torch_device = resolve_device(device, setting="--device")
    loaded = load_generator_for(checkpoint, dataset, torch_device, prefer_ema)
    spec = loaded.spec
    setting = (
        f"--dataset (is {dataset!r} the dataset of this label map? the model expects indices 0.."
        f"{spec.num_label_values - 1})"
    )
    labels, instance = read_label_input(spec, label_path, instance_path, setting)
    style = encoder = None
    if style_path is not None:
        if loaded.z_dim is None:
            raise SynthesisError(
                f"{checkpoint}: --style needs a VAE generator (trained with encoder.use_vae=true); this checkpoint "
                f"has none, drop --style"
            )
        encoder = load_encoder(checkpoint, torch_device)
        style = style_tensor(style_path, spec.image_size, torch_device)
    outside = sorted(index for index in class_seeds or {} if index >= spec.num_label_values)
    if outside:
        raise SynthesisError(f"--region: class {outside[0]} is outside the model's classes 0..{spec.num_label_values - 1}")
    image = synthesize_image(loaded, labels, instance, seed, style, encoder, class_seeds)
    atomic_save_image(image, output)
    return output
