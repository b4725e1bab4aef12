"""The gpu presets: valid against params.yaml, and the paper's settings for every model section."""

from __future__ import annotations

from pathlib import Path

import pytest

from gaugan.config import Config, ConfigError, config_to_dict, flatten
from gaugan.data.registry import resolve_dataset
from pipeline.params import parse_override_value
from pipeline.presets import available_presets, preset_config, preset_overrides, preset_path

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
GPU_PRESETS = ["gpu-ade20k", "gpu-ade20k_outdoor", "gpu-cityscapes", "gpu-coco", "gpu-facades"]

# Where a preset deliberately differs from the official code's defaults (gaugan/config.py).
DATASET_DIFFERENCES = {
    "gpu-cityscapes": {"generator.num_upsampling_layers": "more", "train.batch_size": 16},
    "gpu-coco": {"optim.num_epochs_constant": 50, "optim.num_epochs_decay": 50, "train.batch_size": 32},
    "gpu-facades": {"train.batch_size": 8},
    "gpu-ade20k": {"train.batch_size": 32},
    "gpu-ade20k_outdoor": {"train.batch_size": 32},
}
MODEL_SECTIONS = ("generator", "discriminator", "encoder", "loss", "optim")


def test_every_gpu_preset_is_shipped() -> None:
    assert available_presets(ROOT) == GPU_PRESETS


@pytest.mark.parametrize("name", GPU_PRESETS)
def test_preset_applies_the_papers_settings(name: str) -> None:
    cfg = preset_config(preset_path(name, ROOT), PARAMS)
    assert cfg.data.dataset == name.removeprefix("gpu-")
    official = flatten(config_to_dict(Config()))
    ours = flatten(config_to_dict(cfg))
    expected = {key: official[key] for key in official if key.split(".")[0] in MODEL_SECTIONS}
    expected.update(DATASET_DIFFERENCES[name])
    differing = {key: (ours[key], value) for key, value in expected.items() if ours[key] != value}
    assert not differing, f"{name}: (preset, expected) {differing}"
    assert ours["train.max_steps"] is None and ours["train.device"] == "auto"
    spec = resolve_dataset(cfg.data)  # published sizes: 256x256, Cityscapes 256x512
    assert spec.image_size == ((256, 512) if name == "gpu-cityscapes" else (256, 256))


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
