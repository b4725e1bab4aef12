"""The store: round trip of values, published resizing, deterministic training transforms,
loaders with any number of workers, ragged stores, atomic replacement, manifest contents."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from gaugan.config import ConfigError
from gaugan.data.builtin import write_landscapes
from gaugan.data.dataset import StoreDataset, make_loader
from gaugan.data.io import DataError
from gaugan.data.preprocess import preprocess
from gaugan.data.registry import DatasetSpec
from gaugan.data.resize import nearest_resize, train_shape
from gaugan.data.store import read_manifest, read_store, spec_from_manifest
from tests.support import data_config, make_cityscapes, make_custom, stage_environment


@pytest.fixture(scope="module")
def landscape_store(tmp_path_factory):
    """A 32x32 built-in store stored at 40x40 (so training crops really move)."""
    root = tmp_path_factory.mktemp("landscapes")
    cfg = data_config("landscapes", root="raw", processed_dir="store", load_size=40, crop_size=32,
                 builtin={"num_train": 12, "num_val": 4, "size": 40, "seed": 0})
    b = cfg.data.builtin
    write_landscapes(root / "raw" / "landscapes", b.num_train, b.num_val, b.size, b.seed)
    manifest = preprocess(cfg.data, root, reports_dir=root / "reports", progress=False)
    return root, manifest


def test_round_trip_values_and_manifest(landscape_store):
    root, manifest = landscape_store
    store = root / "store"
    assert manifest == read_manifest(store)
    spec = spec_from_manifest(manifest)
    assert dataclasses.asdict(spec) == manifest["spec"] and spec.load_size == 40 and spec.crop_size == 32
    assert manifest["splits"]["train"]["stored_size"] == [40, 40] and manifest["splits"]["val"]["stored_size"] == [32, 32]
    assert manifest["label_channels"] == 11 and len(manifest["splits"]["train"]["inputs_sha256"]) == 64
    # the stored label of a train item equals the raw PNG (load size == generated size: no resize)
    stems = json.loads((store / "train" / "stems.json").read_text())
    raw = np.asarray(Image.open(root / "raw" / "landscapes" / "train" / "labels" / f"{stems[5]}.png"))
    np.testing.assert_array_equal(np.load(store / "train" / "labels.npy")[5], raw)
    photo = np.asarray(Image.open(root / "raw" / "landscapes" / "train" / "images" / f"{stems[5]}.png"))
    np.testing.assert_array_equal(np.load(store / "train" / "images.npy")[5], photo)
    # val is resized to the test size: labels NEAREST (only values that exist), images BICUBIC
    val_raw = np.asarray(Image.open(root / "raw" / "landscapes" / "val" / "labels" / "000000.png"))
    val_label = np.load(store / "val" / "labels.npy")[0]
    np.testing.assert_array_equal(val_label, nearest_resize(val_raw, (32, 32)))
    assert np.array_equal(val_label, np.asarray(Image.fromarray(val_raw).resize((32, 32), Image.NEAREST)))
    histogram = np.array(manifest["splits"]["train"]["class_pixels"])
    assert histogram.sum() == 12 * 40 * 40 and (histogram > 0).sum() >= 6
    csv_lines = (root / "reports" / "class_histogram.csv").read_text().splitlines()
    assert csv_lines[0] == "index,name,train_pixels,train_share,val_pixels,val_share" and csv_lines[1].startswith("0,sky,")


def test_item_types_and_contract(landscape_store):
    root, _ = landscape_store
    item = StoreDataset(root / "store", "train", train=True)[3]
    assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (3, 32, 32)
    assert item["label"].dtype == torch.uint8 and tuple(item["label"].shape) == (32, 32)
    assert item["instance"].dtype == torch.int32 and item["index"] == 3
    item["label"][0, 0] = 9  # tensors own their memory: the memmap is read-only
    with pytest.raises(DataError, match="no split 'test'"):
        StoreDataset(root / "store", "test")


def test_train_transform_depends_only_on_seed_epoch_index(landscape_store):
    root, _ = landscape_store
    a = StoreDataset(root / "store", "train", train=True, seed=1)
    b = StoreDataset(root / "store", "train", train=True, seed=1)
    b.set_epoch(3)
    same = [torch.equal(a[(3, i)]["image"], b[i]["image"]) for i in range(12)]
    assert all(same)
    a.set_epoch(0)
    crops = {a[(epoch, 2)]["image"].numpy().tobytes() for epoch in range(12)}
    assert len(crops) > 3  # the crop/flip moves between epochs
    full = np.load(root / "store" / "train" / "images.npy", mmap_mode="r")[2]
    image = a[(5, 2)]["image"].permute(1, 2, 0).numpy()
    windows = [full[y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
    assert any(np.array_equal(image, w) or np.array_equal(image, w[:, ::-1]) for w in windows)
    # and the label and instance crops are cut from the same window as the image
    item = a[(5, 2)]
    labels = np.load(root / "store" / "train" / "labels.npy", mmap_mode="r")[2]
    index = next(i for i, w in enumerate(windows) if np.array_equal(image, w) or np.array_equal(image, w[:, ::-1]))
    y, x = divmod(index, 9)
    flipped = not np.array_equal(image, windows[index])
    expected = labels[y:y + 32, x:x + 32][:, ::-1] if flipped else labels[y:y + 32, x:x + 32]
    np.testing.assert_array_equal(item["label"].numpy(), expected)


def test_no_flip_and_val_have_no_randomness(landscape_store):
    root, _ = landscape_store
    val = StoreDataset(root / "store", "val", train=False)
    stored = np.load(root / "store" / "val" / "images.npy")
    for epoch in range(3):
        val.set_epoch(epoch)
        np.testing.assert_array_equal(val[1]["image"].permute(1, 2, 0).numpy(), stored[1])
    no_flip = StoreDataset(root / "store", "train", train=True, flip=False)
    full = np.load(root / "store" / "train" / "images.npy", mmap_mode="r")[0]
    for epoch in range(6):
        image = no_flip[(epoch, 0)]["image"].permute(1, 2, 0).numpy()
        assert any(np.array_equal(image, full[y:y + 32, x:x + 32]) for y in range(9) for x in range(9))


def test_loader_batches_identical_for_any_worker_count(landscape_store):
    root, _ = landscape_store

    def batches(num_workers: int, epoch: int) -> list[dict]:
        dataset = StoreDataset(root / "store", "train", train=True, seed=7)
        loader = make_loader(dataset, batch_size=4, shuffle=True, num_workers=num_workers, seed=7, drop_last=True)
        dataset.set_epoch(epoch)
        return list(loader)

    serial = batches(0, epoch=2)
    parallel = batches(2, epoch=2)
    assert len(serial) == 3
    for x, y in zip(serial, parallel):
        assert x.keys() == y.keys() == {"image", "label", "instance", "index"}
        for key in x:
            assert torch.equal(x[key], y[key])
    other_epoch = batches(0, epoch=3)
    assert not torch.equal(serial[0]["index"], other_epoch[0]["index"])


def test_persistent_workers_follow_set_epoch(landscape_store):
    root, _ = landscape_store
    dataset = StoreDataset(root / "store", "train", train=True, seed=0)
    loader = make_loader(dataset, batch_size=12, shuffle=False, num_workers=1, seed=0)
    epochs = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        epochs.append(next(iter(loader)))
    reference = StoreDataset(root / "store", "train", train=True, seed=0)
    for epoch, batch in enumerate(epochs):
        assert torch.equal(batch["image"][4], reference[(epoch, 4)]["image"])


def test_resume_mid_epoch_skips_items(landscape_store):
    root, _ = landscape_store
    dataset = StoreDataset(root / "store", "train", train=True)
    loader = make_loader(dataset, batch_size=2, shuffle=True, num_workers=0, seed=3)
    full = torch.cat([b["index"] for b in loader])
    loader.sampler.resume_from(4)
    resumed = torch.cat([b["index"] for b in loader])
    assert torch.equal(resumed, full[4:])
    assert torch.equal(torch.cat([b["index"] for b in loader]), full)  # only the next epoch skips


def test_fixed_mode_cityscapes_sizes(tmp_path):
    make_cityscapes(tmp_path / "raw" / "cityscapes")
    cfg = data_config("cityscapes", root="raw", processed_dir="store", load_size=16, crop_size=16)
    manifest = preprocess(cfg.data, tmp_path, progress=False)
    assert manifest["splits"]["train"]["stored_size"] == [8, 16]  # load x load / aspect 2
    item = StoreDataset(tmp_path / "store", "train", train=True)[0]
    assert tuple(item["label"].shape) == (8, 16)
    # 16-bit class*1000+k instance ids are relabelled densely; their edges are unchanged
    from gaugan.data.semantic import instance_edges

    raw = np.asarray(Image.open(tmp_path / "raw" / "cityscapes" / "gtFine" / "val" / "frankfurt" /
                                "frankfurt_000000_000019_gtFine_instanceIds.png")).astype(np.int64)
    stored = np.load(tmp_path / "store" / "val" / "instances.npy")[0]
    expected = nearest_resize(raw, (8, 16))
    assert stored.dtype == np.uint16 and stored.max() < len(np.unique(expected))
    np.testing.assert_array_equal(instance_edges(torch.from_numpy(stored.astype(np.int64))[None]),
                                  instance_edges(torch.from_numpy(expected)[None]))


def test_scale_width_store_is_ragged(tmp_path):
    make_custom(tmp_path / "raw" / "custom", num_train=3, values=[0, 1, 2])
    cfg = data_config("custom", root="raw", processed_dir="store", preprocess_mode="scale_width_and_crop",
                 load_size=32, crop_size=16, custom={"num_classes": 3})
    manifest = preprocess(cfg.data, tmp_path, progress=False)
    assert manifest["splits"]["train"]["layout"] == "ragged" and manifest["splits"]["val"]["layout"] == "dense"
    dataset = StoreDataset(tmp_path / "store", "train", train=True)
    index = np.load(tmp_path / "store" / "train" / "index.npy")
    assert [tuple(r[1:]) for r in index] == [(21, 32), (21, 32), (20, 32)]  # 24x16, 28x18, 32x20 scaled to width 32
    for i in range(3):
        item = dataset[i]
        assert tuple(item["image"].shape) == (3, 16, 16) and tuple(item["instance"].shape) == (16, 16)


def test_crop_larger_than_stored_size_is_an_error(tmp_path):
    make_custom(tmp_path / "raw" / "custom", num_train=2, values=[0, 1])
    cfg = data_config("custom", root="raw", processed_dir="store", preprocess_mode="none", load_size=64, crop_size=64,
                 custom={"num_classes": 2})
    with pytest.raises(DataError, match="2 files: photo smaller than the 64x64 crop once resized with preprocess_mode "
                                        "'none'; change data.load_size"):
        preprocess(cfg.data, tmp_path, progress=False)


def test_failed_preprocess_keeps_the_previous_store(tmp_path):
    raw = make_custom(tmp_path / "raw" / "custom", values=[0, 1])
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=16, crop_size=16, custom={"num_classes": 2})
    preprocess(cfg.data, tmp_path, progress=False)
    before = (tmp_path / "store" / "manifest.json").read_text()
    (raw / "train" / "images" / "img_0.jpg").write_bytes(b"broken")
    with pytest.raises(DataError, match="unreadable image"):
        preprocess(cfg.data, tmp_path, progress=False)
    assert (tmp_path / "store" / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "store"]


def test_spec_mismatch_is_refused(landscape_store):
    root, manifest = landscape_store
    other = DatasetSpec(**dict(manifest["spec"], use_instance=False))
    with pytest.raises(DataError, match="re-run the preprocess stage"):
        StoreDataset(root / "store", "train", other)
    with pytest.raises(DataError, match="run the preprocess stage"):
        read_manifest(root / "nothing")


def test_train_shapes_as_published():
    spec = DatasetSpec("ade20k", 150, True, None, False, 286, 256, 1.0, "resize_and_crop")
    assert train_shape(spec, 640, 480) == (286, 286)
    city = dataclasses.replace(spec, load_size=512, crop_size=512, aspect_ratio=2.0, preprocess_mode="fixed")
    assert train_shape(city, 2048, 1024) == (256, 512) and city.image_size == (256, 512)
    width = dataclasses.replace(spec, preprocess_mode="scale_width_and_crop")
    assert train_shape(width, 572, 400) == (200, 286)
    assert train_shape(dataclasses.replace(spec, preprocess_mode="none"), 300, 200) == (200, 300)


def test_nearest_resize_matches_pil():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 150, (37, 53)).astype(np.uint8)
    for shape in ((16, 16), (74, 106), (20, 33)):
        ours = nearest_resize(labels, shape)
        pil = np.asarray(Image.fromarray(labels).resize((shape[1], shape[0]), Image.NEAREST))
        np.testing.assert_array_equal(ours, pil)


def test_samples_grid_written(landscape_store):
    root, _ = landscape_store
    grid = Image.open(root / "reports" / "samples.png")
    assert grid.mode == "RGB" and grid.size[0] >= 4 * 32


def test_one_seeding_scheme_for_every_sampler(landscape_store):
    """The loader's own shuffle and the training's GlobalBatchSampler give the same order."""
    from gaugan.data.dataset import EpochSampler
    from gaugan.train.distributed import GlobalBatchSampler

    root, _ = landscape_store
    dataset = StoreDataset(root / "store", "train", train=True, seed=5)
    global_sampler = GlobalBatchSampler(len(dataset), 4, rank=0, world_size=1, seed=5)
    for epoch in (0, 3):
        dataset.set_epoch(epoch)
        global_sampler.set_epoch(epoch)
        own = [index for _, index in EpochSampler(dataset, shuffle=True, seed=5)]
        assert own == list(global_sampler) and sorted(own) == list(range(12))


def test_preprocess_never_replaces_a_folder_it_did_not_write(tmp_path):
    """data.processed_dir naming a user's folder (e.g. a typo of an absolute path) loses nothing."""
    make_custom(tmp_path / "raw" / "custom", values=[0, 1])
    mydata = tmp_path / "mydata"
    (mydata / "sub").mkdir(parents=True)
    (mydata / "precious.txt").write_text("precious\n")
    cfg = data_config("custom", root="raw", processed_dir=str(mydata), load_size=16, crop_size=16,
                 custom={"num_classes": 2})
    with pytest.raises(DataError, match=r"mydata: data.processed_dir names an existing folder that this project did "
                                        r"not write \(it has no manifest.json"):
        preprocess(cfg.data, tmp_path, progress=False)
    assert (mydata / "precious.txt").read_text() == "precious\n" and (mydata / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata", "raw"]  # no .mydata.old / .mydata.tmp
    # an empty folder and an earlier store are replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = data_config("custom", root="raw", processed_dir=str(empty), load_size=16, crop_size=16, custom={"num_classes": 2})
    preprocess(cfg.data, tmp_path, progress=False)
    preprocess(cfg.data, tmp_path, progress=False)
    assert (empty / "manifest.json").is_file()


def test_landscapes_never_replace_a_folder_they_did_not_write(tmp_path):
    from gaugan.data.builtin import write_landscapes

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="data.root names an existing folder .* no builtin.json with dataset 'landscapes'"):
        write_landscapes(tmp_path / "mine", 2, 1, 16, seed=0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    write_landscapes(tmp_path / "generated", 2, 1, 16, seed=0)
    write_landscapes(tmp_path / "generated", 2, 1, 16, seed=1)  # its own earlier output is replaced


def test_the_store_must_match_the_data_settings(landscape_store):
    """Every stage reads the store through read_store, which compares its spec with what the
    configuration resolves to and names each disagreement and its setting."""
    root, manifest = landscape_store
    data = data_config("landscapes", root="raw", processed_dir="store", load_size=40, crop_size=32,
                  builtin={"num_train": 12, "num_val": 4, "size": 40, "seed": 0}).data
    checked_manifest, spec = read_store(root / "store", data)
    assert checked_manifest == manifest and spec == spec_from_manifest(manifest)
    manifest_path = root / "store" / "manifest.json"
    with pytest.raises(DataError) as caught:
        read_store(root / "store", dataclasses.replace(data, dataset="custom"))
    assert str(caught.value) == (
        f"{manifest_path}: the store was preprocessed for dataset 'landscapes', but data.dataset is 'custom'; "
        "run the preprocess stage again (dvc repro preprocess, or python -m stages.preprocess), or set the "
        "setting back")
    with pytest.raises(DataError, match=r"crop_size 32 \(data.crop_size gives 24\); run the preprocess stage again"):
        read_store(root / "store", dataclasses.replace(data, crop_size=24))
    with pytest.raises(DataError, match=r"use_instance True \(data.use_instance gives False\)"):
        read_store(root / "store", dataclasses.replace(data, use_instance=False))
    # Without size settings the built-in size decides both sizes.
    unsized = dataclasses.replace(data, load_size=None, crop_size=None)
    with pytest.raises(DataError, match=r"load_size 40 \(data.builtin.size gives 64\), crop_size 32 "
                                        r"\(data.builtin.size gives 64\)"):
        read_store(root / "store", dataclasses.replace(unsized, builtin=dataclasses.replace(data.builtin, size=64)))
    # A crop larger than the load size is the configuration's own error, named as such.
    with pytest.raises(ConfigError, match=r"data.load_size \(40\) is smaller than data.crop_size \(48\)"):
        read_store(root / "store", dataclasses.replace(data, crop_size=48))


def test_custom_values_inferred_by_preprocessing_are_not_compared(tmp_path):
    make_custom(tmp_path / "raw" / "custom", num_train=2, values=[0, 1, 2, 255])
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=16, crop_size=16)
    manifest = preprocess(cfg.data, tmp_path, progress=False)
    stored = spec_from_manifest(manifest)
    assert cfg.data.custom.num_classes is None and cfg.data.use_instance is None and stored.label_nc == 3
    assert read_store(tmp_path / "store", cfg.data)[1] == stored  # classes, instance edges, aspect: inferred
    custom = cfg.data.custom
    assert read_store(tmp_path / "store", dataclasses.replace(
        cfg.data, custom=dataclasses.replace(custom, num_classes=3)))[1] == stored
    with pytest.raises(DataError, match=r"label_nc 3 \(data.custom.num_classes gives 5\)"):
        read_store(tmp_path / "store", dataclasses.replace(cfg.data, custom=dataclasses.replace(custom, num_classes=5)))
    with pytest.raises(DataError, match=r"contain_dontcare True \(data.custom.dontcare_label gives False\), "
                                        r"dontcare_value 255 \(data.custom.dontcare_label gives None\)"):
        read_store(tmp_path / "store", dataclasses.replace(
            cfg.data, custom=dataclasses.replace(custom, dontcare_label=None)))
    with pytest.raises(DataError, match=r"aspect_ratio 1.0 \(data.aspect_ratio gives 2.0\)"):
        read_store(tmp_path / "store", dataclasses.replace(cfg.data, aspect_ratio=2.0))


