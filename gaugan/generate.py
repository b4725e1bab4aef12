"""Synthesise every validation label map: the images that FID and mIoU are computed on.

Paper section 4: the generator, in eval mode, turns each validation label map into a
photo; those photos are scored against the real validation photos. This module writes
them as PNGs named after the label maps' stems, plus a sample grid (label | generated |
real), from any generator :func:`gaugan.models.loading.load_generator` reads (one of our
checkpoints, EMA weights preferred, or an official ``latest_net_G.pth``).

VAE generators (paper section 3.3) need a z per image. By default it comes from the prior
N(0, I) with a fixed seed, and z for image ``i`` depends only on ``(seed, i)``, so the
images do not change with the batch size or the device (docs/SPADE.md section 4: never
evaluate by encoding the ground-truth photo). With a style image, every z is sampled from
the encoder's posterior for that one photo. Generators with 3D noise (OASIS) get the noise
of image ``i`` from ``(seed, i)`` the same way (:func:`gaugan.models.noise.noise_for_images`).

Everything is written into a temporary folder that replaces the output folder at the
end: an interrupted run leaves the previous complete set, never a mix.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from gaugan.data.classes import class_table
from gaugan.data.dataset import StoreDataset, make_loader
from gaugan.data.io import DataError, OutputMarker, atomic_save_png, check_replaceable, replace_dir
from gaugan.data.registry import DatasetSpec
from gaugan.data.semantic import semantic_input
from gaugan.data.store import read_manifest, spec_from_manifest
from gaugan.errors import UserError
from gaugan.generated import split_stems
from gaugan.models.encoder import ConvEncoder
from gaugan.models.loading import LoadedGenerator
from gaugan.models.noise import noise_for_images
from gaugan.visualize import sample_grid, to_uint8

GRID_ROWS = 8
# Marks a folder of generated images, the only kind replace_dir may swap out.
GENERATED_MARKER = OutputMarker("generated.json", "gaugan-generated-v1", "evaluate.output_dir")


class GenerationError(UserError, ValueError):
    """The generator and the store do not fit together, or the outputs cannot be written."""


@dataclass(frozen=True)
class GenerationResult:
    output_dir: Path
    num_images: int
    seconds: float
    weights: str  # which weights generated: "G_ema", "G", "latest_net_G"
    latent: str  # how z was chosen (VAE), or "none"

    @property
    def images_per_s(self) -> float:
        return self.num_images / max(self.seconds, 1e-9)

    def as_dict(self) -> dict[str, object]:
        return {
            "output_dir": str(self.output_dir),
            "num_images": self.num_images,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "weights": self.weights,
            "latent": self.latent,
        }


def check_generator_fits_store(loaded: LoadedGenerator, store_spec: DatasetSpec, store_dir: Path) -> None:
    """The generator must take the store's label channels and produce its image size."""
    if loaded.spec.label_channels != store_spec.label_channels or loaded.spec.image_size != store_spec.image_size:
        raise GenerationError(
            f"{loaded.path}: the generator was built for {loaded.spec.label_channels} label channels at "
            f"{loaded.spec.image_size[0]}x{loaded.spec.image_size[1]} (dataset {loaded.spec.name!r}), but the store "
            f"{store_dir} holds {store_spec.label_channels} channels at {store_spec.image_size[0]}x"
            f"{store_spec.image_size[1]} (dataset {store_spec.name!r}); check data.dataset and the data size settings"
        )


def latent_for(indices: Tensor, z_dim: int, seed: int) -> Tensor:
    """(B, z_dim) N(0, 1) samples, row ``b`` a function of ``(seed, indices[b])`` only."""
    rows = [
        torch.randn(z_dim, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(index)))
        for index in indices.tolist()
    ]
    return torch.stack(rows)


