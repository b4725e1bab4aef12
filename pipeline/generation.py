"""Generation from the configuration, shared by the generate stage and `gaugan evaluate`.

Paper section 4: one image per validation label map, from the generator the configuration
names: ``evaluate.checkpoint`` when set (ours or an official ``latest_net_G.pth``), else the
train stage's ``<train.checkpoint_dir>/generator.pt``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gaugan.config import Config
from gaugan.data.store import read_manifest, spec_from_manifest
from gaugan.generate import generate_split
from gaugan.models.loading import load_encoder, load_generator
from gaugan.synthesize import style_tensor
from gaugan.train.checkpoint import GENERATOR_CHECKPOINT
from gaugan.train.distributed import resolve_device


def generator_checkpoint(cfg: Config, root: Path) -> Path:
    """``evaluate.checkpoint``, else the train stage's ``generator.pt``."""
    if cfg.evaluate.checkpoint:
        return root / cfg.evaluate.checkpoint
    return root / cfg.train.checkpoint_dir / GENERATOR_CHECKPOINT


def generate(cfg: Config, root: Path, output_dir: Path, grid_path: Path | None) -> dict[str, Any]:
    """Every validation label map -> ``output_dir/<stem>.png`` (+ the sample grid); what was done."""
    store_dir = root / cfg.data.processed_dir
    spec = spec_from_manifest(read_manifest(store_dir))
    device = resolve_device(cfg.train.device)
    checkpoint = generator_checkpoint(cfg, root)
    loaded = load_generator(checkpoint, spec, prefer_ema=cfg.evaluate.use_ema, device=device)
    style = encoder = None
    if cfg.evaluate.style_image:
        encoder = load_encoder(checkpoint, device)
        style = style_tensor(root / cfg.evaluate.style_image, loaded.spec.image_size, device)
    result = generate_split(loaded, store_dir, output_dir, device, cfg.evaluate.batch_size, seed=cfg.evaluate.seed,
                            style=style, encoder=encoder, grid_path=grid_path)
    return {
        **result.as_dict(),
        "output_dir": os.path.relpath(output_dir, root) if output_dir.is_relative_to(root) else str(output_dir),
        "checkpoint": os.path.relpath(checkpoint, root) if checkpoint.is_relative_to(root) else str(checkpoint),
        "checkpoint_source": loaded.source,
        "style_image": cfg.evaluate.style_image,
        "device": str(device),
    }
