"""Generate stage: one synthesised PNG per validation label map, and a sample grid.

Paper section 4: the images FID and mIoU are computed on. The generator is
``evaluate.checkpoint`` when set (one of ours, or an official ``latest_net_G.pth`` so that
Table 1 can be re-measured), else the train stage's ``<train.checkpoint_dir>/generator.pt``;
EMA weights when present and ``evaluate.use_ema``; eval mode; on ``train.device``.

DVC:
  params: data.processed_dir, train.checkpoint_dir, train.device, train.num_threads,
          evaluate.batch_size, evaluate.seed, evaluate.use_ema, evaluate.output_dir,
          evaluate.checkpoint, evaluate.style_image
  deps:   ${data.processed_dir}, ${train.checkpoint_dir}/generator.pt, gaugan code it imports
  outs:   ${evaluate.output_dir} (the PNGs), reports/generated_grid.png, reports/generation.json
"""

from __future__ import annotations

import os
from pathlib import Path

from gaugan.checkpoint import GENERATOR_CHECKPOINT
from gaugan.config import Config
from gaugan.data.io import atomic_write_json
from gaugan.data.store import read_manifest, spec_from_manifest
from gaugan.generate import generate_split
from gaugan.models.loading import load_encoder, load_generator
from gaugan.synthesize import style_tensor
from gaugan.threads import configure_threads
from gaugan.train.distributed import resolve_device
from pipeline.stage import require_input, run_stage

GRID_PATH = "reports/generated_grid.png"
REPORT_PATH = "reports/generation.json"


def generator_checkpoint(cfg: Config, root: Path) -> Path:
    if cfg.evaluate.checkpoint:
        return root / cfg.evaluate.checkpoint
    return require_input(root / cfg.train.checkpoint_dir / GENERATOR_CHECKPOINT, "train")


def run(cfg: Config, root: Path) -> None:
    threads = configure_threads(cfg.train.num_threads)  # no loader workers here
    store_dir = root / cfg.data.processed_dir
    spec = spec_from_manifest(read_manifest(store_dir))
    device = resolve_device(cfg.train.device)
    checkpoint = generator_checkpoint(cfg, root)
    loaded = load_generator(checkpoint, spec, prefer_ema=cfg.evaluate.use_ema, device=device)
    style = encoder = None
    if cfg.evaluate.style_image:
        encoder = load_encoder(checkpoint, device)
        style = style_tensor(root / cfg.evaluate.style_image, loaded.spec.image_size, device)
    result = generate_split(
        loaded, store_dir, root / cfg.evaluate.output_dir, device, cfg.evaluate.batch_size, seed=cfg.evaluate.seed,
        style=style, encoder=encoder, grid_path=root / GRID_PATH,
    )
    summary = {
        **result.as_dict(),
        "output_dir": cfg.evaluate.output_dir,
        "checkpoint": os.path.relpath(checkpoint, root) if checkpoint.is_relative_to(root) else str(checkpoint),
        "checkpoint_source": loaded.source,
        "style_image": cfg.evaluate.style_image,
        "device": str(device),
        "num_threads": threads.num_threads,
    }
    report = root / REPORT_PATH
    atomic_write_json(report, summary)
    print(f"generated {result.num_images} images into {cfg.evaluate.output_dir} "
          f"({result.images_per_s:.1f} images/s, weights {result.weights}, {device})")


if __name__ == "__main__":
    run_stage("generate", run)
