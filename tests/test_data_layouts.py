"""Every dataset layout, with tiny files shaped exactly like the real ones, through listing,
validation (check-data's report) and the store; plus every validation error path.

The builders (one per official layout) are in tests/support.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gaugan.config import replace
from gaugan.data.check import check_dataset, format_report
from gaugan.data.dataset import StoreDataset
from gaugan.data.io import DataError
from gaugan.data.preprocess import preprocess
from gaugan.data.sources import stable_val_split
from gaugan.data.store import read_manifest, spec_from_manifest
from tests.support import (
    H,
    W,
    data_config,
    label_map,
    make_ade20k,
    make_cityscapes,
    make_coco_spade,
    make_custom,
    make_facades,
    save_index,
    save_photo,
)

# ---------------------------------------------------------------- happy paths


def test_ade20k_layout(tmp_path):
    root = make_ade20k(tmp_path / "ade20k")
    report = check_dataset(data_config("ade20k").data, root)
    assert report.ok, report.problems
    assert report.pairs == {"train": 3, "val": 2}
    assert report.spec.label_channels == 151 and report.instance_maps == {"train": 0, "val": 0}
    assert set(np.flatnonzero(report.class_pixels["train"])) == {0, 3, 17, 150}
    text = format_report(report)
    assert "sky" in text and "other" in text and "no problems found" in text


def test_ade20k_outdoor_filters_by_scene_and_by_list(tmp_path):
    root = make_ade20k(tmp_path / "ade20k", num_train=4, num_val=2)
    report = check_dataset(data_config("ade20k_outdoor").data, root)
    # odd indices are "bathroom" (indoor), even ones "street" (outdoor)
    assert [p.stem for p in report.listing.splits["train"]] == ["ADE_train_00000002", "ADE_train_00000004"]
    assert any("NOT comparable" in note for note in report.listing.notes)
    stems = tmp_path / "outdoor.txt"
    stems.write_text("ADE_train_00000001\nADE_val_00000001\n")
    report = check_dataset(data_config("ade20k_outdoor", outdoor_list=str(stems)).data, root)
    assert [p.stem for s in ("train", "val") for p in report.listing.splits[s]] == ["ADE_train_00000001", "ADE_val_00000001"]


def test_coco_spade_layout_with_dontcare_and_instances(tmp_path):
    root = make_coco_spade(tmp_path / "coco")
    report = check_dataset(data_config("coco").data, root)
    assert report.ok, report.problems
    assert report.instance_maps == {"train": 3, "val": 2}
    assert report.class_pixels["train"][182] > 0  # 255 -> the don't-care index label_nc
    assert report.spec.label_channels == 184


def test_cityscapes_layout_16bit_instances(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    report = check_dataset(data_config("cityscapes").data, root)
    assert report.ok, report.problems
    assert report.pairs == {"train": 4, "val": 2} and report.instance_maps == {"train": 4, "val": 2}
    stems = [p.stem for p in report.listing.splits["train"]]
    assert stems[0] == "aachen/aachen_000000_000019"
    assert report.image_sizes["train"] == {(32, 16): 4}


def test_facades_layout_and_stable_split(tmp_path):
    root = make_facades(tmp_path / "facades", count=10)
    report = check_dataset(data_config("facades").data, root)
    assert report.ok, report.problems
    assert report.pairs["train"] + report.pairs["val"] == 10 and report.pairs["val"] >= 1
    assert report.class_pixels["train"][0] == 0 and (report.class_pixels["train"][1:] > 0).all()
    # adding files never moves an existing file to the other split
    stems = [f"cmp_b{i:04d}" for i in range(1, 201)]
    before = stable_val_split(stems, 0.1, 0)
    after = stable_val_split(stems + [f"cmp_x{i:04d}" for i in range(100)], 0.1, 0)
    assert before == after & set(stems) and 5 <= len(before) <= 40


def test_custom_layout_inferred_classes_and_sizes(tmp_path):
    root = make_custom(tmp_path / "custom", values=[0, 1, 4, 255])
    report = check_dataset(data_config("custom").data, root)
    assert report.ok, report.problems
    assert report.spec.label_nc == 5  # max value 4 + 1; 255 is don't care
    assert report.spec.use_instance and report.spec.label_channels == 5 + 1 + 1
    assert len(report.image_sizes["train"]) == 3  # three different photo sizes


def test_custom_single_folder_split_and_palette_labels(tmp_path):
    root = tmp_path / "custom"
    for i in range(10):
        save_photo(root / "images" / f"{i}.png", seed=i)
        save_index(root / "labels" / f"{i}.png", label_map([0, 2, 3], seed=i), mode="P")
    assert Image.open(root / "labels" / "0.png").mode == "P"
    cfg = data_config("custom", custom={"val_fraction": 0.2, "split_seed": 3, "dontcare_label": None})
    report = check_dataset(cfg.data, root)
    assert report.ok, report.problems
    assert report.pairs["train"] + report.pairs["val"] == 10 and report.pairs["val"] >= 1
    again = check_dataset(cfg.data, root)
    assert [p.stem for p in again.listing.splits["val"]] == [p.stem for p in report.listing.splits["val"]]
    assert report.spec.label_nc == 4 and not report.spec.contain_dontcare and not report.spec.use_instance
    assert set(np.flatnonzero(report.class_pixels["train"])) == {0, 2, 3}  # indices, not palette colours


def test_custom_16bit_labels_store_as_uint16(tmp_path):
    make_custom(tmp_path / "raw" / "custom", values=[0, 299, 1000], instances=False, label_mode="I;16")
    cfg = data_config("custom", custom={"dontcare_label": 1000}, load_size=24, crop_size=16)
    cfg = replace(cfg, data={"root": "raw", "processed_dir": "store"})
    manifest = preprocess(cfg.data, tmp_path, progress=False)
    assert manifest["label_dtype"] == "uint16" and manifest["num_label_values"] == 301
    item = StoreDataset(tmp_path / "store", "val")[0]
    assert item["label"].dtype.is_signed and int(item["label"].max()) == 300  # don't care -> label_nc
    assert "instance" not in item


# ---------------------------------------------------------------- error paths


def test_out_of_range_value_names_file_value_and_setting(tmp_path):
    root = make_ade20k(tmp_path / "ade20k")
    bad = root / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000002.png"
    save_index(bad, label_map([0, 151, 200]))
    report = check_dataset(data_config("ade20k").data, root)
    assert not report.ok
    (problem,) = report.problems
    assert str(bad) in problem and "151, 200" in problem and "data.dataset" in problem


def test_custom_out_of_range_names_custom_settings(tmp_path):
    root = make_custom(tmp_path / "custom", values=[0, 1, 7])
    report = check_dataset(data_config("custom", custom={"num_classes": 3}).data, root)
    assert report.problems and all("data.custom.num_classes" in p and "7" in p for p in report.problems)
    assert len(report.problems) == 5  # every file is reported, not just the first


def test_size_mismatch_missing_pairs_unreadable_and_lossy_all_reported(tmp_path):
    root = make_custom(tmp_path / "custom", num_train=4, values=[0, 1])
    save_photo(root / "train" / "images" / "img_0.jpg", size=(5, 5))  # size mismatch
    (root / "train" / "labels" / "img_1.png").unlink()  # image without label
    save_index(root / "val" / "labels" / "orphan.png", label_map([0]))  # label without image
    (root / "train" / "images" / "img_2.jpg").write_bytes(b"not a jpeg")  # unreadable
    save_photo(root / "train" / "labels" / "img_9.jpg")  # a lossy label file
    (root / "train" / "instances" / "img_3.png").unlink()  # missing instance map
    save_index(root / "val" / "instances" / "typo_0.png", label_map([0]))  # instance map without a pair
    report = check_dataset(data_config("custom", custom={"num_classes": 2}).data, root)
    text = "\n".join(report.problems)
    assert "img_0.jpg: image is 5x5 (WxH)" in text and "must be the same size" in text
    assert "img_1.jpg: image has no label map" in text
    assert "orphan.png: label map has no image" in text
    assert "img_2.jpg: unreadable image" in text
    assert "img_9.jpg: a label map saved as lossy .jpg" in text
    assert "img_3" in text and "data.use_instance=false" in text
    assert "typo_0.png: instance map has no label map" in text
    assert "instances/img_1.png: instance map has no label map" in text  # the other half of img_1
    assert len(report.problems) == 8


def test_instance_map_size_mismatch(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes", cities=("aachen",))
    inst = root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png"
    save_index(inst, np.full((8, 8), 26001), mode="I;16")
    report = check_dataset(data_config("cityscapes").data, root)
    assert len(report.problems) == 1 and "instance map is 8x8" in report.problems[0]


def test_missing_dataset_folder_and_wrong_layout(tmp_path):
    with pytest.raises(DataError, match="dataset folder for 'ade20k' not found"):
        check_dataset(data_config("ade20k").data, tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="gtFine and leftImg8bit/ missing.*cityscapes-dataset.com"):
        check_dataset(data_config("cityscapes").data, tmp_path / "empty")
    with pytest.raises(DataError, match="no COCO-Stuff folders"):
        check_dataset(data_config("coco").data, tmp_path / "empty")


def test_preprocess_reports_all_problems_and_writes_nothing(tmp_path):
    raw = make_custom(tmp_path / "raw" / "custom", values=[0, 1, 9])
    cfg = data_config("custom", root="raw", processed_dir="store", custom={"num_classes": 2})
    with pytest.raises(DataError) as info:
        preprocess(cfg.data, tmp_path, progress=False)
    assert "5 problem(s)" in str(info.value) and "nothing was written" in str(info.value)
    assert not (tmp_path / "store").exists() and not (tmp_path / ".store.tmp").exists()
    assert raw.exists()


# ---------------------------------------------------------------- through the store


@pytest.mark.parametrize("dataset, make, expected_shape", [
    ("ade20k", make_ade20k, (16, 16)),
    ("coco", make_coco_spade, (16, 16)),
    ("cityscapes", make_cityscapes, (8, 16)),
    ("facades", make_facades, (16, 16)),
])
def test_store_from_each_layout(tmp_path, dataset, make, expected_shape):
    make(tmp_path / "raw" / dataset)
    sizes = {"cityscapes": {"load_size": 16, "crop_size": 16}}.get(dataset, {"load_size": 20, "crop_size": 16})
    cfg = data_config(dataset, root="raw", processed_dir="store", **sizes)
    manifest = preprocess(cfg.data, tmp_path, reports_dir=tmp_path / "reports", progress=False)
    spec = spec_from_manifest(read_manifest(tmp_path / "store"))
    assert spec.name == dataset and manifest["label_channels"] == spec.label_channels
    for split in ("train", "val"):
        item = StoreDataset(tmp_path / "store", split, train=split == "train")[0]
        assert tuple(item["image"].shape) == (3, *expected_shape)
        assert tuple(item["label"].shape) == expected_shape
        assert ("instance" in item) == spec.use_instance
        assert int(item["label"].max()) < spec.num_label_values
    assert (tmp_path / "reports" / "samples.png").is_file()
    assert (tmp_path / "reports" / "class_histogram.csv").read_text().count("\n") == spec.num_label_values + 1
    assert len(json.loads((tmp_path / "store" / "train" / "stems.json").read_text())) == manifest["splits"]["train"]["count"]


def test_outdoor_scene_rule():
    from gaugan.data.sources import _outdoor_scene

    for outdoor in ("street", "field_cultivated", "church_outdoor", "mountain_snowy", "forest_path", "coast"):
        assert _outdoor_scene(outdoor), outdoor
    for indoor in ("bathroom", "airport_terminal", "church_indoor", "art_gallery", "streetcar_interior"):
        assert not _outdoor_scene(indoor), indoor


def test_decompression_bomb_is_a_problem_of_its_file(tmp_path):
    """A 15000x15000 PNG used to stop check-data and preprocess with an uncaught DecompressionBombError."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    raw = make_custom(tmp_path / "raw" / "custom", values=[0, 1])
    Image.new("1", (15000, 15000)).save(raw / "train" / "labels" / "img_1.png")  # 27 kB, 225 megapixels
    save_index(raw / "val" / "labels" / "img_0.png", label_map([0, 7]))  # another problem, collected with it
    result = CliRunner().invoke(app, ["check-data", "--dataset", "custom", "--root", str(tmp_path / "raw"),
                                      "--num-classes", "2", "--num-workers", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "2 problem(s) found" in result.output
    assert ("img_1.png: 15000x15000 = 225,000,000 pixels, more than data.max_image_pixels (100,000,000); a file "
            "this large is likely corrupt or a decompression bomb") in result.output
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=16, crop_size=16, custom={"num_classes": 2})
    with pytest.raises(DataError, match=r"(?s)2 problem\(s\).*img_1.png: 15000x15000 = 225,000,000 pixels"):
        preprocess(cfg.data, tmp_path, progress=False)


def test_max_image_pixels_is_a_setting(tmp_path):
    raw = make_custom(tmp_path / "custom", num_train=1, num_val=1, values=[0, 1], instances=False)
    report = check_dataset(data_config("custom", max_image_pixels=300, custom={"num_classes": 2}).data, raw)
    assert len(report.problems) == 4  # the 24x16 photo and label of each split: 384 pixels > 300
    assert "24x16 = 384 pixels, more than data.max_image_pixels (300)" in report.problems[0]


def test_train_label_errors_are_reported_once(tmp_path):
    """Inferring the class count reads the training labels too: their errors used to appear twice."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    raw = make_custom(tmp_path / "raw" / "custom", values=[0, 1])
    (raw / "train" / "labels" / "img_1.png").write_bytes(b"not a png")
    result = CliRunner().invoke(app, ["check-data", "--dataset", "custom", "--root", str(raw), "--num-workers", "0"])
    assert result.exit_code == 1 and "1 problem(s) found" in result.output
    assert result.output.count("img_1.png: unreadable image") == 1
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=16, crop_size=16)
    with pytest.raises(DataError) as info:
        preprocess(cfg.data, tmp_path, progress=False)
    assert str(info.value).count("img_1.png: unreadable image") == 1 and "1 problem(s)" in str(info.value)


def test_size_mismatch_mentions_exif_orientation(tmp_path):
    raw = make_custom(tmp_path / "custom", num_train=1, num_val=1, values=[0, 1], instances=False)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a phone photo stored sideways
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (W, H, 3), dtype=np.uint8)).save(raw / "train" / "images" / "img_0.jpg",
                                                                           exif=exif)
    report = check_dataset(data_config("custom", custom={"num_classes": 2}).data, raw)
    assert len(report.problems) == 1
    assert "image is 16x24 (WxH) but its label map" in report.problems[0]
    assert "the photo has EXIF orientation 6: viewers show it rotated or mirrored, but its pixels are used as stored" \
        in report.problems[0]


# ---------------------------------------------------------------- linked folders


def test_pairs_behind_a_linked_folder_are_listed(tmp_path):
    """train/images/batch2 -> elsewhere: its 4 pairs used to be dropped while check-data said 'no problems found'."""
    root = make_custom(tmp_path / "custom", num_train=6, values=[0, 1], instances=False)
    elsewhere = tmp_path / "elsewhere"
    for i in range(4):
        save_photo(elsewhere / "images" / f"b{i}.jpg", seed=i)
        save_index(elsewhere / "labels" / f"b{i}.png", label_map([0, 1], seed=i))
    (root / "train" / "images" / "batch2").symlink_to(elsewhere / "images")
    (root / "train" / "labels" / "batch2").symlink_to(elsewhere / "labels", target_is_directory=True)
    report = check_dataset(data_config("custom").data, root)
    assert report.ok, report.problems
    assert report.pairs["train"] == 10
    assert sorted(p.stem for p in report.listing.splits["train"])[:4] == [f"batch2/b{i}" for i in range(4)]


def test_a_link_cycle_or_a_broken_link_is_a_problem_not_a_hang(tmp_path):
    root = make_custom(tmp_path / "custom", values=[0, 1], instances=False)
    images = root / "train" / "images"
    (images / "again").symlink_to(images)  # a cycle: images/again/again/...
    (images / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "shared").mkdir()
    (images / "one").symlink_to(tmp_path / "shared")
    (images / "two").symlink_to(tmp_path / "shared")  # the same folder twice: its files would be listed twice
    report = check_dataset(data_config("custom").data, root)
    assert report.pairs["train"] == 3
    assert sorted(report.problems) == [
        f"{images / 'again'}: a link to {images}, a folder that holds it; a link cycle, not followed "
        f"(remove the link)",
        f"{images / 'gone.jpg'}: a link to {tmp_path / 'deleted.jpg'}, which does not exist (remove the link or "
        f"restore the file)",
        f"{images / 'two'}: the same folder as {images / 'one'}, which is listed already; not listed twice (remove "
        f"one of them)",
    ]
