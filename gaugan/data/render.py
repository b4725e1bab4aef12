"""A picture of the store: photos over their coloured label maps and instance edges.

The preprocess stage writes it to ``reports/data/samples.png`` so a user sees at a glance
whether photos and labels line up and the classes look right.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from gaugan.data.classes import label_palette
from gaugan.data.dataset import StoreDataset
from gaugan.data.io import DataError, atomic_save_png
from gaugan.data.semantic import instance_edges


def render_samples(store_dir: str | os.PathLike, split: str, path: str | os.PathLike, count: int | None = None,
                   columns: int = 6) -> Path:
    """A grid PNG of photos, coloured label maps and instance edges (reports/data/samples.png).

    ``count`` defaults to 24 items for small images and 12 from 256 pixels on, so the grid
    stays a few MB at most.
    """
    dataset = StoreDataset(store_dir, split)
    if count is None:
        count = 24 if max(dataset.crop) < 256 else 12
    spec = dataset.spec
    stored = dataset.manifest.get("class_colours")  # with a class file's colours; older stores lack it
    palette = np.array(stored, dtype=np.uint8) if stored else label_palette(spec.num_label_values, spec.name)
    cells = []
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        image = item["image"].permute(1, 2, 0).numpy()
        colours = palette[item["label"].numpy().astype(np.int64)]
        if "instance" in item:
            edges = instance_edges(item["instance"][None])[0, 0].numpy() > 0
            colours = colours.copy()
            colours[edges] = 0
        cells.append(np.concatenate([image, colours], axis=0))
    if not cells:
        raise DataError(f"{store_dir}: split {split!r} is empty; no samples to render")
    height, width = cells[0].shape[:2]
    rows = -(-len(cells) // columns)
    grid = np.full((rows * (height + 2), min(columns, len(cells)) * (width + 2), 3), 255, dtype=np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, columns)
        grid[r * (height + 2):r * (height + 2) + height, c * (width + 2):c * (width + 2) + width] = cell
    scale = max(1, 128 // max(height // 2, 1))
    picture = Image.fromarray(grid)
    if scale > 1:
        picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    atomic_save_png(picture, path)
    return Path(path)
