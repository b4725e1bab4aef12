"""The training-ready store on disk: its layout, the writer of one split, and the manifest.

Layout of ``<data.processed_dir>/``: ``manifest.json`` (format tag, counts, sizes, the
resolved spec under ``"spec"``, label channels, class names, input checksums, class
histogram) and per split ``images.npy`` (N, H, W, 3) uint8, ``labels.npy`` (N, H, W) uint8
(uint16 with more than 256 label values), ``instances.npy`` (N, H, W) uint16 ids relabelled
densely per image (only when the spec uses instance edges; only edges matter,
docs/SPADE.md section 3) and ``stems.json``. Splits whose images differ in size
(``scale_width_and_crop``, ``none``) are stored "ragged": flat
``images.bin``/``labels.bin``/``instances.bin`` plus ``index.npy`` (offset, height, width)
per item. Everything is memory-mapped at load time (:mod:`gaugan.data.dataset`).

:func:`gaugan.data.preprocess.write_store` fills a store; :class:`gaugan.data.dataset.StoreDataset` reads it.
The manifest, written last, also marks the folder as a store: only such a folder is ever
replaced (:func:`gaugan.data.io.replace_dir`), never one a user pointed data.processed_dir at.
Every stage that reads the store with a configuration (train, segmenter, generate, evaluate)
reads it through :func:`read_store`, which refuses a store written for other data settings.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

import numpy as np

from gaugan.config import DataConfig
from gaugan.data.io import DataError, OutputMarker
from gaugan.data.registry import DatasetSpec, resolve_dataset

STORE_FORMAT = "gaugan-store-v1"
MANIFEST = "manifest.json"
STORE_MARKER = OutputMarker(MANIFEST, STORE_FORMAT, "data.processed_dir")


def label_dtype_for(spec: DatasetSpec) -> np.dtype:
    if spec.num_label_values > 32768:
        raise DataError(f"{spec.name}: {spec.num_label_values} label values; at most 32768 are supported")
    return np.dtype(np.uint8 if spec.num_label_values <= 256 else np.uint16)


class SplitWriter:
    """Writes one split's arrays: dense memmapped .npy when every item has one size, else ragged .bin."""

    def __init__(self, split_dir: Path, count: int, shape: tuple[int, int] | None, label_dtype: np.dtype,
                 use_instance: bool) -> None:
        split_dir.mkdir(parents=True, exist_ok=True)
        self.dir, self.count, self.shape, self.use_instance = split_dir, count, shape, use_instance
        self.label_dtype = label_dtype
        if shape is not None:
            h, w = shape
            self.images = _allocated(split_dir / "images.npy", np.uint8, (count, h, w, 3))
            self.labels = _allocated(split_dir / "labels.npy", label_dtype, (count, h, w))
            self.instances = _allocated(split_dir / "instances.npy", np.uint16, (count, h, w)) if use_instance else None
        else:
            self.files = {name: open(split_dir / f"{name}.bin", "wb")  # noqa: SIM115 (open until close())
                          for name in ("images", "labels") + (("instances",) if use_instance else ())}
            self.index = np.zeros((count, 3), dtype=np.int64)
            self.offset = 0

    def put(self, i: int, image: np.ndarray, label: np.ndarray, instance: np.ndarray | None) -> None:
        """Item ``i``: (H, W, 3) uint8 photo, (H, W) label indices, (H, W) uint16 instance ids or None."""
        if self.use_instance and instance is None:
            raise DataError(f"item {i}: the spec uses instance edges but the pair has no instance map")
        if self.shape is not None:
            self.images[i] = image
            self.labels[i] = label
            if self.instances is not None:
                self.instances[i] = instance
            return
        h, w = label.shape
        self.index[i] = (self.offset, h, w)
        self.offset += h * w
        self.files["images"].write(np.ascontiguousarray(image).tobytes())
        self.files["labels"].write(np.ascontiguousarray(label).tobytes())
        if self.use_instance:
            self.files["instances"].write(np.ascontiguousarray(instance).tobytes())

    def close(self) -> None:
        if self.shape is not None:
            for array in (self.images, self.labels, self.instances):
                if array is not None:
                    array.flush()
            del self.images, self.labels, self.instances
        else:
            for handle in self.files.values():
                handle.close()
            np.save(self.dir / "index.npy", self.index)


def _allocated(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new .npy array memory-mapped for writing, its disk space reserved up front: a full disk
    is an ``OSError`` (ENOSPC) now, not a SIGBUS later when a page of the sparse file is written."""
    array = np.lib.format.open_memmap(path, "w+", dtype, shape)
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return array
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system that cannot reserve
                raise
    return array


def read_manifest(store_dir: str | os.PathLike) -> dict:
    path = Path(store_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DataError(f"{path}: no preprocessed store here; run the preprocess stage "
                        f"(python -m stages.preprocess) or check data.processed_dir") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}); re-run the preprocess stage") from err
    if manifest.get("format") != STORE_FORMAT:
        raise DataError(f"{path}: store format {manifest.get('format')!r}, expected {STORE_FORMAT!r}; "
                        f"re-run the preprocess stage")
    return manifest


def spec_from_manifest(manifest: dict) -> DatasetSpec:
    """The resolved spec the store was written with (the source of truth downstream)."""
    return DatasetSpec(**manifest["spec"])


def read_store(store_dir: str | os.PathLike, data: DataConfig) -> tuple[dict, DatasetSpec]:
    """The manifest and spec of the store at ``store_dir``, checked against the ``data`` settings.

    The store was written for the spec that the data settings of its preprocessing resolved
    to; a stage run with other settings (``data.dataset=custom`` over the built-in store, another
    crop size) would otherwise train or score the old data under the new settings' name. Only
    what the configuration decides is compared: a custom dataset's class count, instance edges
    and aspect ratio are found by preprocessing when their settings are null
    (:func:`gaugan.data.check.resolve_folder`), so the store's values stand for those.
    """
    manifest = read_manifest(store_dir)
    stored = spec_from_manifest(manifest)
    path = Path(store_dir) / MANIFEST
    fix = ("run the preprocess stage again (dvc repro preprocess, or python -m stages.preprocess), or set the "
           "setting back")
    if data.dataset != stored.name:
        raise DataError(f"{path}: the store was preprocessed for dataset {stored.name!r}, but data.dataset is "
                        f"{data.dataset!r}; {fix}")
    expected = resolve_dataset(
        dataclasses.replace(data, use_instance=stored.use_instance) if data.dataset == "custom" and
        data.use_instance is None else data, inferred_num_classes=stored.label_nc)
    if data.dataset == "custom" and data.aspect_ratio is None and data.preprocess_mode is None:
        expected = dataclasses.replace(expected, aspect_ratio=stored.aspect_ratio)
    differing = [
        f"{field} {getattr(stored, field)!r} ({_setting_of(field, data)} gives {getattr(expected, field)!r})"
        for field in ("label_nc", "contain_dontcare", "dontcare_value", "use_instance", "load_size", "crop_size",
                      "aspect_ratio", "preprocess_mode")
        if getattr(stored, field) != getattr(expected, field)
    ]
    if differing:
        raise DataError(f"{path}: the store was preprocessed with {', '.join(differing)}; {fix}")
    return manifest, stored


def _setting_of(field: str, data: DataConfig) -> str:
    """The setting that decides a spec field under ``data`` (for messages)."""
    if field in ("load_size", "crop_size") and getattr(data, field) is None and data.dataset == "landscapes":
        return "data.builtin.size"
    if field in ("load_size", "crop_size", "aspect_ratio", "preprocess_mode", "use_instance"):
        return f"data.{field}"
    if data.dataset != "custom":
        return "data.dataset"
    return "data.custom.num_classes" if field == "label_nc" else "data.custom.dontcare_label"
