"""COCO-Stuff instance maps built from the COCO annotations (docs/SPADE.md section 3).

The official SPADE COCO-Stuff setup feeds an instance edge map; COCO ships instances as
polygons (and, for crowds, uncompressed run-length encodings) in
``annotations/instances_{train,val}2017.json``. Each map is a copy of the image's
stuff+thing label map with every annotation painted over it with its own id, in file
order. Only the edges of the result are used, so what matters is that every instance
differs from its surroundings: instance ``k`` of an image gets the value ``256 + k``,
which no label value (0..181, 255) can take, and the map is saved as a 16-bit PNG.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gaugan.data.check import parallel_map
from gaugan.data.io import DataError, OutputMarker, check_replaceable, read_index_map, replace_dir

FIRST_INSTANCE_VALUE = 256
# Marks a folder of instance maps built here: only such a folder (or an empty one) is ever replaced.
INSTANCES_MARKER = OutputMarker(".gaugan-instances.json", "gaugan-coco-instances-v1", "data.root")


def decode_uncompressed_rle(counts: list[int], height: int, width: int) -> np.ndarray:
    """COCO's uncompressed RLE (alternating runs of 0 and 1, column-major) -> (H, W) bool."""
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for run in counts:
        if value:
            flat[position:position + run] = True
        position += run
        value = not value
    if position != height * width:
        raise DataError(f"RLE runs cover {position} pixels, expected {height}x{width} = {height * width}")
    return flat.reshape((height, width), order="F")


def annotation_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of one annotation's polygons or uncompressed RLE."""
    if isinstance(segmentation, list):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in segmentation:
            points = list(zip(polygon[0::2], polygon[1::2]))
            if len(points) >= 3:
                draw.polygon(points, fill=1)
        return np.asarray(canvas, dtype=bool)
    counts = segmentation.get("counts")
    if isinstance(counts, list):
        size = segmentation.get("size", [height, width])
        if list(size) != [height, width]:
            raise DataError(f"RLE size {size} differs from the image size {[height, width]}")
        return decode_uncompressed_rle(counts, height, width)
    raise DataError("compressed (string) RLE segmentations are not supported; the COCO 2017 instance "
                    "annotations use polygons and uncompressed RLE only")


def paint_instances(label: np.ndarray, annotations: list[dict]) -> np.ndarray:
    """A copy of ``label`` (int32) with annotation ``k`` painted as ``256 + k``."""
    height, width = label.shape
    instance = label.astype(np.int32, copy=True)
    for k, annotation in enumerate(annotations):
        instance[annotation_mask(annotation["segmentation"], height, width)] = FIRST_INSTANCE_VALUE + k
    return instance


def _build_one(args: tuple[Path, Path, list[dict], int, int]) -> str | None:
    label_path, out_path, annotations, height, width = args
    try:
        label = read_index_map(label_path)
        if label.shape != (height, width):
            return (f"{label_path}: label map is {label.shape[1]}x{label.shape[0]} but the annotations describe "
                    f"a {width}x{height} image")
        instance = paint_instances(label, annotations)
    except DataError as err:
        return f"{label_path}: {err}"
    if instance.max() > 65535:
        return f"{label_path}: more than {65535 - FIRST_INSTANCE_VALUE} instances; cannot store a 16-bit map"
    Image.fromarray(instance.astype(np.uint16)).save(out_path, format="PNG")
    return None


def build_instance_maps(dataset_dir: str | os.PathLike, splits: tuple[str, ...] = ("train", "val"),
                        num_workers: int = 0, progress: bool = True) -> dict:
    """``instances2017/{split}2017/<stem>.png`` for every image of the annotation files.

    Reads ``annotations/instances_{split}2017.json`` and the label maps in
    ``stuffthingmaps_trainval2017/{split}2017/``. Each split is written to a temporary
    folder and renamed when complete; any problem (a missing or mis-sized label map) is
    collected and reported at the end, and that split is not written. Only a folder built
    here before (it carries :data:`INSTANCES_MARKER`) is replaced, never one of the user's.
    """
    dataset_dir = Path(dataset_dir)
    for split in splits:  # checked for every split before any work
        check_replaceable(dataset_dir / "instances2017" / f"{split}2017", INSTANCES_MARKER)
    summary = {}
    for split in splits:
        annotation_file = dataset_dir / "annotations" / f"instances_{split}2017.json"
        label_dir = dataset_dir / "stuffthingmaps_trainval2017" / f"{split}2017"
        out_dir = dataset_dir / "instances2017" / f"{split}2017"
        if not annotation_file.is_file():
            raise DataError(f"{annotation_file}: not found (extract annotations_trainval2017.zip into {dataset_dir})")
        try:
            content = json.loads(annotation_file.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{annotation_file}: not valid JSON ({err})") from err
        by_image: dict[int, list[dict]] = defaultdict(list)
        for annotation in content.get("annotations", []):
            by_image[annotation["image_id"]].append(annotation)
        tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        jobs = []
        problems = []
        for image in content.get("images", []):
            stem = Path(image["file_name"]).stem
            label_path = label_dir / f"{stem}.png"
            if not label_path.is_file():
                problems.append(f"{label_path}: label map missing for image {image['file_name']} of {annotation_file}")
                continue
            jobs.append((label_path, tmp_dir / f"{stem}.png", by_image.get(image["id"], []), image["height"], image["width"]))
        results = parallel_map(_build_one, jobs, num_workers, chunksize=16)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc=f"instances {split}", unit="img")
        problems += [r for r in results if r is not None]
        if problems:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            shown = "\n".join(f"  - {p}" for p in problems)
            raise DataError(f"{annotation_file}: {len(problems)} problem(s) building instance maps:\n{shown}")
        INSTANCES_MARKER.write(tmp_dir, annotations=annotation_file.name)
        replace_dir(tmp_dir, out_dir, INSTANCES_MARKER)
        summary[split] = {"images": len(jobs), "annotations": sum(len(j[2]) for j in jobs)}
    return summary
