"""Generation from the configuration, shared by the generate stage and `gaugan evaluate`.

Paper section 4: one image per validation label map, from the generator the configuration
names: ``evaluate.checkpoint`` when set (ours or an official ``latest_net_G.pth``), else the
file ``evaluate.checkpoint_choice`` names in ``train.checkpoint_dir`` (``generator.pt``, or the
best one kept during training, gaugan/selection.py), with how it was chosen.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gaugan.config import Config
from gaugan.data.store import read_store
from gaugan.errors import UserError
from gaugan.generate import generate_split
from gaugan.models.loading import load_encoder, load_generator
from gaugan.selection import SELECTION_FILE, checkpoint_filename
from gaugan.synthesize import style_tensor
from gaugan.train.distributed import resolve_device
from pipeline.stage import require_input


def generator_checkpoint(cfg: Config, root: Path) -> Path:
    """``evaluate.checkpoint``, else the file ``evaluate.checkpoint_choice`` names in ``train.checkpoint_dir``."""
    if cfg.evaluate.checkpoint:
        return root / cfg.evaluate.checkpoint
    path = root / cfg.train.checkpoint_dir / checkpoint_filename(cfg.evaluate.checkpoint_choice)
    if cfg.evaluate.checkpoint_choice == "final":
        return require_input(path, "train")
    if not path.is_file():
        raise UserError(
            f"{path}: evaluate.checkpoint_choice={cfg.evaluate.checkpoint_choice!r} needs the best generator kept "
            "during training, written when evaluate.every_epochs > 0 and the metric could be computed during "
            "training (FID needs the Inception weights, mIoU a segmenter); retrain with them, or choose 'final'"
        )
    return path


def selection_record(cfg: Config, root: Path) -> dict[str, Any] | None:
    """How the chosen best generator was chosen (metric, value, epoch, step, split), or None."""
    choice = cfg.evaluate.checkpoint_choice
    path = root / cfg.train.checkpoint_dir / SELECTION_FILE
    if cfg.evaluate.checkpoint or choice == "final" or not path.is_file():
        return None
    return json.loads(path.read_text()).get(choice)


def generate(cfg: Config, root: Path, output_dir: Path, grid_path: Path | None) -> dict[str, Any]:
    """Every validation label map -> ``output_dir/<stem>.png`` (+ the sample grid); what was done."""
    store_dir = root / cfg.data.processed_dir
    spec = read_store(store_dir, cfg.data)[1]
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
        "checkpoint_choice": "evaluate.checkpoint" if cfg.evaluate.checkpoint else cfg.evaluate.checkpoint_choice,
        "selection": selection_record(cfg, root),
        "style_image": cfg.evaluate.style_image,
        "device": str(device),
    }
