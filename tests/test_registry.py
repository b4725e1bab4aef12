"""Dataset label conventions (docs/SPADE.md section 3) and label mapping errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gaugan.config import Config, ConfigError, DataConfig, replace
from gaugan.data.io import DataError, map_labels, read_index_map
from gaugan.data.registry import PUBLISHED, resolve_dataset


@pytest.mark.parametrize(
    ("name", "channels", "size"),
    [("ade20k", 151, (256, 256)), ("ade20k_outdoor", 151, (256, 256)), ("coco", 184, (256, 256)),
     ("cityscapes", 36, (256, 512)), ("facades", 13, (256, 256)), ("landscapes", 11, (64, 64))],
)
def test_published_label_channels_and_sizes(name, channels, size):
    spec = resolve_dataset(DataConfig(dataset=name))
    assert spec.label_channels == channels
    assert spec.image_size == size


def test_overrides_apply_and_nulls_mean_published():
    spec = resolve_dataset(DataConfig(dataset="coco", crop_size=128, load_size=143, use_instance=False))
    assert (spec.crop_size, spec.load_size, spec.label_channels) == (128, 143, 183)
    assert resolve_dataset(DataConfig(dataset="coco")) == PUBLISHED["coco"]


def test_builtin_size_follows_config():
    cfg = replace(Config(), data={"builtin": {"size": 32}})
    assert resolve_dataset(cfg.data).image_size == (32, 32)


def test_custom_needs_classes():
    with pytest.raises(ConfigError, match="data.custom.num_classes"):
        resolve_dataset(DataConfig(dataset="custom"))
    spec = resolve_dataset(DataConfig(dataset="custom"), inferred_num_classes=7)
    assert spec.label_nc == 7 and spec.contain_dontcare and spec.dontcare_value == 255
    assert spec.label_channels == 7 + 1 + 1


def test_load_smaller_than_crop_rejected():
    with pytest.raises(ConfigError, match=r"load_size \(100\) is smaller than data.crop_size \(256\)"):
        resolve_dataset(DataConfig(dataset="ade20k", load_size=100))


def test_coco_dontcare_maps_to_last_label_channel():
    spec = PUBLISHED["coco"]
    raw = np.array([[0, 181], [255, 7]])
    assert map_labels(raw, spec, "x.png").tolist() == [[0, 181], [182, 7]]


def test_ade20k_values_used_as_read():
    spec = PUBLISHED["ade20k"]
    raw = np.array([[0, 150], [3, 1]])
    assert map_labels(raw, spec, "a.png").tolist() == raw.tolist()


def test_out_of_range_label_names_file_value_and_setting():
    with pytest.raises(DataError, match=r"labels/x\.png: label value\(s\) 13.*facades.*data\.dataset"):
        map_labels(np.array([[1, 13]]), PUBLISHED["facades"], "labels/x.png")
    spec = resolve_dataset(DataConfig(dataset="custom"), inferred_num_classes=4)
    with pytest.raises(DataError, match=r"200.*data\.custom\.num_classes"):
        map_labels(np.array([[200]]), spec, "y.png")


def test_read_index_map_modes(tmp_path):
    values = np.array([[0, 3], [12, 200]], dtype=np.uint8)
    Image.fromarray(values, mode="L").save(tmp_path / "l.png")
    pal = Image.fromarray(values, mode="P")
    pal.putpalette([i % 256 for i in range(768)][::-1])  # colours that are NOT the indices
    pal.save(tmp_path / "p.png")
    wide = np.array([[0, 26001], [24000, 7]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "i16.png")
    assert read_index_map(tmp_path / "l.png").tolist() == values.tolist()
    assert read_index_map(tmp_path / "p.png").tolist() == values.tolist()
    assert read_index_map(tmp_path / "i16.png").tolist() == wide.tolist()


def test_colour_label_map_rejected(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(DataError, match=r"c\.png: the label map is a colour \(RGB\) image"):
        read_index_map(tmp_path / "c.png")


def test_unreadable_file_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: unreadable image"):
        read_index_map(bad)
    with pytest.raises(DataError, match=r"missing\.png: file not found"):
        read_index_map(tmp_path / "missing.png")


def test_class_names_cover_every_stored_index():
    from gaugan.data.classes import class_names

    ade = class_names(PUBLISHED["ade20k"])
    assert len(ade) == 151 and ade[0] == "other" and ade[150] == "flag"
    coco = class_names(PUBLISHED["coco"])
    assert len(coco) == 183 and coco[182] == "dontcare"
    assert class_names(resolve_dataset(DataConfig(dataset="custom"), inferred_num_classes=3)) == [
        "class_0", "class_1", "class_2", "dontcare"]
