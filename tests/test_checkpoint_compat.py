"""Checkpoint compatibility: official key names and shapes, strict loading, key-by-key errors, our format."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gaugan.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_state_dict_exactly,
    strip_wrapper_prefixes,
)
from gaugan.config import DiscriminatorConfig, EncoderConfig, GeneratorConfig
from gaugan.data.registry import published_spec
from gaugan.models import build_discriminator, build_encoder, build_generator, published_generator_config
from gaugan.models.loading import load_encoder, load_generator
from gaugan.models.official import load_official_generator, official_structure
from tests.support import landscapes_spec, state_shapes, write_checkpoint

# ---- the official layout, written out from docs/SPADE.md section 1 -------------------------


def official_generator_layout(label_channels: int, ngf: int = 64, hidden: int = 128, kernel: int = 3,
                              most: bool = False) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the authors' SPADEGenerator (spectral norm, synchronized batch norm, no VAE)."""
    layout: dict[str, tuple[int, ...]] = {"fc.weight": (16 * ngf, label_channels, 3, 3), "fc.bias": (16 * ngf,)}

    def spade(prefix: str, channels: int) -> None:
        layout[f"{prefix}.param_free_norm.running_mean"] = (channels,)
        layout[f"{prefix}.param_free_norm.running_var"] = (channels,)
        layout[f"{prefix}.param_free_norm.num_batches_tracked"] = ()
        layout[f"{prefix}.mlp_shared.0.weight"] = (hidden, label_channels, kernel, kernel)
        layout[f"{prefix}.mlp_shared.0.bias"] = (hidden,)
        for head in ("mlp_gamma", "mlp_beta"):
            layout[f"{prefix}.{head}.weight"] = (channels, hidden, kernel, kernel)
            layout[f"{prefix}.{head}.bias"] = (channels,)

    def spectral_conv(prefix: str, fin: int, fout: int, size: int, bias: bool = True) -> None:
        layout[f"{prefix}.weight_orig"] = (fout, fin, size, size)
        layout[f"{prefix}.weight_u"] = (fout,)
        layout[f"{prefix}.weight_v"] = (fin * size * size,)
        if bias:
            layout[f"{prefix}.bias"] = (fout,)

    blocks = [("head_0", 16, 16), ("G_middle_0", 16, 16), ("G_middle_1", 16, 16), ("up_0", 16, 8),
              ("up_1", 8, 4), ("up_2", 4, 2), ("up_3", 2, 1)]
    widths = [(name, fin * ngf, fout * ngf) for name, fin, fout in blocks]
    if most:
        widths.append(("up_4", ngf, ngf // 2))
    for name, fin, fout in widths:
        middle = min(fin, fout)
        spectral_conv(f"{name}.conv_0", fin, middle, 3)
        spectral_conv(f"{name}.conv_1", middle, fout, 3)
        spade(f"{name}.norm_0", fin)
        spade(f"{name}.norm_1", middle)
        if fin != fout:
            spectral_conv(f"{name}.conv_s", fin, fout, 1, bias=False)
            spade(f"{name}.norm_s", fin)
    final = ngf // 2 if most else ngf
    layout["conv_img.weight"] = (3, final, 3, 3)
    layout["conv_img.bias"] = (3,)
    return layout


def official_discriminator_layout(input_channels: int, ndf: int = 64, num_d: int = 2) -> dict[str, tuple[int, ...]]:
    layout: dict[str, tuple[int, ...]] = {}
    for k in range(num_d):
        prefix = f"discriminator_{k}"
        layout[f"{prefix}.model0.0.weight"] = (ndf, input_channels, 4, 4)
        layout[f"{prefix}.model0.0.bias"] = (ndf,)
        channels = [ndf, 2 * ndf, 4 * ndf, 8 * ndf]
        for n in (1, 2, 3):
            fin, fout = channels[n - 1], min(channels[n], 512)
            layout[f"{prefix}.model{n}.0.0.weight_orig"] = (fout, fin, 4, 4)
            layout[f"{prefix}.model{n}.0.0.weight_u"] = (fout,)
            layout[f"{prefix}.model{n}.0.0.weight_v"] = (fin * 16,)
        layout[f"{prefix}.model4.0.weight"] = (1, 8 * ndf, 4, 4)
        layout[f"{prefix}.model4.0.bias"] = (1,)
    return layout


def official_encoder_layout(nef: int = 64, z_dim: int = 256) -> dict[str, tuple[int, ...]]:
    widths = [3, nef, 2 * nef, 4 * nef, 8 * nef, 8 * nef, 8 * nef]
    layout: dict[str, tuple[int, ...]] = {}
    for n in range(1, 7):
        layout[f"layer{n}.0.weight_orig"] = (widths[n], widths[n - 1], 3, 3)
        layout[f"layer{n}.0.weight_u"] = (widths[n],)
        layout[f"layer{n}.0.weight_v"] = (widths[n - 1] * 9,)
    for head in ("fc_mu", "fc_var"):
        layout[f"{head}.weight"] = (z_dim, 8 * nef * 16)
        layout[f"{head}.bias"] = (z_dim,)
    return layout


@pytest.mark.parametrize("dataset", ["ade20k", "coco", "cityscapes"])
def test_published_generator_has_the_official_layout(dataset):
    spec = published_spec(dataset)
    with torch.device("meta"):
        G = build_generator(published_generator_config(dataset), spec.label_channels, spec.image_size)
    assert state_shapes(G) == official_generator_layout(spec.label_channels)
    assert len(G.state_dict()) == 234


def test_published_examples_of_official_keys():
    with torch.device("meta"):
        keys = set(build_generator(GeneratorConfig(), 151, (256, 256)).state_dict())
        d_keys = set(build_discriminator(DiscriminatorConfig(), 151).state_dict())
        e_keys = set(build_encoder(EncoderConfig()).state_dict())
    assert {"head_0.conv_0.weight_orig", "up_0.conv_s.weight_orig", "up_0.norm_s.param_free_norm.running_mean",
            "head_0.norm_0.mlp_shared.0.weight", "head_0.norm_0.mlp_gamma.bias", "fc.weight",
            "conv_img.weight"} <= keys
    assert {"discriminator_0.model1.0.0.weight_orig", "discriminator_1.model4.0.bias"} <= d_keys
    assert {"layer1.0.weight_orig", "fc_mu.weight"} <= e_keys


def test_small_default_structure_layouts_key_for_key():
    G = build_generator(GeneratorConfig(ngf=4, spade_hidden=8, num_upsampling_layers="most"), 7, (128, 128))
    assert state_shapes(G) == official_generator_layout(7, ngf=4, hidden=8, most=True)
    assert list(G.state_dict())[:3] == ["fc.weight", "fc.bias", "head_0.conv_0.bias"]  # official order
    D = build_discriminator(DiscriminatorConfig(ndf=4), 7)
    assert state_shapes(D) == official_discriminator_layout(10, ndf=4)
    with torch.device("meta"):
        E = build_encoder(EncoderConfig())
    assert state_shapes(E) == official_encoder_layout()


def test_vae_generator_fc_is_linear_z_to_start_tensor():
    G = build_generator(GeneratorConfig(ngf=4, spade_hidden=8), 7, (128, 256), z_dim=32)
    assert tuple(G.fc.weight.shape) == (16 * 4 * 4 * 8, 32)  # 16 ngf * sh * sw, sh = 128/32, sw = 256/32


# ---- official files ----------------------------------------------------------------------

TINY = GeneratorConfig(ngf=4, spade_hidden=8, param_free_norm="syncbatch")


def save_official(tmp_path, label_channels: int = 9, config: GeneratorConfig = TINY, image_size=(64, 64),
                  name: str = "latest_net_G.pth", prefix: str = "") -> tuple[torch.nn.Module, str]:
    """A trained-looking generator saved like the authors' files: a plain CPU state dict."""
    torch.manual_seed(0)
    G = build_generator(config, label_channels, image_size)
    seg = torch.zeros(2, label_channels, *image_size)
    seg[:, 0, :32] = 1
    seg[:, 1, 32:] = 1
    G(seg)  # one training-mode pass: running statistics and spectral-norm vectors move off their init
    path = tmp_path / name
    torch.save({prefix + k: v for k, v in G.state_dict().items()}, path)
    return G.eval(), str(path)


def test_official_round_trip_strict(tmp_path):
    G, path = save_official(tmp_path)
    loaded = load_official_generator(path, 9, (64, 64), config=TINY, infer_structure=False)
    for key, value in G.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    seg = torch.zeros(1, 9, 64, 64)
    seg[:, 3] = 1
    with torch.no_grad():
        assert torch.equal(loaded(seg), G(seg))
    assert not loaded.training


def test_official_structure_is_read_from_the_file(tmp_path):
    _, path = save_official(tmp_path, prefix="module.")  # a DataParallel-saved file
    state = torch.load(path)
    structure, z_dim, channels = official_structure(state, GeneratorConfig())
    assert (structure.ngf, structure.spade_hidden, structure.spade_kernel_size, channels, z_dim) == (4, 8, 3, 9, None)
    loaded = load_official_generator(path, 9, (64, 64))  # published defaults as the base, structure from the file
    assert loaded.fc.out_channels == 64


def test_wrapper_prefixes_stripped_with_their_version_metadata():
    G = build_generator(TINY, 9, (64, 64))
    wrapped = torch.nn.DataParallel(G).state_dict()  # keys "module.head_0...." as DataParallel saves them
    stripped = strip_wrapper_prefixes(wrapped)
    assert list(stripped) == list(G.state_dict())
    assert stripped._metadata["head_0.conv_0"] == G.state_dict()._metadata["head_0.conv_0"]  # spectral norm version
    load_state_dict_exactly(build_generator(TINY, 9, (64, 64)), wrapped, "wrapped")


def test_official_wrong_channel_count_names_file_and_both_counts(tmp_path):
    _, path = save_official(tmp_path)
    with pytest.raises(CheckpointError, match=rf"{path}: .*trained on 9 label channels but dataset 'coco' gives 184"):
        load_official_generator(path, 184, (64, 64), dataset="coco")
    # The strict layer underneath reports the same disagreement shape by shape.
    G = build_generator(TINY, 10, (64, 64))
    with pytest.raises(CheckpointError) as error:
        load_state_dict_exactly(G, torch.load(path), path)
    assert "fc.weight: checkpoint (64, 9, 3, 3) vs model (64, 10, 3, 3)" in str(error.value)
    assert "head_0.norm_0.mlp_shared.0.weight: checkpoint (8, 9, 3, 3) vs model (8, 10, 3, 3)" in str(error.value)


def test_official_mismatch_reported_key_by_key(tmp_path):
    G, path = save_official(tmp_path)
    state = torch.load(path)
    del state["up_1.norm_s.mlp_gamma.weight"]
    del state["head_0.norm_0.param_free_norm.num_batches_tracked"]  # tolerated, as torch does
    state["extra.weight"] = torch.zeros(1)
    state["conv_img.weight"] = torch.zeros(3, 5, 3, 3)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_official_generator(path, 9, (64, 64), config=TINY, infer_structure=False)
    message = str(error.value)
    assert message.startswith(f"{path}: the checkpoint does not fit the generator")
    assert "missing keys (1):\n    up_1.norm_s.mlp_gamma.weight" in message
    assert "unexpected keys (1):\n    extra.weight" in message
    assert "shape mismatches (1):\n    conv_img.weight: checkpoint (3, 5, 3, 3) vs model (3, 4, 3, 3)" in message
    assert "num_batches_tracked" not in message


def test_official_instance_norm_and_most_variants_are_recognised(tmp_path):
    config = dataclasses.replace(TINY, param_free_norm="instance", num_upsampling_layers="most", spade_kernel_size=1)
    G, path = save_official(tmp_path, config=config, image_size=(256, 256))
    loaded = load_official_generator(path, 9, (256, 256))
    assert hasattr(loaded, "up_4") and isinstance(loaded.head_0.norm_0.param_free_norm, torch.nn.InstanceNorm2d)
    assert loaded.head_0.norm_0.mlp_shared[0].kernel_size == (1, 1)


def test_unreadable_or_missing_file_is_a_clear_error(tmp_path):
    garbage = tmp_path / "latest_net_G.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"{garbage}: not a PyTorch checkpoint \(a text file"):
        load_official_generator(garbage, 9)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_official_generator(tmp_path / "nope.pth", 9)
    pickled = tmp_path / "object.pth"
    torch.save({"weights": torch.zeros(1), "callback": dataclasses.Field}, pickled)
    with pytest.raises(CheckpointError, match=r"disallowed Python object \(dataclasses.Field\).*could run code"):
        load_official_generator(pickled, 9)


# ---- our format --------------------------------------------------------------------------


def save_ours(tmp_path, use_vae: bool = False, with_ema: bool = True) -> tuple[dict, str]:
    """A tiny generator (tests/support.py) for 64x64 landscapes as ``last.pt``; its payload and path."""
    path = write_checkpoint(tmp_path / "last.pt", landscapes_spec(64), use_vae=use_vae, with_ema=with_ema)
    return torch.load(path, weights_only=True), str(path)


def test_our_checkpoint_prefers_ema_when_asked(tmp_path):
    payload, path = save_ours(tmp_path)
    loaded = load_generator(path)
    assert (loaded.source, loaded.weights, loaded.z_dim, loaded.image_size) == ("gaugan", "G_ema", None, (64, 64))
    assert torch.equal(loaded.generator.state_dict()["fc.weight"], payload["models"]["G_ema"]["fc.weight"])
    plain = load_generator(path, prefer_ema=False)
    assert plain.weights == "G"
    assert torch.equal(plain.generator.state_dict()["fc.weight"], payload["models"]["G"]["fc.weight"])
    assert not plain.generator.training


def test_our_vae_checkpoint_and_its_encoder(tmp_path):
    payload, path = save_ours(tmp_path, use_vae=True, with_ema=False)
    loaded = load_generator(path)
    assert loaded.z_dim == 16 and loaded.weights == "G"
    encoder = load_encoder(path)
    assert torch.equal(encoder.state_dict()["fc_mu.weight"], payload["models"]["E"]["fc_mu.weight"])


def test_our_checkpoint_errors(tmp_path):
    payload, path = save_ours(tmp_path)
    with pytest.raises(CheckpointError, match="no style encoder"):
        load_encoder(path)
    payload["format"] = "gaugan-checkpoint-v0"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"format 'gaugan-checkpoint-v0' is not supported"):
        load_generator(path)
    payload["format"] = CHECKPOINT_FORMAT
    payload["config"]["generator"]["ngf"] = 16  # config and weights disagree
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"(?s)models\['G_ema'\].*shape mismatches"):
        load_generator(path)
    payload["config"]["generator"]["width"] = 3
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"generator.width"):
        load_generator(path)


def test_official_file_needs_a_dataset(tmp_path):
    _, path = save_official(tmp_path)
    with pytest.raises(CheckpointError, match="name the dataset"):
        load_generator(path)


def test_official_encoder_next_to_generator(tmp_path):
    save_official(tmp_path)
    torch.manual_seed(0)
    E = build_encoder(EncoderConfig(nef=4, z_dim=8))
    torch.save(E.state_dict(), tmp_path / "latest_net_E.pth")
    loaded = load_encoder(tmp_path / "latest_net_G.pth")
    assert torch.equal(loaded.state_dict()["layer6.0.weight_orig"], E.state_dict()["layer6.0.weight_orig"])
