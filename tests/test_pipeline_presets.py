"""Every preset: valid against params.yaml, setting only keys that exist; the gpu presets: the
SPADE paper's settings for each dataset with a published configuration, and OASIS's for the
three datasets of its paper."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gaugan.config import Config, ConfigError, config_to_dict, flatten
from gaugan.data.registry import PUBLISHED, resolve_dataset
from pipeline.params import parse_override_value, read_params
from pipeline.presets import available_presets, preset_config, preset_overrides, preset_path

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
PRESETS = available_presets(ROOT)
GPU_PRESETS = [name for name in PRESETS if name.startswith("gpu-") and not name.endswith("-oasis")]
OASIS_PRESETS = [name for name in PRESETS if name.startswith("gpu-") and name.endswith("-oasis")]

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


# OASIS's training settings per dataset (Sushko et al. 2021, section 4; the authors' options):
# global batch, epochs, LabelMix weight, EMA decay, (G lr, D lr), network input size (H, W).
OASIS_SETTINGS = {
    "ade20k": (32, 200, 10.0, 0.9999, (1e-4, 4e-4), (256, 256)),
    "coco": (32, 100, 10.0, 0.9999, (1e-4, 4e-4), (256, 256)),
    "cityscapes": (20, 200, 5.0, 0.999, (4e-4, 4e-4), (256, 512)),
}
OASIS_COMMON = {
    "data.use_instance": False, "encoder.use_vae": False,
    "generator.arch": "oasis", "generator.ngf": 64, "generator.noise_channels": 64,
    "generator.num_upsampling_layers": "normal", "generator.param_free_norm": "syncbatch",
    "generator.spade_kernel_size": 3, "generator.spade_hidden": 128, "generator.use_spectral_norm": True,
    "discriminator.arch": "oasis", "discriminator.ndf": 64, "discriminator.num_res_blocks": 6,
    "discriminator.use_spectral_norm": True,
    "loss.use_feat_loss": False, "loss.use_vgg_loss": False, "loss.use_class_balancing": True,
    "loss.use_labelmix": True, "optim.use_ttur": False, "optim.beta1": 0.0, "optim.beta2": 0.999,
    "optim.num_epochs_decay": 0, "train.use_ema": True, "train.ema_statistics_batches": 51,
    "train.max_steps": None, "train.device": "auto",
}


def test_oasis_presets_cover_its_papers_datasets() -> None:
    assert {name.removeprefix("gpu-").removesuffix("-oasis") for name in OASIS_PRESETS} == set(OASIS_SETTINGS)


@pytest.mark.parametrize("name", OASIS_PRESETS)
def test_oasis_preset_applies_the_authors_settings(name: str) -> None:
    from gaugan.models import count_parameters, published_parameter_counts
    from gaugan.train.setup import build_training_models

    dataset = name.removeprefix("gpu-").removesuffix("-oasis")
    batch_size, epochs, labelmix, ema_decay, (lr_g, lr_d), image_size = OASIS_SETTINGS[dataset]
    cfg = preset_config(preset_path(name, ROOT), PARAMS)
    expected = dict(OASIS_COMMON, **{
        "data.dataset": dataset, "train.batch_size": batch_size, "optim.num_epochs_constant": epochs,
        "loss.lambda_labelmix": labelmix, "train.ema_decay": ema_decay, "optim.lr_g": lr_g, "optim.lr_d": lr_d})
    ours = flatten(config_to_dict(cfg))
    differing = {key: (ours[key], value) for key, value in expected.items() if ours[key] != value}
    assert not differing, f"{name}: (preset, authors) {differing}"
    spec = resolve_dataset(cfg.data)
    assert spec.image_size == image_size
    with torch.device("meta"):
        G, D, _ = build_training_models(cfg, spec)
    published = published_parameter_counts(PUBLISHED[dataset], "oasis")
    assert {"G": count_parameters(G), "D": count_parameters(D)} == published  # the networks `gaugan params` counts


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
