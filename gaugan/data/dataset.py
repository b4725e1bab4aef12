"""Reading the store for training and evaluation: :class:`StoreDataset` and :func:`make_loader`.

Every split is memory-mapped (:mod:`gaugan.data.store` describes the layout), so a loader
worker does a slice, an optional flip and a ``torch.from_numpy`` per item. The random
crop and flip of training items and the order of an epoch come only from
``(seed, epoch, index)`` (:mod:`gaugan.seeding`): a resumed run sees bit-identical
batches whatever the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gaugan.data.io import DataError
from gaugan.data.registry import DatasetSpec
from gaugan.data.store import read_manifest, spec_from_manifest
from gaugan.seeding import epoch_permutation, random_bits


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
            random = random_bits(self.seed, epoch, index)
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
    starts. The order is :func:`gaugan.seeding.epoch_permutation` of ``(seed, epoch)``;
    ``inner`` (e.g. :class:`gaugan.train.distributed.GlobalBatchSampler`) replaces it and
    gets ``set_epoch`` forwarded. :meth:`resume_from` skips the first items of the next
    epoch (resuming mid-epoch).
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
        return epoch_permutation(len(self.dataset), self.seed, epoch)

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
    ``sampler`` (e.g. a GlobalBatchSampler over the dataset) replaces the built-in order.
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
