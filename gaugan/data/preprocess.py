"""Preprocessing: a raw dataset folder -> the store, its class histogram and a sample grid.

Every pair is read, checked (:mod:`gaugan.data.check`) and resized as published
(:mod:`gaugan.data.resize`) in worker processes while the arrays are written into a
temporary folder; any problem anywhere means nothing is written and one error lists them
all. The finished folder replaces the previous store in one rename.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io as _io
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gaugan.config import DataConfig
from gaugan.data.check import (
    DatasetProblems,
    PairCheck,
    dataset_warnings,
    load_pair,
    parallel_map,
    problem_hints,
    resolve_folder,
)
from gaugan.data.classes import class_colours, class_names
from gaugan.data.diagnose import LabelStatistics, OutsideValues, label_statistics
from gaugan.data.io import (
    DataError,
    Problem,
    atomic_write_text,
    check_replaceable,
    out_of_room,
    replace_dir,
    require_writable,
)
from gaugan.data.registry import DatasetSpec
from gaugan.data.render import render_samples
from gaugan.data.resize import crop_shape, dense_instances, nearest_resize, train_shape
from gaugan.data.sources import Listing, Pair, dataset_dir, split_problems
from gaugan.data.store import MANIFEST, STORE_FORMAT, STORE_MARKER, SplitWriter, label_dtype_for


@dataclass
class ProcessedPair:
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) label dtype
    instance: np.ndarray | None  # (H, W) uint16
    source_size: tuple[int, int]  # (width, height) on disk
    source_labels: LabelStatistics  # of the label map as on disk (for gaugan.data.diagnose)


def process_pair(pair: Pair, spec: DatasetSpec, train: bool, label_dtype: np.dtype,
                 max_pixels: int | None = None) -> tuple[ProcessedPair | None, PairCheck]:
    """Read, check and resize one pair as published for its split: the pair, or None, and what
    reading it found (its problems, a resize problem included)."""
    check = load_pair(pair, spec, max_pixels)
    loaded = check.loaded
    if loaded is None:
        return None, check
    width, height = loaded.image.size
    shape = train_shape(spec, width, height) if train else crop_shape(spec)
    need = crop_shape(spec)
    if shape[0] < need[0] or shape[1] < need[1]:
        cause = (f"photo smaller than the {need[1]}x{need[0]} crop once resized with preprocess_mode "
                 f"{spec.preprocess_mode!r}; change data.load_size, data.crop_size or data.preprocess_mode")
        check.problems.append(Problem(f"{pair.image}: {width}x{height} (WxH) becomes {shape[1]}x{shape[0]} with "
                                      f"preprocess_mode {spec.preprocess_mode!r}, smaller than the {need[1]}x{need[0]} "
                                      f"crop; change data.load_size, data.crop_size or data.preprocess_mode",
                                      pair.image, cause))
        return None, check
    image = loaded.image
    if image.size != (shape[1], shape[0]):
        image = image.resize((shape[1], shape[0]), Image.BICUBIC)
    label = nearest_resize(loaded.label, shape).astype(label_dtype)
    instance = None
    if loaded.instance is not None:
        instance = dense_instances(nearest_resize(loaded.instance, shape), pair.instance)
    statistics = label_statistics(loaded.label, spec.num_label_values)
    return ProcessedPair(np.asarray(image, dtype=np.uint8), label, instance, (width, height), statistics), check


def _process(args: tuple[int, Pair, DatasetSpec, bool, Any, int | None]) -> tuple[int, ProcessedPair | None, PairCheck]:
    index, pair, spec, train, label_dtype, max_pixels = args
    try:
        processed, check = process_pair(pair, spec, train, np.dtype(label_dtype), max_pixels)
    except DataError as err:
        processed, check = None, PairCheck(None, [err.problem], None)
    return index, processed, check


def _inputs_sha256(pairs: list[Pair], root: Path) -> str:
    """sha256 of the split's input file list: relative path and size of every file, in order."""
    digest = hashlib.sha256()
    for pair in pairs:
        for path in (pair.image, pair.label, pair.instance):
            if path is None:
                continue
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                rel = path.as_posix()
            digest.update(f"{rel}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _write_split(split_dir: Path, pairs: list[Pair], source_root: Path, spec: DatasetSpec, label_dtype: np.dtype,
                 problems: list[str], outside: OutsideValues, num_workers: int, progress: bool,
                 max_pixels: int | None) -> tuple[dict, Counter, LabelStatistics]:
    """Process and write one split; add its problems and label values outside the range; return
    its manifest entry, the photo sizes on disk and the statistics of the label maps on disk."""
    train = split_dir.name == "train"
    fixed = spec.preprocess_mode in ("resize_and_crop", "fixed") or not train
    shape = crop_shape(spec) if not train else (train_shape(spec, 1, 1) if fixed else None)
    writer = SplitWriter(split_dir, len(pairs), shape, label_dtype, spec.use_instance)
    histogram = np.zeros(spec.num_label_values, dtype=np.int64)
    source_sizes: Counter = Counter()
    source_labels = LabelStatistics.zeros(spec.num_label_values)
    results = parallel_map(_process, [(i, p, spec, train, label_dtype.str, max_pixels) for i, p in enumerate(pairs)],
                           num_workers, chunksize=8)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(pairs), desc=f"preprocess {split_dir.name}", unit="pair")
    for i, item, check in results:
        problems.extend(check.problems)
        outside.add(check.outside_values)
        if item is None or problems:
            continue  # keep reading: every problem is reported, nothing is written
        writer.put(i, item.image, item.label, item.instance)
        histogram += np.bincount(item.label.ravel(), minlength=spec.num_label_values)
        source_sizes[item.source_size] += 1
        source_labels.add(item.source_labels)
    writer.close()
    (split_dir / "stems.json").write_text(json.dumps([p.stem for p in pairs]) + "\n")
    entry = {
        "count": len(pairs),
        "layout": "dense" if shape is not None else "ragged",
        "stored_size": list(shape) if shape is not None else None,
        "crop_size": list(crop_shape(spec)),
        "inputs_sha256": _inputs_sha256(pairs, source_root),
        "source_sizes_wxh": {f"{w}x{h}": count for (w, h), count in source_sizes.most_common(20)},
        "class_pixels": histogram.tolist(),
    }
    return entry, source_sizes, source_labels


