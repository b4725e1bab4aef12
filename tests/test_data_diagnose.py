"""Likely dataset mistakes said as warnings (a void value trained as a class, a stray value that
inflates an inferred class count, photos distorted differently in train and val) and the label
values that are errors (label_nc itself beside a don't-care value)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from gaugan.data.check import check_dataset, format_report
from gaugan.data.io import DataError
from gaugan.data.preprocess import preprocess
from pipeline.cli import app
from tests.support import data_config, label_map, make_custom, save_index, save_photo

runner = CliRunner()


def street_scene(seed: int, void: int = 11, void_regions: bool = False) -> np.ndarray:
    """64x96 blocks of classes 0..10, separated by 1-pixel lines of the void value (annotation gaps)."""
    rng = np.random.default_rng(seed)
    label = np.kron(rng.integers(0, void, (2, 3)), np.ones((32, 32), dtype=np.int64))
    if void_regions:
        label[:16, :16] = void  # void as a region, not along boundaries
    else:
        label[31, :] = label[:, 31] = label[:, 63] = void
    return label


def make_street(root, num_train: int = 4, num_val: int = 2, **scene) -> None:
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            save_photo(root / split / "images" / f"f{i}.png", size=(96, 64), seed=i)
            save_index(root / split / "labels" / f"f{i}.png", street_scene(i, **scene))


def test_void_along_boundaries_is_flagged_with_the_setting_to_use(tmp_path):
    make_street(tmp_path / "raw" / "custom")
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=96, crop_size=96)
    report = check_dataset(cfg.data, tmp_path / "raw" / "custom")
    assert report.ok and len(report.warnings) == 1
    text = format_report(report)
    assert "warning: label value 11 (class_11) looks like a void / unlabelled value, not a class" in text
    assert "99% of its pixels lie along region boundaries (other classes: 7%)" in text and "set data.custom.dontcare_label: 11" in text
    assert "no problems found (1 warning(s) above)" in text
    manifest = preprocess(cfg.data, tmp_path, progress=False)  # the same warning in the preprocess output
    assert manifest["source"]["warnings"] == report.warnings
    fixed = data_config("custom", root="raw", processed_dir="store", load_size=96, crop_size=96,
                   custom={"dontcare_label": 11})
    report = check_dataset(fixed.data, tmp_path / "raw" / "custom")
    assert report.ok and report.warnings == [] and report.spec.label_nc == 11


def test_void_named_in_the_class_file_is_flagged_but_background_is_not(tmp_path):
    root = tmp_path / "custom"
    make_street(root, void_regions=True)
    names = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "person", "bicycle"]
    (root / "classes.txt").write_text("\n".join(names + ["Unlabelled"]) + "\n")
    report = check_dataset(data_config("custom").data, root)
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("label value 11 (Unlabelled) looks like a void / unlabelled value, not a "
                                         "class: classes.txt names it 'Unlabelled'")
    (root / "classes.txt").write_text("\n".join(names + ["background"]) + "\n")
    assert check_dataset(data_config("custom").data, root).warnings == []


def test_void_warning_through_the_preprocess_stage(tmp_path, capsys):
    from gaugan.config import replace
    from stages import preprocess as preprocess_stage

    make_street(tmp_path / "data" / "raw" / "custom")
    cfg = replace(data_config("custom", load_size=96, crop_size=96), data={"processed_dir": "data/processed"})
    preprocess_stage.run(cfg, tmp_path)
    assert "preprocess: warning: label value 11 (class_11) looks like a void" in capsys.readouterr().err


def test_label_nc_beside_a_dontcare_value_is_an_error(tmp_path):
    """num_classes=3 with don't-care 255: the value 3 used to merge silently into don't-care."""
    root = make_custom(tmp_path / "custom", values=[0, 1, 2, 3])
    result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(root), "--num-classes", "3",
                                 "--num-workers", "0"])
    assert result.exit_code == 1, result.output
    assert "5 files: label value(s) 3 outside the valid range 0..2 or the don't-care value 255" in result.output
    assert "no problems found" not in result.output


def test_ade20k_keeps_its_last_value():
    from gaugan.data.io import map_labels
    from gaugan.data.registry import published_spec

    spec = published_spec("ade20k")
    assert map_labels(np.array([[0, 150]]), spec, "x.png").tolist() == [[0, 150]]
    with pytest.raises(DataError, match="value\\(s\\) 151 outside the valid range 0..150"):
        map_labels(np.array([[151]]), spec, "x.png")


def test_a_stray_value_that_inflates_the_inferred_class_count_is_named(tmp_path):
    root = make_custom(tmp_path / "custom", num_train=4, values=[0, 1, 2])
    stray = label_map([0, 1, 2], seed=1, shape=(18, 28))
    stray[0, 0] = 200
    save_index(root / "train" / "labels" / "img_1.png", stray)
    report = check_dataset(data_config("custom").data, root)
    assert report.ok and report.spec.label_nc == 201
    assert report.warnings == [
        "label values 0..2 in 4 training files, but 200 only in train/labels/img_1.png: 201 classes inferred "
        "(max value + 1), 197 of them never used; set data.custom.num_classes or fix the file(s)"
    ]
    # a class missing from the training split (a small gap) is not a stray value
    save_index(root / "train" / "labels" / "img_1.png", label_map([0, 2, 4], seed=1, shape=(18, 28)))
    assert check_dataset(data_config("custom").data, root).warnings == []


def make_photos(root, size: tuple[int, int], num_train: int = 3, num_val: int = 2) -> None:
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            save_photo(root / split / "images" / f"p{i}.jpg", size=size, seed=i)
            save_index(root / split / "labels" / f"p{i}.png", label_map([0, 1, 2], seed=i, shape=(size[1], size[0])))


def test_custom_photos_keep_their_aspect_ratio_by_default(tmp_path):
    """480x360-like photos: stored 'fixed' at their own 4:3 for training and validation alike."""
    make_photos(tmp_path / "raw" / "custom", (120, 90))
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=143, crop_size=128)
    report = check_dataset(cfg.data, tmp_path / "raw" / "custom")
    assert report.spec.preprocess_mode == "fixed" and report.spec.image_size == (96, 128)
    text = format_report(report)
    assert ("stored: preprocess_mode 'fixed': train photos resized to 143x107 (aspect 1.33), then random 128x96 "
            "crops; val photos resized whole to 128x96 (WxH)") in text
    assert "aspect ratios (W/H): 1.33 (3)" in text and "the training photos' most common 1.33" in text
    assert report.warnings == []
    manifest = preprocess(cfg.data, tmp_path, progress=False)
    assert manifest["splits"]["train"]["stored_size"] == [107, 143] and manifest["splits"]["val"]["stored_size"] == [96, 128]


def test_train_and_val_distorted_differently_is_a_warning(tmp_path):
    make_photos(tmp_path / "custom", (90, 120))  # portrait photos, square crops, aspect kept only for training
    cfg = data_config("custom", preprocess_mode="scale_width_and_crop", load_size=72, crop_size=64)
    report = check_dataset(cfg.data, tmp_path / "custom")
    assert report.ok and report.warnings == [
        "train and val distort the photos differently: 5 photos (e.g. 5 of aspect 0.75 like 90x120) are stored at "
        "aspect 0.75 for training (data.preprocess_mode 'scale_width_and_crop') but 1.00 for validation, so the "
        "generator is scored on shapes it was not trained on. Leave data.preprocess_mode and data.aspect_ratio null "
        "for custom data (fixed at the photos' own aspect ratio), or set data.preprocess_mode: fixed and "
        "data.aspect_ratio: 0.75"
    ]


STREET_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "person", "bicycle"]


def test_problems_are_grouped_by_cause_and_a_void_value_beyond_the_classes_is_named(tmp_path):
    """classes.txt names 11 classes and void is stored as 11: check-data printed one identical line per
    file (468 on a real set) and never said that 11 looks like void."""
    root = tmp_path / "raw" / "custom"
    make_street(root, num_train=24, num_val=6)
    (root / "classes.txt").write_text("\n".join(STREET_CLASSES) + "\n")
    for name in ("f3", "f4"):  # two files also hold a 12: another cause, too rare to be void
        label = street_scene(int(name[1:]))
        label[0, 0] = 12
        save_index(root / "train" / "labels" / f"{name}.png", label)
    cause = ("outside the valid range 0..10 or the don't-care value 255 for dataset 'custom' (label_nc=11, "
             "contain_dontcare=True); check data.custom.num_classes, data.custom.dontcare_label or the dataset's "
             "classes.txt / classes.csv")
    grouped = [
        f"  - 28 files: label value(s) 11 {cause} (e.g. train/labels/f0.png, train/labels/f1.png, "
        f"train/labels/f10.png)",
        f"  - 2 files: label value(s) 11, 12 {cause} (e.g. train/labels/f3.png, train/labels/f4.png)",
    ]
    hint = ("  hint: label value 11 is in all 30 label maps, beyond the 11 classes named in classes.txt (0..10): it is "
            "probably the void / unlabelled label. If so, set data.custom.dontcare_label: 11 (check-data: --dontcare "
            "11); if it is a class, name it in classes.txt")
    result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(root), "--num-workers", "0"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[lines.index("30 problem(s) found, 2 causes:") + 1:] == grouped + [hint]
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=96, crop_size=96)
    with pytest.raises(DataError) as info:  # preprocess says the same
        preprocess(cfg.data, tmp_path, progress=False)
    assert str(info.value).splitlines()[1:] == ["30 problem(s) found, 2 causes:"] + grouped + [hint]
    result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(root), "--num-workers", "0",
                                 "--dontcare", "11"])
    assert result.output.splitlines()[-2:] == [  # the hint's setting: only the rare 12 is left
        "2 problem(s) found, 1 cause:",
        "  - 2 files: label value(s) 12 outside the valid range 0..10 or the don't-care value 11 for dataset 'custom' "
        "(label_nc=11, contain_dontcare=True); check data.custom.num_classes, data.custom.dontcare_label or the "
        "dataset's classes.txt / classes.csv (e.g. train/labels/f3.png, train/labels/f4.png)",
    ]
