"""The networks: shapes of every variant, norms, CLADE, init, gradient flow, parameter counts, channels_last."""

from __future__ import annotations

import copy
import math
import typing

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gaugan.config import ConfigError, DiscriminatorConfig, EncoderConfig, GeneratorConfig
from gaugan.data.registry import published_spec
from gaugan.models import (
    CLADE,
    GENERATORS,
    SPADE,
    build_discriminator,
    build_encoder,
    build_generator,
    count_parameters,
    published_parameter_counts,
    reparameterize,
    split_discriminator_output,
)
from gaugan.models.spade import resize_segmap

LABEL_CHANNELS = 9  # 8 classes + the instance edge channel


def tiny_generator_config(**changes) -> GeneratorConfig:
    values = dict(ngf=8, spade_hidden=16, param_free_norm="instance", pix2pixhd_num_downsample=2,
                  pix2pixhd_num_blocks=2)
    values.update(changes)
    return GeneratorConfig(**values)


def random_seg(batch: int, height: int, width: int, channels: int = LABEL_CHANNELS, seed: int = 0) -> torch.Tensor:
    """One-hot over channels-1 classes plus a 0/1 edge channel, as semantic_input builds it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, channels - 1, (batch, height, width), generator=generator)
    seg = F.one_hot(labels, channels - 1).permute(0, 3, 1, 2).float()
    edge = (torch.rand(batch, 1, height, width, generator=generator) > 0.8).float()
    return torch.cat([seg, edge], dim=1)


# ---- generator shapes -----------------------------------------------------------------


def test_generator_registry_matches_the_config_choices():
    assert set(GENERATORS) == set(typing.get_args(typing.get_type_hints(GeneratorConfig)["arch"]))


@pytest.mark.parametrize("arch", list(GENERATORS))
def test_every_registered_generator_maps_labels_to_an_image(arch):
    G = build_generator(tiny_generator_config(arch=arch), LABEL_CHANNELS, (32, 64))
    with torch.no_grad():
        fake = G(random_seg(2, 32, 64))
    assert fake.shape == (2, 3, 32, 64) and fake.abs().max() <= 1.0
    if takes_z(arch):
        G_vae = build_generator(tiny_generator_config(arch=arch), LABEL_CHANNELS, (32, 64), z_dim=8)
        with torch.no_grad():
            assert G_vae(random_seg(2, 32, 64), torch.randn(2, 8)).shape == (2, 3, 32, 64)


def takes_z(arch: str) -> bool:
    """Whether the registered ``arch`` has a VAE variant; one without says so, naming the setting."""
    try:
        build_generator(tiny_generator_config(arch=arch), LABEL_CHANNELS, (64, 64), z_dim=8)
    except ConfigError as err:
        assert "encoder.use_vae" in str(err)
        return False
    return True


@pytest.mark.parametrize("arch", [arch for arch in GENERATORS if takes_z(arch)])  # the SPADE-style generators
@pytest.mark.parametrize(
    ("num_upsampling_layers", "image_size"),
    [("normal", (32, 64)), ("more", (64, 128)), ("most", (128, 256)), ("normal", (64, 64))],
)
@pytest.mark.parametrize("z_dim", [None, 16])
def test_generator_output_shape(arch, num_upsampling_layers, image_size, z_dim):
    cfg = tiny_generator_config(arch=arch, num_upsampling_layers=num_upsampling_layers)
    G = build_generator(cfg, LABEL_CHANNELS, image_size, z_dim)
    seg = random_seg(2, *image_size)
    with torch.no_grad():
        fake = G(seg)
    assert fake.shape == (2, 3, *image_size)
    assert fake.abs().max() <= 1.0  # tanh output
    if z_dim is not None:
        assert G.fc.in_features == z_dim
        start = image_size[1] // 2 ** {"normal": 5, "more": 6, "most": 7}[num_upsampling_layers]
        # sh = round(sw / aspect_ratio) as published: 16 ngf * sh * sw outputs.
        aspect = image_size[1] / image_size[0]
        assert G.fc.out_features == 16 * cfg.ngf * start * round(start / aspect)


def test_most_adds_up_4_with_half_width():
    G = build_generator(tiny_generator_config(num_upsampling_layers="most", param_free_norm="batch"), LABEL_CHANNELS,
                        (128, 128))
    assert G.up_4.conv_1.weight_orig.shape[0] == 4  # ngf // 2
    assert G.conv_img.in_channels == 4
    assert not hasattr(build_generator(tiny_generator_config(), LABEL_CHANNELS, (64, 64)), "up_4")


def test_vae_generator_draws_z_on_seg_device_and_dtype_and_uses_given_z():
    G = build_generator(tiny_generator_config(), LABEL_CHANNELS, (64, 64), z_dim=16).eval()
    seg = random_seg(2, 64, 64)
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(G(seg, z), G(seg, z))
        torch.manual_seed(0)
        first = G(seg)
        torch.manual_seed(0)
        assert torch.equal(first, G(seg))
        assert not torch.equal(first, G(seg))  # a fresh z each call
        assert G.double()(seg.double()).dtype == torch.float64  # z drawn in seg's dtype


def test_generator_size_not_multiple_of_upsampling_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"100x100.*multiple of 32.*data.crop_size"):
        build_generator(tiny_generator_config(), LABEL_CHANNELS, (100, 100))
    with pytest.raises(ConfigError, match=r"'instance' needs more than one pixel.*starts at 1x1"):
        build_generator(tiny_generator_config(), LABEL_CHANNELS, (32, 32))


def test_pix2pixhd_baseline():
    cfg = tiny_generator_config(arch="pix2pixhd")
    G = build_generator(cfg, LABEL_CHANNELS, (32, 64))
    with torch.no_grad():
        fake = G(random_seg(2, 32, 64))
    assert fake.shape == (2, 3, 32, 64)
    kinds = [type(m).__name__ for m in G.model]
    assert kinds[:2] == ["ReflectionPad2d", "Sequential"] and kinds[-3:] == ["ReflectionPad2d", "Conv2d", "Tanh"]
    assert sum(k == "ResnetBlock" for k in kinds) == 2
    transposed = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(transposed) == 2 and all(hasattr(m, "weight_orig") for m in transposed)
    # No SPADE anywhere: the label map enters only at the input.
    assert not any(isinstance(m, (SPADE, CLADE)) for m in G.modules())
    with pytest.raises(ConfigError, match="multiple of 4"):
        build_generator(cfg, LABEL_CHANNELS, (30, 64))
    with pytest.raises(ConfigError, match="encoder.use_vae"):
        build_generator(cfg, LABEL_CHANNELS, (32, 64), z_dim=16)


def test_pix2pixhd_spectral_norm_follows_config():
    G = build_generator(tiny_generator_config(arch="pix2pixhd", use_spectral_norm=False), LABEL_CHANNELS, (32, 32))
    assert not any(hasattr(m, "weight_orig") for m in G.modules())


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ConfigError, match=", ".join(GENERATORS)):
        build_generator(tiny_generator_config(arch="unet"), LABEL_CHANNELS, (32, 32))


# ---- SPADE and CLADE layers -----------------------------------------------------------


@pytest.mark.parametrize("norm", ["instance", "batch", "syncbatch"])
def test_spade_formula_and_param_free_norms(norm):
    torch.manual_seed(0)
    layer = SPADE(6, LABEL_CHANNELS, param_free_norm=norm, kernel_size=3, hidden_channels=5)
    x = torch.randn(4, 6, 8, 8) * 3 + 1
    seg = random_seg(4, 16, 16)  # twice x's size: nearest-resized inside
    out = layer(x, seg)
    # Reference: the parameter-free normalisation written out, the MLP applied by hand.
    if norm == "instance":
        mean, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
    else:
        mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    normalized = (x - mean) / torch.sqrt(var + 1e-5)
    small_seg = seg[:, :, ::2, ::2]
    hidden = F.relu(layer.mlp_shared[0](small_seg))
    expected = normalized * (1 + layer.mlp_gamma(hidden)) + layer.mlp_beta(hidden)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    buffers = dict(layer.named_buffers())
    if norm == "instance":
        assert not buffers  # no state, as published
    else:
        assert int(buffers["param_free_norm.num_batches_tracked"]) == 1
        torch.testing.assert_close(buffers["param_free_norm.running_mean"], 0.1 * mean.flatten(), atol=1e-5, rtol=1e-5)
        # Eval mode uses the running statistics, not the batch's.
        layer.eval()
        running = (x - buffers["param_free_norm.running_mean"].view(1, -1, 1, 1)) / torch.sqrt(
            buffers["param_free_norm.running_var"].view(1, -1, 1, 1) + 1e-5
        )
        torch.testing.assert_close(
            layer(x, seg), running * (1 + layer.mlp_gamma(hidden)) + layer.mlp_beta(hidden), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_spade_fused_modulation_equals_the_official_order_of_operations(kernel_size, channels_last):
    """One conv for gamma and beta, "1 +" in the bias, addcmul, in-place ReLU: same values and gradients."""
    torch.manual_seed(1)
    layer = SPADE(6, LABEL_CHANNELS, param_free_norm="batch", kernel_size=kernel_size, hidden_channels=5)
    nn.init.normal_(layer.mlp_gamma.bias)  # non-zero biases, so the folded "+1" is exercised
    nn.init.normal_(layer.mlp_beta.bias)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    layer = layer.to(memory_format=memory_format)
    x = (torch.randn(3, 6, 8, 8) * 2 + 1).contiguous(memory_format=memory_format).requires_grad_()
    seg = random_seg(3, 16, 16).contiguous(memory_format=memory_format)

    def official(module: SPADE, inputs: torch.Tensor) -> torch.Tensor:
        normalized = module.param_free_norm(inputs)
        hidden = F.relu(module.mlp_shared[0](F.interpolate(seg, size=inputs.shape[-2:], mode="nearest")))
        return normalized * (1 + module.mlp_gamma(hidden)) + module.mlp_beta(hidden)

    reference = copy.deepcopy(layer)
    x_reference = x.detach().clone().requires_grad_()
    out, expected = layer(x, seg), official(reference, x_reference)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x.grad, x_reference.grad, atol=1e-5, rtol=1e-5)
    for (name, param), reference_param in zip(layer.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, reference_param.grad, atol=1e-4, rtol=1e-4, msg=name)
    # The benchmark's emulation of the official code computes in that order, to the same values.
    reference.official_order = True
    torch.testing.assert_close(reference(x_reference, seg), official(reference, x_reference), atol=0, rtol=0)


def test_resize_segmap_is_nearest_and_a_no_op_at_the_same_size():
    seg = random_seg(2, 16, 16)
    assert resize_segmap(seg, (16, 16)) is seg
    torch.testing.assert_close(resize_segmap(seg, (8, 8)), seg[:, :, ::2, ::2])


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_spade_kernel_sizes_and_hidden_width(kernel_size):
    layer = SPADE(4, LABEL_CHANNELS, param_free_norm="instance", kernel_size=kernel_size, hidden_channels=7)
    assert layer.mlp_shared[0].weight.shape == (7, LABEL_CHANNELS, kernel_size, kernel_size)
    assert layer.mlp_gamma.padding == (kernel_size // 2, kernel_size // 2)
    assert layer(torch.randn(2, 4, 6, 6), random_seg(2, 6, 6)).shape == (2, 4, 6, 6)


def test_param_free_norm_in_generator_follows_config():
    for norm, kind in [("instance", torch.nn.InstanceNorm2d), ("batch", torch.nn.BatchNorm2d),
                       ("syncbatch", torch.nn.SyncBatchNorm)]:
        G = build_generator(tiny_generator_config(param_free_norm=norm), LABEL_CHANNELS, (64, 64))
        assert type(G.head_0.norm_0.param_free_norm) is kind
        with torch.no_grad():
            assert G(random_seg(2, 64, 64)).shape == (2, 3, 64, 64)


def test_clade_is_a_per_class_lookup_with_an_additive_edge_row():
    torch.manual_seed(0)
    layer = CLADE(5, LABEL_CHANNELS, param_free_norm="instance")
    seg = random_seg(2, 4, 4)
    x = torch.randn(2, 5, 4, 4)
    out = layer(x, seg)
    classes = seg[:, :-1].argmax(1)  # (B, H, W)
    edge = seg[:, -1:]  # (B, 1, H, W)
    gamma = layer.class_gamma[classes].permute(0, 3, 1, 2) + edge * layer.class_gamma[-1].view(1, -1, 1, 1)
    beta = layer.class_beta[classes].permute(0, 3, 1, 2) + edge * layer.class_beta[-1].view(1, -1, 1, 1)
    normalized = F.instance_norm(x)
    torch.testing.assert_close(out, normalized * (1 + gamma) + beta, atol=1e-5, rtol=1e-5)
    # No hidden layer: only the two tables are learned.
    assert {name for name, _ in layer.named_parameters()} == {"class_gamma", "class_beta"}


def test_clade_generator_is_smaller_than_spade():
    with torch.device("meta"):
        spade = build_generator(GeneratorConfig(), 151, (256, 256))
        clade = build_generator(GeneratorConfig(arch="clade"), 151, (256, 256))
    assert count_parameters(spade) - count_parameters(clade) > 25_000_000  # SPADE's MLPs, about 28 M


# ---- discriminator and encoder ----------------------------------------------------------


def test_multiscale_discriminator_outputs():
    D = build_discriminator(DiscriminatorConfig(ndf=8, num_discriminators=3), LABEL_CHANNELS)
    x = torch.randn(2, LABEL_CHANNELS + 3, 64, 64)
    outputs = D(x)
    assert len(outputs) == 3 and all(len(scale) == 5 for scale in outputs)
    # kernel 4, padding 2: size n -> n // 2 + 1 at stride 2, n + 1 at stride 1.
    assert [tuple(f.shape) for f in outputs[0]] == [
        (2, 8, 33, 33), (2, 16, 17, 17), (2, 32, 9, 9), (2, 64, 10, 10), (2, 1, 11, 11)]
    assert outputs[1][0].shape[-1] == 17 and outputs[2][0].shape[-1] == 9  # inputs 32 and 16 wide
    # The second scale sees the input average-pooled (3x3, stride 2, padding excluded).
    pooled = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    torch.testing.assert_close(outputs[1][0], D.discriminator_1.model0(pooled))
    fake, real = split_discriminator_output(outputs, 1)
    assert fake[2][4].shape[0] == 1 and real[0][1].shape[0] == 1


def test_discriminator_channels_cap_at_512():
    with torch.device("meta"):
        D = build_discriminator(DiscriminatorConfig(ndf=128, num_layers=5), 10)
    widths = [D.discriminator_0.get_submodule(f"model{n}")[0] for n in range(6)]
    outs = [(m[0] if isinstance(m, torch.nn.Sequential) else m).out_channels for m in widths]
    assert outs == [128, 256, 512, 512, 512, 1]


def test_discriminator_without_norm_keeps_bias():
    D = build_discriminator(DiscriminatorConfig(ndf=8, norm="none"), LABEL_CHANNELS)
    assert D.discriminator_0.model1[0].bias is not None
    assert "discriminator_0.model1.0.weight_orig" in D.state_dict()


def test_encoder_resizes_to_256_and_reparameterizes():
    E = build_encoder(EncoderConfig(nef=4, z_dim=8))
    mu, logvar = E(torch.randn(2, 3, 64, 32))
    assert mu.shape == logvar.shape == (2, 8)
    first = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(1))
    second = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, second)
    many = reparameterize(torch.full((20000, 1), 2.0), torch.full((20000, 1), math.log(9.0)))
    assert abs(many.mean().item() - 2.0) < 0.1 and abs(many.std().item() - 3.0) < 0.1


# ---- init ---------------------------------------------------------------------------------


def test_published_init_xavier_gain_002_zero_bias():
    with torch.no_grad():
        G = build_generator(GeneratorConfig(ngf=16, param_free_norm="instance"), LABEL_CHANNELS, (64, 64))
    weight = G.head_0.conv_0.weight_orig  # 256 -> 256, 3x3
    fan = 256 * 9
    assert weight.std().item() == pytest.approx(0.02 * math.sqrt(2.0 / (fan + fan)), rel=0.05)
    assert torch.count_nonzero(G.head_0.conv_0.bias) == 0
    assert torch.count_nonzero(G.head_0.norm_0.mlp_gamma.bias) == 0
    D = build_discriminator(DiscriminatorConfig(ndf=16), LABEL_CHANNELS)
    weight = D.discriminator_0.model2[0][0].weight_orig  # 32 -> 64, 4x4
    assert weight.std().item() == pytest.approx(0.02 * math.sqrt(2.0 / (32 * 16 + 64 * 16)), rel=0.1)


# ---- gradient flow ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(GENERATORS))
def test_gradient_reaches_every_parameter(arch):
    torch.manual_seed(0)
    use_vae = takes_z(arch)
    G = build_generator(tiny_generator_config(arch=arch, param_free_norm="syncbatch"), LABEL_CHANNELS, (32, 32),
                        z_dim=8 if use_vae else None)
    D = build_discriminator(DiscriminatorConfig(ndf=8), LABEL_CHANNELS)
    E = build_encoder(EncoderConfig(nef=4, z_dim=8)) if use_vae else None
    seg = random_seg(2, 32, 32)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    z = reparameterize(*E(real)) if E is not None else None
    fake = G(seg, z)
    outputs = D(torch.cat([seg, torch.cat([fake, real])[:2]], 1))
    loss = sum(feature.mean() for scale in outputs for feature in scale)
    loss.backward()
    modules = {"G": G, "D": D} | ({"E": E} if E is not None else {})
    for name, module in modules.items():
        for param_name, param in module.named_parameters():
            assert param.grad is not None, f"{name}.{param_name} got no gradient"
            assert torch.count_nonzero(param.grad) > 0, f"{name}.{param_name} got a zero gradient"


# ---- parameter counts (full size, construction only, on the meta device) --------------


@pytest.mark.parametrize(("dataset", "millions"), [("ade20k", 96.5), ("coco", 97.5), ("cityscapes", 93.0)])
def test_published_generator_parameter_counts(dataset, millions):
    counts = published_parameter_counts(published_spec(dataset))
    assert counts["G"] / 1e6 == pytest.approx(millions, abs=0.1)


def test_published_discriminator_and_encoder_parameter_counts():
    counts = published_parameter_counts(published_spec("ade20k"))
    # Worked out by hand from docs/SPADE.md section 1 (input 151 + 3 channels, ndf 64, nef 64):
    # D per scale: 154*64*16+64 + 64*128*16 + 128*256*16 + 256*512*16 + 512*16+1, two scales.
    assert counts["D"] == 2 * (157_760 + 131_072 + 524_288 + 2_097_152 + 8_193) == 5_836_930
    # E: convs 3*64*9 + 64*128*9 + 128*256*9 + 256*512*9 + 2 * 512*512*9, heads 2 * (8192*256 + 256).
    assert counts["E"] == 1_728 + 73_728 + 294_912 + 1_179_648 + 2 * 2_359_296 + 2 * 2_097_408 == 10_463_424
    assert counts["D"] / 1e6 == pytest.approx(5.8, abs=0.1) and counts["E"] / 1e6 == pytest.approx(10.5, abs=0.1)


# ---- channels_last ----------------------------------------------------------------------


def test_channels_last_gives_the_same_result():
    torch.manual_seed(0)
    G = build_generator(tiny_generator_config(param_free_norm="batch"), LABEL_CHANNELS, (32, 32), z_dim=8).eval()
    D = build_discriminator(DiscriminatorConfig(ndf=8), LABEL_CHANNELS).eval()
    E = build_encoder(EncoderConfig(nef=4, z_dim=8)).eval()
    seg, real, z = random_seg(2, 32, 32), torch.rand(2, 3, 32, 32), torch.randn(2, 8)
    with torch.no_grad():
        expected = (G(seg, z), D(torch.cat([seg, real], 1)), E(real))
        channels_last = torch.channels_last
        G_cl, D_cl, E_cl = (copy.deepcopy(m).to(memory_format=channels_last) for m in (G, D, E))
        seg_cl, real_cl = seg.contiguous(memory_format=channels_last), real.contiguous(memory_format=channels_last)
        got = (G_cl(seg_cl, z), D_cl(torch.cat([seg_cl, real_cl], 1)), E_cl(real_cl))
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-4)
    for got_scale, expected_scale in zip(got[1], expected[1]):
        for got_feature, expected_feature in zip(got_scale, expected_scale):
            torch.testing.assert_close(got_feature, expected_feature, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[2], expected[2], atol=1e-5, rtol=1e-4)
