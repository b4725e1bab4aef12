"""Class names and colours of custom datasets: classes.txt / classes.csv beside the splits,
used by check-data, the store's manifest (and so the histogram, per-class IoU and the
report), the sample grid and the `classes` command; a bad file is an error naming its line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gaugan.config import replace
from gaugan.data.check import check_dataset, format_report
from gaugan.data.classes import class_colours, class_names, read_class_file
from gaugan.data.io import DataError
from gaugan.data.preprocess import preprocess
from gaugan.data.registry import resolve_dataset
from gaugan.data.store import read_manifest
from pipeline.cli import app
from tests.support import data_config, make_custom

runner = CliRunner()


def test_names_from_classes_txt_everywhere(tmp_path):
    raw = make_custom(tmp_path / "raw" / "custom", values=[0, 1, 2, 255])
    (raw / "classes.txt").write_text("# CamVid-like\nsky\n\nroad\ntree\n")
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=16, crop_size=16)
    report = check_dataset(cfg.data, raw)
    assert report.spec.label_nc == 3  # the count comes from the file when num_classes is null
    text = format_report(report)
    assert "sky" in text and "road" in text and "tree" in text and "class_0" not in text
    assert "classes: 3 named in classes.txt" in text
    manifest = preprocess(cfg.data, tmp_path, reports_dir=tmp_path / "reports", progress=False)
    assert manifest["class_names"] == ["sky", "road", "tree", "dontcare"]
    assert read_manifest(tmp_path / "store")["class_names"] == manifest["class_names"]
    assert (tmp_path / "reports" / "class_histogram.csv").read_text().splitlines()[1].startswith("0,sky,")


def test_colours_from_classes_csv(tmp_path):
    raw = make_custom(tmp_path / "raw" / "custom", values=[0, 1, 2])
    (raw / "classes.csv").write_text("name,r,g,b\nsky,70,130,180\nroad,128,64,128\ntree\n")
    cfg = data_config("custom", root="raw", processed_dir="store", load_size=16, crop_size=16)
    manifest = preprocess(cfg.data, tmp_path, progress=False)
    assert manifest["class_names"][:3] == ["sky", "road", "tree"]
    spec = resolve_dataset(cfg.data, inferred_num_classes=3)
    default = class_colours(spec)
    assert manifest["class_colours"][0] == [70, 130, 180] and manifest["class_colours"][1] == [128, 64, 128]
    assert manifest["class_colours"][2] == default[2].tolist()  # no colour given: the default palette's


def test_dontcare_channel_takes_the_name_of_the_dontcare_value(tmp_path):
    (tmp_path / "classes.txt").write_text("sky\nroad\nvoid\n")
    classes = read_class_file(tmp_path)
    cfg = data_config("custom", custom={"dontcare_label": 2})
    spec = resolve_dataset(cfg.data, inferred_num_classes=2)
    assert class_names(spec, classes) == ["sky", "road", "void"]


@pytest.mark.parametrize("name, text, message", [
    ("classes.csv", "name,r,g,b\nsky,70,130,180\nroad,300,0,0\n", r"classes.csv:3: expected name,r,g,b with r, g, b "
                                                                   r"integers 0..255, got 'road,300,0,0'"),
    ("classes.csv", "sky,1,2\n", r"classes.csv:1: expected name or name,r,g,b \(3 fields\)"),
    ("classes.txt", "sky\nroad\nsky\n", r"classes.txt:3: class name 'sky' repeats line 1"),
    ("classes.txt", "# nothing\n", r"classes.txt: no class names in the file"),
])
def test_bad_class_file_names_file_and_line(tmp_path, name, text, message):
    raw = make_custom(tmp_path / "custom", values=[0, 1])
    (raw / name).write_text(text)
    with pytest.raises(DataError, match=message):
        check_dataset(data_config("custom").data, raw)
    result = runner.invoke(app, ["check-data", "--dataset", "custom", "--root", str(raw), "--num-workers", "0"])
    assert result.exit_code == 1 and name in result.output and "Traceback" not in result.output


def test_two_class_files_are_an_error(tmp_path):
    (tmp_path / "classes.txt").write_text("a\n")
    (tmp_path / "classes.csv").write_text("a\n")
    with pytest.raises(DataError, match="two class files"):
        read_class_file(tmp_path)


def test_classes_command_reads_the_class_file(tmp_path):
    raw = tmp_path / "raw" / "custom"
    raw.mkdir(parents=True)
    (raw / "classes.csv").write_text("sky,70,130,180\nroad\n")
    result = runner.invoke(app, ["classes", "--dataset", "custom", "--root", str(tmp_path / "raw")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("custom: 2 classes") and lines[1] == "   0  #4682b4  sky" and lines[2].endswith("road")
    result = runner.invoke(app, ["classes", "--dataset", "custom", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "no classes.txt or classes.csv" in result.output


def test_segmenter_reports_per_class_iou_under_the_file_names(tmp_path, monkeypatch):
    from stages import segmenter as segmenter_stage

    raw = make_custom(tmp_path / "data" / "raw" / "custom", num_train=4, values=[0, 1, 2])
    (raw / "classes.txt").write_text("sky\nroad\ntree\n")
    base = data_config("custom", root="data/raw", processed_dir="data/processed", load_size=16, crop_size=16,
                  custom={"dontcare_label": None})
    cfg = replace(base, train={"device": "cpu"}, segmenter={"width": 4, "num_steps": 2, "batch_size": 2})
    preprocess(cfg.data, tmp_path, progress=False)
    segmenter_stage.run(cfg, tmp_path)
    report = json.loads((tmp_path / "reports" / "segmenter.json").read_text())
    assert list(report["per_class_iou"]) == ["sky", "road", "tree"]
    assert np.isfinite(report["real_miou"])


def test_training_sample_grids_use_the_classes_file_colours(tmp_path):
    from gaugan.train.loop import train

    raw = make_custom(tmp_path / "raw" / "custom", values=[0, 1, 2])
    (raw / "classes.csv").write_text("name,r,g,b\nsky,70,130,180\nroad,128,64,128\ntree,250,10,10\n")
    base = data_config("custom", root="raw", processed_dir="store", load_size=32, crop_size=32,
                  preprocess_mode="fixed", aspect_ratio=1.0, custom={"dontcare_label": None})
    preprocess(base.data, tmp_path, progress=False)
    cfg = replace(base, generator={"ngf": 8, "spade_hidden": 16}, discriminator={"ndf": 8}, loss={"use_vgg_loss": False},
                  train={"batch_size": 2, "max_steps": 1, "log_every": 1, "sample_every": 1, "checkpoint_every": 100,
                         "device": "cpu"}, tracking={"enabled": False})
    train(cfg, tmp_path / "store", tmp_path / "ckpt", show_progress=False)
    grid = np.asarray(Image.open(tmp_path / "ckpt" / "samples" / "step_0000001.png"))
    label_tiles = grid[:, : grid.shape[1] // 3].reshape(-1, 3)  # rows of (label | generated | real)
    assert {tuple(colour) for colour in label_tiles} <= {(70, 130, 180), (128, 64, 128), (250, 10, 10)}
