"""The folder of generated validation images: their names and reading them back.

Paper section 4 scores one synthesised image per validation label map. The images are
``<evaluate.output_dir>/<stem>.png``, where ``stem`` is the label map's file stem as the
store lists it, so that :mod:`gaugan.generate` (which writes them) and
:mod:`gaugan.scoring` (which pairs them with the real photos and label maps) agree
without either importing the other's dependencies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gaugan.data.io import DataError


def split_stems(store_dir: str | os.PathLike, split: str = "val") -> list[str]:
    """The file stems of a store split, in store order (generated PNGs are named after them)."""
    path = Path(store_dir) / split / "stems.json"
    try:
        stems = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DataError(f"{path}: the store has no stem list for split {split!r}; re-run the preprocess stage") from err
    if len(set(stems)) != len(stems):
        raise DataError(f"{path}: duplicate stems in split {split!r}; generated files would overwrite each other")
    return stems


def read_generated(output_dir: Path, stems: list[str], size: tuple[int, int]) -> Tensor:
    """The generated PNGs for ``stems`` as uint8 (B, 3, H, W).

    A missing, unreadable (empty, cut off, not an image) or wrong-size file is a
    :class:`DataError` naming it and saying to generate again; the size is checked from the
    header, before the pixels are decoded.
    """
    images = []
    for stem in stems:
        path = output_dir / f"{stem}.png"
        try:
            with Image.open(path) as image:
                found = image.size
                array = np.asarray(image.convert("RGB"), dtype=np.uint8) if found == (size[1], size[0]) else None
        except FileNotFoundError as err:
            raise DataError(f"{path}: generated image missing; run the generate stage (python -m stages.generate)") from err
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # empty, cut off, not an image
            reason = "the file is empty" if path.stat().st_size == 0 else str(err).splitlines()[0]
            raise DataError(f"{path}: generated image unreadable ({reason}); run the generate stage again "
                            "(python -m stages.generate)") from err
        if array is None:
            raise DataError(f"{path}: generated image is {found[0]}x{found[1]} (WxH), expected {size[1]}x{size[0]}; "
                            "re-run the generate stage")
        images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    return torch.stack(images)