# ---------------------------------------------------------------- no room on the disk


@pytest.mark.parametrize("failing", ["reserving the arrays", "writing a pair"])
def test_a_full_disk_is_one_line_and_keeps_the_earlier_store(failing, tmp_path, monkeypatch):
    """preprocess on a full disk died with a traceback ('No space left on device'), or of SIGBUS
    (a memory-mapped sparse file; seen on a 256 KB tmpfs), leaving a half-written .store.tmp."""
    import errno

    from gaugan.data.store import SplitWriter

    make_custom(tmp_path / "raw" / "custom", values=[0, 1])
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=16, crop_size=16, custom={"num_classes": 2})
    preprocess(cfg.data, tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "writing a pair":
        monkeypatch.setattr(SplitWriter, "put", full)
    else:
        monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DataError) as info:
        preprocess(cfg.data, tmp_path, progress=False)
    assert str(info.value) == (
        f"{tmp_path / 'store'}: no room left on the disk to write here (No space left on device); nothing was "
        f"written (an earlier store is kept). Free space on that disk, or set data.processed_dir to a folder on a "
        f"disk with room")
    assert {p.name: p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "store"]  # no .store.tmp


def test_a_file_size_limit_is_one_line_and_leaves_no_half_written_store(tmp_path):
    """A store file over the file-size limit (`ulimit -f`, FAT32's 4 GB) died with 'File too large'."""
    import subprocess
    import sys

    from tests.support import write_params

    make_custom(tmp_path / "raw" / "custom", num_train=6, values=[0, 1], instances=False)
    write_params(tmp_path)
    script = ("import resource\n"
              "from pathlib import Path\n"
              "from gaugan.data.preprocess import preprocess\n"
              "from pipeline.stage import run_stage\n"
              "from tests.support import data_config\n"
              "cfg = data_config('custom', root='raw', processed_dir='store', load_size=64, crop_size=64,\n"
              "             custom={'num_classes': 2})\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # each images.npy needs more\n"
              "run_stage('preprocess', lambda _cfg, root: preprocess(cfg.data, root, progress=False))\n")
    env = stage_environment()
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2 and result.stderr == (
        f"preprocess: {tmp_path / 'store'}: a file is larger than this file system or `ulimit -f` allows (File too "
        f"large); nothing was written (an earlier store is kept). Set data.processed_dir to a folder on another file "
        f"system (FAT32 stops at 4 GB), or raise the limit\n"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "raw"]


def test_a_full_disk_while_writing_the_reports_is_one_line(tmp_path, monkeypatch):
    import errno

    make_custom(tmp_path / "raw" / "custom", values=[0, 1])
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=16, crop_size=16, custom={"num_classes": 2})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gaugan.data.preprocess.render_samples", full)
    with pytest.raises(DataError) as info:
        preprocess(cfg.data, tmp_path, reports_dir=tmp_path / "reports", progress=False)
    assert str(info.value) == (f"{tmp_path / 'reports'}: no room left on the disk to write here (No space left on "
                               f"device); no file there is half written (the store itself was written). Free space "
                               f"on that disk")
