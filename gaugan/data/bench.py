"""Loader benchmark: images per second the training loader delivers from a store.

The issue's bar is 400 images/s at 256x256 on a 2-core CPU, so that a GPU training step
(paper section 4, batch 32) never waits for data. The benchmark builds (or reuses) a
store, iterates the real training loader (random crop + flip, workers, collation)
through several epochs and times everything after a warm-up. The CPU load at the time
is recorded with the number, since other processes on the machine change it.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path

import torch

from gaugan.config import DataConfig
from gaugan.data.builtin import write_landscapes
from gaugan.data.dataset import StoreDataset, make_loader
from gaugan.data.preprocess import write_store
from gaugan.data.registry import resolve_dataset
from gaugan.data.sources import list_custom


def build_benchmark_store(work_dir: str | os.PathLike, size: int = 256, num_images: int = 256, seed: int = 0,
                          num_workers: int = 0) -> Path:
    """A landscapes store like the paper's 256x256 setting: stored at load size 286/256 * size, cropped to size."""
    work_dir = Path(work_dir)
    load_size = round(size * 286 / 256)
    raw = work_dir / "raw"
    write_landscapes(raw, num_images, 4, size=load_size, seed=seed, num_workers=num_workers)
    data = DataConfig(dataset="landscapes", load_size=load_size, crop_size=size)
    spec = resolve_dataset(data)
    store = work_dir / "store"
    write_store(list_custom(raw, require_instances=True, dataset="landscapes"), spec, store, num_workers=num_workers)
    shutil.rmtree(raw, ignore_errors=True)
    return store


def benchmark_loader(store_dir: str | os.PathLike, batch_size: int = 32, num_workers: int = 2, num_batches: int = 100,
                     warmup_batches: int = 10, seed: int = 0, split: str = "train") -> dict:
    """Time ``num_batches`` batches of the training loader after ``warmup_batches``."""
    dataset = StoreDataset(store_dir, split, train=split == "train", seed=seed)
    loader = make_loader(dataset, batch_size, shuffle=True, num_workers=num_workers, seed=seed, drop_last=True)
    if len(loader) == 0:
        raise ValueError(f"{store_dir}: {len(dataset)} items, fewer than one batch of {batch_size}")
    load_before = os.getloadavg()
    seen = timed_images = 0
    start = None
    epoch = 0
    while seen < warmup_batches + num_batches:
        dataset.set_epoch(epoch)
        for batch in loader:
            if seen == warmup_batches:
                start = time.perf_counter()
            if start is not None:
                timed_images += batch["image"].shape[0]
            seen += 1
            if seen >= warmup_batches + num_batches:
                break
        epoch += 1
    seconds = time.perf_counter() - start
    image_shape = list(batch["image"].shape[1:])
    del loader  # stop the persistent workers
    return {
        "images_per_s": round(timed_images / seconds, 1),
        "seconds": round(seconds, 3),
        "images_timed": timed_images,
        "config": {
            "store": str(store_dir), "split": split, "items": len(dataset), "batch_size": batch_size,
            "num_workers": num_workers, "num_batches": num_batches, "warmup_batches": warmup_batches,
            "image_shape_chw": image_shape, "stored_size": dataset.info["stored_size"],
            "transforms": "random crop + horizontal flip" if dataset.train else "none",
        },
        "uptime": {"loadavg_before": [round(v, 2) for v in load_before],
                   "loadavg_after": [round(v, 2) for v in os.getloadavg()]},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }
