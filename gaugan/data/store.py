"""The training-ready store: writer, :class:`StoreDataset` and :func:`make_loader`.

Preprocessing (paper section 4 "Implementation details", REFERENCE.md section 3) resizes
each pair once, as the official code does on every load: label and instance maps with
NEAREST (class indices must never be blended), photos with BICUBIC. Training sizes:

- ``resize_and_crop``: square ``load_size`` (286 for ADE20K/COCO), random crop of ``crop_size``;
- ``fixed``: ``load_size`` wide and ``load_size / aspect_ratio`` high (Cityscapes 512x256);
- ``scale_width_and_crop``: ``load_size`` wide keeping the photo's aspect ratio;
- ``none``: as on disk;

then a random crop to ``crop_size`` x ``crop_size / aspect_ratio`` and a horizontal flip
at load time. Validation is stored at the test size, ``crop_size`` x ``crop_size /
aspect_ratio`` (the official test-time resize), and loaded without randomness.

Store layout (``<data.processed_dir>/``): ``manifest.json`` (counts, sizes, the resolved
spec under ``"spec"``, label channels, input checksums, class histogram) and per split
``images.npy`` (N, H, W, 3) uint8, ``labels.npy`` (N, H, W) uint8 (uint16 with more than 256
label values), ``instances.npy`` (N, H, W) uint16 ids relabelled densely per image (only
when the spec uses instance edges; only edges matter, REFERENCE.md section 3) and
``stems.json``. Splits whose images differ in size (``scale_width_and_crop``, ``none``)
are stored "ragged": flat ``images.bin``/``labels.bin``/``instances.bin`` plus
``index.npy`` (offset, height, width) per item. Everything is memory-mapped at load time,
so a loader worker does a slice, an optional flip and a ``torch.from_numpy`` per item.

Randomness of the training transforms comes only from ``(seed, epoch, index)``: a
resumed run sees bit-identical batches whatever the number of workers.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io as _io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from gaugan.config import DataConfig
from gaugan.data.check import format_problems, load_pair, parallel_map, resolve_folder
from gaugan.data.classes import class_names, label_palette
from gaugan.data.io import DataError, atomic_save_png, replace_dir, atomic_write_text
from gaugan.data.registry import DatasetSpec
from gaugan.data.sources import Listing, Pair, dataset_dir

STORE_FORMAT = "gaugan-store-v1"
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------------------
# Sizes and resizing.


def crop_shape(spec: DatasetSpec) -> tuple[int, int]:
    """(height, width) of a network input: the crop at training time, the whole item at test."""
    return spec.image_size


def train_shape(spec: DatasetSpec, width: int, height: int) -> tuple[int, int]:
    """(height, width) a training photo of ``width`` x ``height`` is stored at."""
    mode = spec.preprocess_mode
    if mode == "resize_and_crop":
        return spec.load_size, spec.load_size
    if mode == "fixed":
        return round(spec.load_size / spec.aspect_ratio), spec.load_size
    if mode == "scale_width_and_crop":
        return max(1, round(spec.load_size * height / width)), spec.load_size
    if mode == "none":
        return height, width
    raise DataError(f"data.preprocess_mode: unknown mode {mode!r}")


def nearest_resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """NEAREST resize by pixel centres (the sampling PIL's NEAREST uses); exact for any dtype."""
    height, width = array.shape[:2]
    if (height, width) == tuple(shape):
        return array
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * height / shape[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * width / shape[1]).astype(np.int64), width - 1)
    return array[rows[:, None], cols[None, :]]


def dense_instances(instance: np.ndarray, source: Path | str) -> np.ndarray:
    """Instance ids -> 0..k-1 as uint16 (the edges, all that is used, are unchanged)."""
    values, inverse = np.unique(instance, return_inverse=True)
    if len(values) > 65536:
        raise DataError(f"{source}: {len(values)} distinct instance ids; at most 65536 per image are supported")
    return inverse.reshape(instance.shape).astype(np.uint16)


@dataclass
class ProcessedPair:
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) label dtype
    instance: np.ndarray | None  # (H, W) uint16
    source_size: tuple[int, int]  # (width, height) on disk


def process_pair(pair: Pair, spec: DatasetSpec, train: bool, label_dtype: np.dtype) -> tuple[ProcessedPair | None, list[str]]:
    """Read, check and resize one pair as published for its split."""
    loaded, problems = load_pair(pair, spec)
    if loaded is None:
        return None, problems
    width, height = loaded.image.size
    shape = train_shape(spec, width, height) if train else crop_shape(spec)
    need = crop_shape(spec)
    if shape[0] < need[0] or shape[1] < need[1]:
        return None, [
            f"{pair.image}: {width}x{height} (WxH) becomes {shape[1]}x{shape[0]} with preprocess_mode "
            f"{spec.preprocess_mode!r}, smaller than the {need[1]}x{need[0]} crop; change data.load_size, "
            f"data.crop_size or data.preprocess_mode"
        ]
    image = loaded.image
    if image.size != (shape[1], shape[0]):
        image = image.resize((shape[1], shape[0]), Image.BICUBIC)
    label = nearest_resize(loaded.label, shape).astype(label_dtype)
    instance = None
    if loaded.instance is not None:
        instance = dense_instances(nearest_resize(loaded.instance, shape), pair.instance)
    return ProcessedPair(np.asarray(image, dtype=np.uint8), label, instance, (width, height)), []


def _process(args: tuple[int, Pair, DatasetSpec, bool, Any]) -> tuple[int, ProcessedPair | None, list[str]]:
    index, pair, spec, train, label_dtype = args
    try:
        processed, problems = process_pair(pair, spec, train, np.dtype(label_dtype))
    except DataError as err:
        processed, problems = None, [str(err)]
    return index, processed, problems


def label_dtype_for(spec: DatasetSpec) -> np.dtype:
    if spec.num_label_values > 32768:
        raise DataError(f"{spec.name}: {spec.num_label_values} label values; at most 32768 are supported")
    return np.dtype(np.uint8 if spec.num_label_values <= 256 else np.uint16)


# --------------------------------------------------------------------------------------
# Writing.


class _SplitWriter:
    """Writes one split's arrays: dense memmapped .npy when every item has one size, else ragged .bin."""

    def __init__(self, split_dir: Path, count: int, shape: tuple[int, int] | None, label_dtype: np.dtype,
                 use_instance: bool) -> None:
        split_dir.mkdir(parents=True, exist_ok=True)
        self.dir, self.count, self.shape, self.use_instance = split_dir, count, shape, use_instance
        self.label_dtype = label_dtype
        if shape is not None:
            h, w = shape
            self.images = np.lib.format.open_memmap(split_dir / "images.npy", "w+", np.uint8, (count, h, w, 3))
            self.labels = np.lib.format.open_memmap(split_dir / "labels.npy", "w+", label_dtype, (count, h, w))
            self.instances = (np.lib.format.open_memmap(split_dir / "instances.npy", "w+", np.uint16, (count, h, w))
                              if use_instance else None)
        else:
            self.files = {name: open(split_dir / f"{name}.bin", "wb") for name in
                          ("images", "labels") + (("instances",) if use_instance else ())}
            self.index = np.zeros((count, 3), dtype=np.int64)
            self.offset = 0

    def put(self, i: int, item: ProcessedPair) -> None:
        if self.use_instance and item.instance is None:
            raise DataError(f"item {i}: the spec uses instance edges but the pair has no instance map")
        if self.shape is not None:
            self.images[i] = item.image
            self.labels[i] = item.label
            if self.instances is not None:
                self.instances[i] = item.instance
            return
        h, w = item.label.shape
        self.index[i] = (self.offset, h, w)
        self.offset += h * w
        self.files["images"].write(np.ascontiguousarray(item.image).tobytes())
        self.files["labels"].write(np.ascontiguousarray(item.label).tobytes())
        if self.use_instance:
            self.files["instances"].write(np.ascontiguousarray(item.instance).tobytes())

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