@torch.no_grad()
def synthesize_batch(
    generator: torch.nn.Module,
    batch: dict[str, Tensor],
    num_label_values: int,
    device: torch.device,
    z_dim: int | None,
    seed: int,
    mu: Tensor | None = None,
    logvar: Tensor | None = None,
    noise_channels: int = 0,
) -> Tensor:
    """uint8 (B, 3, H, W) images for a store batch, the generator in whatever mode it is in.

    VAE generators: z of image ``i`` from ``(seed, i)`` (:func:`latent_for`): the prior, or,
    with a style's ``mu`` and ``logvar``, the encoder's reparameterisation
    ``mu + eps * exp(logvar / 2)`` with that same per-image noise, so the images never
    depend on the batching. Generators with ``noise_channels`` of 3D noise: the noise of
    image ``i`` from ``(seed, i)`` likewise.
    """
    instance = batch.get("instance")
    instance = instance.to(device, non_blocking=True) if instance is not None else None
    seg = semantic_input(batch["label"].to(device, non_blocking=True), num_label_values, instance)
    z = None
    if z_dim is not None:
        z = latent_for(batch["index"], z_dim, seed).to(device)
        if mu is not None:
            z = mu + z * torch.exp(0.5 * logvar)
    elif noise_channels:
        z = noise_for_images(batch["index"], noise_channels, seg.shape[-2:], seed, device)
    return to_uint8(generator(seg, z))


@torch.no_grad()
def generate_split(
    loaded: LoadedGenerator,
    store_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    device: torch.device,
    batch_size: int,
    seed: int = 0,
    split: str = "val",
    style: Tensor | None = None,
    encoder: ConvEncoder | None = None,
    grid_path: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> GenerationResult:
    """Generate one PNG per label map of ``split``; returns what was done.

    ``style`` ((1, 3, H, W) in [-1, 1]) with its ``encoder``: z from the encoder's
    posterior for that photo. Otherwise, VAE generators draw z from the prior (``seed``).
    """
    store_dir, output_dir = Path(store_dir), Path(output_dir)
    check_replaceable(output_dir, GENERATED_MARKER)
    manifest = read_manifest(store_dir)
    store_spec = spec_from_manifest(manifest)
    check_generator_fits_store(loaded, store_spec, store_dir)
    stems = split_stems(store_dir, split)
    dataset = StoreDataset(store_dir, split, store_spec, train=False)
    if len(stems) != len(dataset):
        raise DataError(f"{store_dir / split}: {len(stems)} stems for {len(dataset)} items; re-run the preprocess stage")
    if style is not None and loaded.z_dim is None:
        raise GenerationError(f"{loaded.path}: a style image needs a VAE generator (encoder.use_vae=true); this one is not")
    if style is not None and encoder is None:
        raise GenerationError("a style image needs the style encoder of the checkpoint")

    generator = loaded.generator.to(device).eval()
    mu = logvar = None
    if style is not None:
        mu, logvar = encoder.to(device).eval()(style.to(device))
    latent = "none (not a VAE generator)"
    noise_channels = loaded.config.noise_channels
    if noise_channels:
        latent = f"3D noise N(0, I) of {noise_channels} channels, one vector per image from (seed {seed}, i)"
    if loaded.z_dim is not None:
        latent = (f"posterior of the style image (encoder mean/variance), seed {seed}" if style is not None
                  else f"prior N(0, I), seed {seed}, z of image i from (seed, i)")

    tmp_dir = output_dir.with_name(f".{output_dir.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    grid_rows: list[tuple[Tensor, Tensor, Tensor]] = []
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers)
    start = time.perf_counter()
    count = 0
    try:
        for batch in loader:
            fake = synthesize_batch(generator, batch, store_spec.num_label_values, device, loaded.z_dim, seed, mu,
                                    logvar, noise_channels)
            for image, index in zip(fake, batch["index"].tolist()):
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_dir / f"{stems[index]}.png", format="PNG")
            count += fake.shape[0]
            if grid_path is not None and sum(len(rows[0]) for rows in grid_rows) < GRID_ROWS:
                grid_rows.append((batch["label"], fake, batch["image"]))
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # the previous complete set stays in place
        raise
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    GENERATED_MARKER.write(tmp_dir, split=split, num_images=count)
    replace_dir(tmp_dir, output_dir, GENERATED_MARKER)

    if grid_path is not None and grid_rows:
        labels, fakes, reals = (torch.cat(parts)[:GRID_ROWS] for parts in zip(*grid_rows))
        atomic_save_png(sample_grid(labels, fakes, reals, class_table(store_spec, manifest)[1]), grid_path)
    return GenerationResult(output_dir, count, seconds, loaded.weights, latent)
