"""The built-in landscapes: deterministic, layered like real scenes, instances, styles."""

from __future__ import annotations

import numpy as np
import pytest

from gaugan.data.builtin import (
    BUSH,
    CLOUD,
    GRASS,
    MOUNTAIN,
    ROCK,
    SAND,
    SKY,
    SNOW,
    TREE,
    WATER,
    generate_landscape,
    write_landscapes,
)
from gaugan.data.registry import LANDSCAPE_CLASSES


def test_same_seed_split_index_same_sample_and_seed_changes_it():
    a, b = generate_landscape(3, "train", 7, 64), generate_landscape(3, "train", 7, 64)
    for x, y in ((a.image, b.image), (a.label, b.label), (a.instance, b.instance)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.label, generate_landscape(4, "train", 7, 64).label)
    assert not np.array_equal(a.label, generate_landscape(3, "val", 7, 64).label)


def test_written_files_independent_of_count(tmp_path):
    write_landscapes(tmp_path / "small", 2, 1, 32, seed=1)
    write_landscapes(tmp_path / "large", 4, 2, 32, seed=1, num_workers=2)
    for rel in ("train/images/000001.png", "train/labels/000001.png", "train/instances/000001.png",
                "val/images/000000.png"):
        assert (tmp_path / "small" / rel).read_bytes() == (tmp_path / "large" / rel).read_bytes()
    assert not list(tmp_path.glob(".*tmp"))  # written via a temporary folder


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_shapes_dtypes_and_ranges(size):
    sample = generate_landscape(0, "train", 1, size)
    assert sample.image.shape == (size, size, 3) and sample.image.dtype == np.uint8
    assert sample.label.shape == (size, size) and sample.label.dtype == np.uint8
    assert sample.label.max() < len(LANDSCAPE_CLASSES) and sample.instance.dtype == np.int32


def test_scenes_are_layered_and_use_every_class():
    samples = [generate_landscape(0, "train", i, 64) for i in range(40)]
    present = set(np.unique(np.concatenate([s.label.ravel() for s in samples])))
    assert present == set(range(len(LANDSCAPE_CLASSES)))
    for s in samples:
        assert s.label[0].tolist().count(SKY) + s.label[0].tolist().count(CLOUD) + \
            s.label[0].tolist().count(MOUNTAIN) + s.label[0].tolist().count(SNOW) == 64  # sky-ish on top
        assert np.isin(s.label[-1], [GRASS, SAND, WATER, TREE, ROCK, BUSH]).all()  # ground at the bottom
        rows_with_sky = np.flatnonzero((s.label == SKY).any(axis=1))
        rows_with_grass = np.flatnonzero((s.label == GRASS).any(axis=1))
        if len(rows_with_sky) and len(rows_with_grass):
            assert rows_with_sky.min() < rows_with_grass.min()
        # snow lies above mountain rock in every column that has both
        for column in range(64):
            snow, rock = np.flatnonzero(s.label[:, column] == SNOW), np.flatnonzero(s.label[:, column] == MOUNTAIN)
            if len(snow) and len(rock):
                assert snow.min() < rock.max()


def test_objects_are_separate_instances_of_one_class():
    sample = next(s for s in (generate_landscape(0, "train", i, 64) for i in range(50))
                  if np.count_nonzero(np.unique(s.instance[s.label == TREE])) >= 2)
    for instance_id in np.unique(sample.instance):
        assert len(np.unique(sample.label[sample.instance == instance_id])) == 1  # an instance has one class
    trees = np.unique(sample.instance[sample.label == TREE])
    assert len(trees) >= 2


def test_styles_vary_and_photos_follow_labels():
    samples = [generate_landscape(0, "train", i, 64) for i in range(60)]
    assert len({s.style for s in samples}) >= 4 and len({s.season for s in samples}) == 3
    # classes look different: mean colours of sky, grass and water differ clearly on average
    means = {}
    for cls in (SKY, GRASS, WATER, SAND):
        pixels = np.concatenate([s.image[s.label == cls] for s in samples if s.style == "day"])
        means[cls] = pixels.mean(axis=0)
    assert means[SKY][2] > means[SKY][0] + 40  # a blue day sky
    assert means[GRASS][1] > means[GRASS][2] + 30  # green grass
    assert means[SAND][0] > means[WATER][0] + 60  # bright sand, dark water
    # the same label region is rendered differently under different styles
    night = [s.image[s.label == SKY].mean() for s in samples if s.style == "dusk"]
    day = [s.image[s.label == SKY].mean() for s in samples if s.style == "day"]
    assert np.mean(day) > np.mean(night) + 60