def write_store(listing: Listing, spec: DatasetSpec, out_dir: str | os.PathLike, num_workers: int = 0,
                progress: bool = False, source_name: str | None = None) -> dict:
    """Validate every pair of ``listing`` and write the store to ``out_dir`` atomically.

    All pairs are read and checked while the arrays are written into a temporary folder;
    if any problem was found (including those of the listing) the temporary folder is
    removed and one :class:`DataError` lists them all. Otherwise the folder replaces
    ``out_dir`` in one rename. Returns the manifest. ``source_name`` is recorded as the
    source folder instead of its absolute path, so that the store's bytes do not depend on
    where the repository is (DVC compares a queued experiment's copy by content).
    """
    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    problems = list(listing.problems)
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
        "class_names": class_names(spec),
        "source": {"root": source_name or str(listing.root), "notes": list(listing.notes)},
        "splits": {},
    }
    try:
        for split, pairs in listing.splits.items():
            train = split == "train"
            if not pairs:
                problems.append(f"{listing.root}: no pairs found for split {split!r}")
                continue
            fixed = spec.preprocess_mode in ("resize_and_crop", "fixed") or not train
            shape = crop_shape(spec) if not train else (train_shape(spec, 1, 1) if fixed else None)
            writer = _SplitWriter(tmp_dir / split, len(pairs), shape, label_dtype, spec.use_instance)
            histogram = np.zeros(spec.num_label_values, dtype=np.int64)
            source_sizes: dict[str, int] = {}
            results = parallel_map(_process, [(i, p, spec, train, label_dtype.str) for i, p in enumerate(pairs)],
                                   num_workers, chunksize=8)
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(pairs), desc=f"preprocess {split}", unit="pair")
            for i, item, item_problems in results:
                problems.extend(item_problems)
                if item is None or problems:
                    continue  # keep reading: every problem is reported, nothing is written
                writer.put(i, item)
                histogram += np.bincount(item.label.ravel(), minlength=spec.num_label_values)
                key = f"{item.source_size[0]}x{item.source_size[1]}"
                source_sizes[key] = source_sizes.get(key, 0) + 1
            writer.close()
            (tmp_dir / split / "stems.json").write_text(json.dumps([p.stem for p in pairs]) + "\n")
            manifest["splits"][split] = {
                "count": len(pairs),
                "layout": "dense" if shape is not None else "ragged",
                "stored_size": list(shape) if shape is not None else None,
                "crop_size": list(crop_shape(spec)),
                "inputs_sha256": _inputs_sha256(pairs, listing.root),
                "source_sizes_wxh": dict(sorted(source_sizes.items(), key=lambda kv: -kv[1])[:20]),
                "class_pixels": histogram.tolist(),
            }
        if problems:
            raise DataError(f"{listing.root}: the dataset has problems; nothing was written.\n" + format_problems(problems))
        (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    replace_dir(tmp_dir, out_dir)
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
    """The preprocess stage's work: raw dataset folder -> store, histogram CSV and sample grid."""
    folder = dataset_dir(data, root)
    workers = data.num_workers if num_workers is None else num_workers
    spec, listing = resolve_folder(data, folder, repo_root=root, num_workers=workers)
    manifest = write_store(listing, spec, root / data.processed_dir, num_workers=workers, progress=progress,
                           source_name=folder.relative_to(root).as_posix() if folder.is_relative_to(root) else None)
    if reports_dir is not None:
        write_class_histogram(manifest, reports_dir / "class_histogram.csv")
        split = "val" if "val" in manifest["splits"] else next(iter(manifest["splits"]))
        render_samples(root / data.processed_dir, split, reports_dir / "samples.png")
    return manifest


# --------------------------------------------------------------------------------------
# Reading.


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


def _mix(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): cheap, stable across processes and versions."""
    mask = (1 << 64) - 1
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & mask)) * 0xBF58476D1CE4E5B9 & mask
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & mask
        state ^= state >> 29
    return state


class StoreDataset(Dataset):
    """One split of the store; items are dicts of CPU tensors (docs/ARCHITECTURE.md, Batches).

    ``dataset[i]`` uses the epoch set by :meth:`set_epoch`; ``dataset[(epoch, i)]`` (what
    :func:`make_loader`'s sampler yields, so that persistent workers see the epoch) names
    it explicitly. With ``train=True`` the crop position and the flip are functions of
    ``(seed, epoch, index)`` only.
    """

    def __init__(self, store_dir: str | os.PathLike, split: str, spec: DatasetSpec | None = None, train: bool = False,
                 seed: int = 0, flip: bool = True) -> None:
        self.store_dir = Path(store_dir)
        self.manifest = read_manifest(self.store_dir)
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.store_dir}: no split {split!r} in the store (has {', '.join(self.manifest['splits'])})")
        self.spec = spec if spec is not None else spec_from_manifest(self.manifest)
        stored = spec_from_manifest(self.manifest)
        if (self.spec.num_label_values, self.spec.use_instance) != (stored.num_label_values, stored.use_instance) or \
                self.spec.image_size != stored.image_size:
            raise DataError(
                f"{self.store_dir}: the store was written for {stored} but {self.spec} was requested; "
                f"re-run the preprocess stage after changing data settings"
            )
        self.split, self.train, self.seed, self.flip = split, train, seed, flip
        self.info = self.manifest["splits"][split]
        self.count = self.info["count"]
        self.crop = tuple(self.info["crop_size"])
        self.epoch = 0
        self.use_instance = self.spec.use_instance
        self.label_dtype = np.dtype(self.manifest["label_dtype"])
        self._arrays: dict[str, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None  # memmaps are reopened in each worker, never pickled
        return state

    def _open(self) -> dict[str, np.ndarray]:
        split_dir = self.store_dir / self.split
        names = ("images", "labels") + (("instances",) if self.use_instance else ())
        if self.info["layout"] == "dense":
            arrays = {name: np.load(split_dir / f"{name}.npy", mmap_mode="r") for name in names}
        else:
            dtypes = {"images": np.uint8, "labels": self.label_dtype, "instances": np.uint16}
            arrays = {name: np.memmap(split_dir / f"{name}.bin", dtype=dtypes[name], mode="r") for name in names}
            arrays["index"] = np.load(split_dir / "index.npy")
        return arrays

    def _item_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        arrays = self._arrays
        instance = None
        if self.info["layout"] == "dense":
            image, label = arrays["images"][index], arrays["labels"][index]
            if self.use_instance:
                instance = arrays["instances"][index]
        else:
            offset, h, w = (int(v) for v in arrays["index"][index])
            image = arrays["images"][offset * 3:(offset + h * w) * 3].reshape(h, w, 3)
            label = arrays["labels"][offset:offset + h * w].reshape(h, w)
            if self.use_instance:
                instance = arrays["instances"][offset:offset + h * w].reshape(h, w)
        return image, label, instance

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        index = int(index)
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} items")
        if self._arrays is None:
            self._arrays = self._open()
        image, label, instance = self._item_arrays(index)
        if self.train:
            h, w = label.shape
            ch, cw = self.crop
            random = _mix(self.seed, epoch, index)
            top = random % (h - ch + 1)
            left = (random >> 20) % (w - cw + 1)
            flip = self.flip and bool((random >> 40) & 1)
            columns = slice(left, left + cw) if not flip else slice(left + cw - 1, left - 1 if left else None, -1)
            image, label = image[top:top + ch, columns], label[top:top + ch, columns]
            if instance is not None:
                instance = instance[top:top + ch, columns]
        item = {
            # (H, W, 3) -> (3, H, W) in one contiguous copy
            "image": torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C")),
            # np.array copies: a tensor must never share memory with the read-only memmap
            "label": torch.from_numpy(np.array(label, dtype=np.uint8 if self.label_dtype == np.uint8 else np.int16)),
            "index": index,
        }
        if instance is not None:
            item["instance"] = torch.from_numpy(np.array(instance, dtype=np.int32))
        return item


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` so that workers (also persistent ones) know the epoch.

    The epoch is read from the dataset (:meth:`StoreDataset.set_epoch`) when iteration
    starts. The order is a function of ``(seed, epoch)`` only; ``inner`` (e.g. a
    DistributedSampler) replaces it and gets ``set_epoch`` forwarded.
    :meth:`resume_from` skips the first items of the next epoch (resuming mid-epoch).
    """

    def __init__(self, dataset: StoreDataset, shuffle: bool, seed: int = 0, inner: Sampler | None = None) -> None:
        self.dataset, self.shuffle, self.seed, self.inner = dataset, shuffle, seed, inner
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def resume_from(self, num_items: int) -> None:
        self._skip = int(num_items)

    def _order(self, epoch: int) -> list[int]:
        if self.inner is not None:
            if hasattr(self.inner, "set_epoch"):
                self.inner.set_epoch(epoch)
            return list(self.inner)
        if not self.shuffle:
            return list(range(len(self.dataset)))
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch) & ((1 << 63) - 1))
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.dataset.epoch
        order = self._order(epoch)
        skip, self._skip = self._skip, 0
        return iter([(epoch, i) for i in order[skip:]])

    def __len__(self) -> int:
        return len(self.inner) if self.inner is not None else len(self.dataset)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers only slice and copy; threads would fight the main process


def make_loader(dataset: StoreDataset, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0,
                drop_last: bool = False, sampler: Sampler | None = None, pin_memory: bool = False,
                prefetch_factor: int = 4) -> DataLoader:
    """A DataLoader over ``dataset`` (persistent workers when num_workers > 0).

    Call ``dataset.set_epoch(epoch)`` (or ``loader.sampler.set_epoch``) before each epoch.
    ``sampler`` (e.g. a DistributedSampler over the dataset) replaces the built-in order.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(dataset, shuffle, seed, inner=sampler),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        drop_last=drop_last,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )


# --------------------------------------------------------------------------------------
# Looking at it.


def render_samples(store_dir: str | os.PathLike, split: str, path: str | os.PathLike, count: int | None = None,
                   columns: int = 6) -> Path:
    """A grid PNG of photos, coloured label maps and instance edges (reports/data/samples.png).

    ``count`` defaults to 24 items for small images and 12 from 256 pixels on, so the grid
    stays a few MB at most.
    """
    from gaugan.data.semantic import instance_edges

    dataset = StoreDataset(store_dir, split)
    if count is None:
        count = 24 if max(dataset.crop) < 256 else 12
    spec = dataset.spec
    palette = label_palette(spec.num_label_values, spec.name)
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
