"""The config schema: params.yaml mirrors it key for key; bad keys and values are rejected clearly."""

from __future__ import annotations

import dataclasses

import pytest

from gaugan.config import Config, ConfigError, config_from_dict, config_to_dict, flatten, replace
from pipeline.params import apply_overrides, load_config, read_params
from tests.support import ROOT


def test_params_yaml_mirrors_schema_key_for_key():
    params = flatten(read_params(ROOT / "params.yaml"))
    schema = flatten(config_to_dict(Config()))
    assert sorted(params) == sorted(schema)


def test_round_trip():
    cfg = load_config(ROOT / "params.yaml")
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_unknown_key_named():
    data = config_to_dict(Config())
    data["generator"]["ngff"] = 3
    with pytest.raises(ConfigError, match=r"'generator\.ngff'.*allowed keys: arch, ngf"):
        config_from_dict(data)


def test_unknown_section_named():
    data = config_to_dict(Config())
    data["trian"] = {}
    with pytest.raises(ConfigError, match="'trian'"):
        config_from_dict(data)


def test_missing_key_named():
    data = config_to_dict(Config())
    del data["optim"]["lr"]
    with pytest.raises(ConfigError, match=r"missing key\(s\) 'optim\.lr'"):
        config_from_dict(data)


def test_missing_nested_key_named():
    data = config_to_dict(Config())
    del data["data"]["builtin"]["seed"]
    with pytest.raises(ConfigError, match=r"'data\.builtin\.seed'"):
        config_from_dict(data)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("generator", "param_free_norm", "group", r"generator\.param_free_norm: got 'group'.*'instance', 'batch', 'syncbatch'"),
        ("generator", "spade_kernel_size", 4, r"spade_kernel_size: got 4.*1, 3, 5"),
        ("generator", "ngf", "64", r"generator\.ngf: got '64' \(str\), expected int"),
        ("train", "use_ema", 1, r"train\.use_ema: got 1 \(int\), expected bool"),
        ("generator", "ngf", True, r"generator\.ngf: got True"),
        ("data", "dataset", "imagenet", r"data\.dataset: got 'imagenet'.*'landscapes'"),
        ("train", "batch_size", 0, r"train\.batch_size: got 0, expected an integer >= 1"),
        ("data", "crop_size", "big", r"data\.crop_size: got 'big'.*int or null"),
        ("optim", "beta1", 2, r"optim\.beta1: got 2\.0, expected a number in \[0, 1\)"),
        ("optim", "beta2", 1.0, r"optim\.beta2: got 1\.0, expected a number in \[0, 1\)"),
        ("optim", "beta1", -0.1, r"optim\.beta1: got -0\.1"),
    ],
)
def test_wrong_type_or_value_named(section, key, value, expected):
    data = config_to_dict(Config())
    data[section][key] = value
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(data)


def test_int_accepted_for_float():
    cfg = replace(Config(), optim={"lr": 1})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.batch_size = 3  # type: ignore[misc]


def test_overrides_like_dvc_exp_run():
    data = read_params(ROOT / "params.yaml")
    out = apply_overrides(data, ["train.batch_size=4", "optim.lr=1e-4", "generator.arch=clade",
                                 "data.crop_size=null", "data.builtin.size=32"])
    cfg = config_from_dict(out)
    assert cfg.train.batch_size == 4 and cfg.optim.lr == 1e-4 and cfg.generator.arch == "clade"
    assert cfg.data.crop_size is None and cfg.data.builtin.size == 32
    assert read_params(ROOT / "params.yaml") == data


def test_override_unknown_key_lists_allowed():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.batchsize'.*batch_size"):
        apply_overrides(read_params(ROOT / "params.yaml"), ["train.batchsize=3"])


def test_load_config_error_names_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data: {}\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)