def write_store(listing: Listing, spec: DatasetSpec, out_dir: str | os.PathLike, num_workers: int = 0,
                progress: bool = False, source_name: str | None = None, max_pixels: int | None = None) -> dict:
    """Validate every pair of ``listing`` and write the store to ``out_dir`` atomically.

    All pairs are read and checked while the arrays are written into a temporary folder;
    if any problem was found (including those of the listing) the temporary folder is
    removed and one :class:`DataError` lists them all; so it is when the disk is full (or a
    file-size limit is reached), in one line naming ``out_dir`` (:func:`out_of_room`). Otherwise the folder replaces
    ``out_dir`` in one rename; ``out_dir`` must be absent, empty or an earlier store (checked
    first, so nothing is read for a folder that would be refused). Returns the manifest, whose
    ``source.warnings`` lists likely mistakes that are not errors (gaugan.data.diagnose).
    ``source_name`` is recorded as the source folder instead of its absolute path, so that the
    store's bytes do not depend on where the repository is (DVC compares a queued
    experiment's copy by content).
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, STORE_MARKER)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    problems = listing.problems + split_problems(listing)
    label_dtype = label_dtype_for(spec)
    manifest: dict[str, Any] = {
        "format": STORE_FORMAT,
        "dataset": spec.name,
        "spec": dataclasses.asdict(spec),
        "label_nc": spec.label_nc,
        "num_label_values": spec.num_label_values,
        "label_channels": spec.label_channels,
        "label_dtype": label_dtype.name,
        "instance_dtype": "uint16" if spec.use_instance else None,
        "class_names": class_names(spec, listing.classes),
        "class_colours": class_colours(spec, listing.classes).tolist(),
        "source": {"root": source_name or str(listing.root), "notes": list(listing.notes), "warnings": []},
        "splits": {},
    }
    sizes: dict[str, Counter] = {}
    labels: dict[str, LabelStatistics] = {}
    outside = OutsideValues()
    try:
        tmp_dir.mkdir(parents=True)
        for split, pairs in listing.splits.items():
            if not pairs:
                continue
            manifest["splits"][split], sizes[split], labels[split] = _write_split(
                tmp_dir / split, pairs, listing.root, spec, label_dtype, problems, outside, num_workers, progress,
                max_pixels)
        manifest["source"]["warnings"] = dataset_warnings(listing, spec, labels.get("train"), sizes)
        if problems:
            raise DatasetProblems(listing.root, problems, problem_hints(listing, spec, outside))
        (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException as err:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        full = out_of_room(err, out_dir, STORE_MARKER.setting, "nothing was written (an earlier store is kept)") \
            if isinstance(err, OSError) else None
        if full is not None:
            raise full from err
        raise
    replace_dir(tmp_dir, out_dir, STORE_MARKER)
    return manifest


def write_class_histogram(manifest: dict, path: str | os.PathLike) -> None:
    """CSV of pixels and pixel share per class and split (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    splits = list(manifest["splits"])
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "name"] + [f"{s}_{k}" for s in splits for k in ("pixels", "share")])
    totals = {s: max(1, sum(manifest["splits"][s]["class_pixels"])) for s in splits}
    for i, name in enumerate(manifest["class_names"]):
        row: list[Any] = [i, name]
        for s in splits:
            pixels = manifest["splits"][s]["class_pixels"][i]
            row += [pixels, f"{pixels / totals[s]:.6f}"]
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def preprocess(data: DataConfig, root: Path, reports_dir: Path | None = None, num_workers: int | None = None,
               progress: bool = True) -> dict:
    """The preprocess stage's work: raw dataset folder -> store, histogram CSV and sample grid.

    Both output folders are checked for writing before anything is read; a full disk while
    writing the reports is one line too (:func:`out_of_room`).
    """
    require_writable(root / data.processed_dir, STORE_MARKER.setting, "the store", replaced=True)
    if reports_dir is not None:
        require_writable(reports_dir, None, "the dataset's reports")
    folder = dataset_dir(data, root)
    workers = data.num_workers if num_workers is None else num_workers
    spec, listing = resolve_folder(data, folder, repo_root=root, num_workers=workers)
    manifest = write_store(listing, spec, root / data.processed_dir, num_workers=workers, progress=progress,
                           source_name=folder.relative_to(root).as_posix() if folder.is_relative_to(root) else None,
                           max_pixels=data.max_image_pixels)
    if reports_dir is not None:
        try:
            write_class_histogram(manifest, reports_dir / "class_histogram.csv")
            split = "val" if "val" in manifest["splits"] else next(iter(manifest["splits"]))
            render_samples(root / data.processed_dir, split, reports_dir / "samples.png")
        except OSError as err:
            full = out_of_room(err, reports_dir, None, "no file there is half written (the store itself was written)")
            if full is None:
                raise
            raise full from err
    return manifest
