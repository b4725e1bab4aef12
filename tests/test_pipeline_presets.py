"""Every preset: valid against params.yaml, setting only keys that exist; the gpu presets: the
paper's settings for each dataset with a published configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from gaugan.config import Config, ConfigError, config_to_dict, flatten
from gaugan.data.registry import PUBLISHED, resolve_dataset
from pipeline.params import parse_override_value, read_params
from pipeline.presets import available_presets, preset_config, preset_overrides, preset_path

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
PRESETS = available_presets(ROOT)
GPU_PRESETS = [name for name in PRESETS if name.startswith("gpu-")]

# The paper's training settings per dataset (Park et al. 2019, Section 4; the official
# training options): global batch, constant + decaying epochs, generator upsampling layers,
# network input size (H, W). Everything else in the model sections is the official code's
# default (gaugan/config.py).
PAPER_SETTINGS = {
    "ade20k": (32, (100, 100), "normal", (256, 256)),
    "ade20k_outdoor": (32, (100, 100), "normal", (256, 256)),
    "coco": (32, (50, 50), "normal", (256, 256)),
    "cityscapes": (16, (100, 100), "more", (256, 512)),
    # Not trained in the paper (pix2pix's dataset, 400 images): the official recipe at a small batch.
    "facades": (8, (100, 100), "normal", (256, 256)),
}
MODEL_SECTIONS = ("generator", "discriminator", "encoder", "loss", "optim")


def test_every_published_dataset_has_a_gpu_preset() -> None:
    paper_datasets = {name for name, spec in PUBLISHED.items() if name != "landscapes"}
    assert {name.removeprefix("gpu-") for name in GPU_PRESETS} == paper_datasets == set(PAPER_SETTINGS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_sets_only_existing_keys_and_validates(name: str) -> None:
    path = preset_path(name, ROOT)
    preset = flatten(read_params(path))
    unknown = set(preset) - set(flatten(read_params(PARAMS)))
    assert not unknown, f"{name} sets keys params.yaml does not have: {sorted(unknown)}"
    ours = flatten(config_to_dict(preset_config(path, PARAMS)))  # raises on a wrong type or range
    assert {key: ours[key] for key in preset} == preset  # applied as written


@pytest.mark.parametrize("name", GPU_PRESETS)
def test_gpu_preset_applies_the_papers_settings(name: str) -> None:
    dataset = name.removeprefix("gpu-")
    batch_size, (constant, decay), upsampling, image_size = PAPER_SETTINGS[dataset]
    cfg = preset_config(preset_path(name, ROOT), PARAMS)
    assert cfg.data.dataset == dataset
    official = flatten(config_to_dict(Config()))
    expected = {key: value for key, value in official.items() if key.split(".")[0] in MODEL_SECTIONS}
    expected.update({"train.batch_size": batch_size, "optim.num_epochs_constant": constant,
                     "optim.num_epochs_decay": decay, "generator.num_upsampling_layers": upsampling,
                     "train.max_steps": None, "train.device": "auto"})
    ours = flatten(config_to_dict(cfg))
    differing = {key: (ours[key], value) for key, value in expected.items() if ours[key] != value}
    assert not differing, f"{name}: (preset, paper) {differing}"
    assert resolve_dataset(cfg.data).image_size == image_size  # the published sizes


def test_overrides_read_back_as_the_same_values() -> None:
    path = preset_path("gpu-cityscapes", ROOT)
    overrides = dict(item.split("=", 1) for item in preset_overrides(path))
    assert overrides["data.load_size"] == "null" and overrides["optim.lr"] == "0.0002"
    assert parse_override_value(overrides["loss.use_vgg_loss"]) is True
    assert parse_override_value(overrides["optim.lr"]) == 0.0002


def test_unknown_preset_and_bad_key_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="available presets: gpu-ade20k"):
        preset_path("gpu-imagenet", ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("generator:\n  ngf_typo: 64\n")
    with pytest.raises(ConfigError, match=r"preset .*bad.yaml.*generator.ngf_typo"):
        preset_config(bad, PARAMS)
