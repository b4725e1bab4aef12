"""`gaugan check-data` and `gaugan bench-loader`, called in-process."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from gaugan.data.bench import benchmark_loader, build_benchmark_store
from pipeline.cli import app
from tests.support import label_map, make_cityscapes, make_custom, save_index

runner = CliRunner()


def test_check_data_summary(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    result = runner.invoke(app, ["check-data", "--dataset", "cityscapes", "--root", str(root), "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    assert "train: 4 pairs, 4 instance maps" in result.output and "32x16 (4)" in result.output
    assert "sky" in result.output and "%" in result.output and "no problems found" in result.output


def test_check_data_lists_every_problem_and_fails(tmp_path):
    root = make_custom(tmp_path / "custom", values=[0, 1, 2])
    save_index(root / "train" / "labels" / "img_1.png", label_map([0, 40]))
    save_index(root / "val" / "labels" / "img_0.png", label_map([0, 41]))
    result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(root), "--num-classes", "3",
                                 "--num-workers", "0"])
    assert result.exit_code == 1
    assert "2 problem(s) found" in result.output
    assert "img_1.png: label value(s) 40" in result.output and "img_0.png: label value(s) 41" in result.output
    assert "data.custom.num_classes" in result.output


def test_check_data_user_errors_exit_2(tmp_path):
    result = runner.invoke(app, ["check-data", "--dataset", "kitti", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "expected one of" in result.output
    result = runner.invoke(app, ["check-data", "--dataset", "ade20k", "--root", str(tmp_path / "none")])
    assert result.exit_code == 2 and "not found" in result.output and "Traceback" not in result.output


def test_check_data_takes_the_pipelines_root_or_the_dataset_folder(tmp_path):
    make_custom(tmp_path / "raw" / "custom", values=[0, 1, 2])
    for root in (tmp_path / "raw", tmp_path / "raw" / "custom"):  # data.root, and the folder itself
        result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(root), "--num-workers", "0"])
        assert result.exit_code == 0, result.output
        assert f"at {tmp_path / 'raw' / 'custom'}" in result.output and "no problems found" in result.output


def test_check_data_exit_codes_match_the_help(tmp_path):
    help_text = " ".join(runner.invoke(app, ["check-data", "--help"]).output.split())
    assert "1: problems in the data" in help_text and "2: a usage error" in help_text
    (tmp_path / "photos").mkdir()  # a folder without the layout: a problem of the data, exit 1
    result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(tmp_path / "photos")])
    assert result.exit_code == 1 and "1 problem(s) found" in result.output and "no train/, val/" in result.output
    result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "folder not found" in result.output


def test_bench_loader_writes_report(tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench-loader", "--size", "32", "--num-images", "16", "--batch-size", "4",
                                 "--num-workers", "0", "--num-batches", "6", "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["images_per_s"] > 0 and report["images_timed"] == 24
    assert report["config"]["image_shape_chw"] == [3, 32, 32] and report["config"]["stored_size"] == [36, 36]
    assert len(report["uptime"]["loadavg_before"]) == 3


def test_benchmark_store_reuse_with_workers(tmp_path):
    store = build_benchmark_store(tmp_path, size=32, num_images=8)
    result = benchmark_loader(store, batch_size=4, num_workers=1, num_batches=4, warmup_batches=1)
    assert result["images_timed"] == 16 and np.isfinite(result["images_per_s"])


def test_empty_split_folders_are_named_not_a_class_count_problem(tmp_path):
    """Empty train/ and val/ folders used to be reported as 'cannot infer the number of classes'."""
    import pytest

    from gaugan.data.io import DataError
    from gaugan.data.preprocess import preprocess
    from tests.support import data_config

    root = tmp_path / "raw" / "custom"
    for split in ("train", "val"):
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True)
    problems = [f"  - {root / split}: the folder is empty: no {split} pairs (put the photos in {split}/images/ and "
                f"their label maps, with the same names, in {split}/labels/)" for split in ("train", "val")]
    result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(root), "--num-workers", "0"])
    assert result.exit_code == 1 and result.output.splitlines() == ["2 problem(s) found:"] + problems
    with pytest.raises(DataError) as info:
        preprocess(data_config("custom", root="raw", processed_dir="store").data, tmp_path, progress=False)
    assert str(info.value).splitlines() == [f"{root}: the dataset has problems; nothing was written.",
                                            "2 problem(s) found:"] + problems
    # an empty val/ beside a full train/ is named the same way
    make_custom(root, values=[0, 1], num_val=0, instances=False)
    result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(root), "--num-workers", "0"])
    assert result.exit_code == 1 and result.output.splitlines()[-2:] == ["1 problem(s) found:", problems[1]]


def test_unreadable_training_labels_are_listed_not_a_class_count_problem(tmp_path):
    root = make_custom(tmp_path / "custom", num_train=2, values=[0, 1], instances=False)
    for i in range(2):
        (root / "train" / "labels" / f"img_{i}.png").write_bytes(b"")
    result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(root), "--num-workers", "0"])
    assert result.exit_code == 1 and "cannot infer" not in result.output
    assert result.output.splitlines()[0] == "2 problem(s) found, 1 cause:"
    assert result.output.splitlines()[1].startswith("  - 2 files: unreadable image (not a format PIL can identify) "
                                                    "(e.g. train/labels/img_0.png, train/labels/img_1.png)")
