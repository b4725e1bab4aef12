"""OASIS beside SPADE: the segmentation discriminator and its N+1 loss, class weights, LabelMix,
3D noise, the OASIS generator, published parameter counts, the adversaries in the step, the
settings that pair the parts, and an OASIS run resumed bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gaugan import losses
from gaugan.config import ConfigError, DiscriminatorConfig, GeneratorConfig, replace
from gaugan.data.registry import published_spec, resolve_dataset
from gaugan.data.semantic import semantic_input
from gaugan.methods import method_name
from gaugan.models import (
    OASISDiscriminator,
    OASISGenerator,
    build_discriminator,
    build_generator,
    published_parameter_counts,
)
from gaugan.models.noise import edited_noise, noise_for_images, noise_vector
from gaugan.train.adversaries import ADVERSARIES, PatchGANAdversary, SegmentationAdversary, make_adversary
from gaugan.train.bench import synthetic_batch
from gaugan.train.ema import GeneratorEMA
from gaugan.train.loop import train
from gaugan.train.schedule import adam_betas, learning_rates
from gaugan.train.setup import build_training_models, make_optimizers
from gaugan.train.steps import Networks, discriminator_step, generator_step, prepare_batch, step_settings
from tests.support import assert_identical, tiny_config

LN = math.log


def oasis_config(size: int = 32, **train: object):
    """The tiny training configuration with every OASIS part (5 D blocks fit 32x32 images)."""
    return replace(
        tiny_config(size, **train),
        generator={"arch": "oasis", "noise_channels": 4},
        discriminator={"arch": "oasis", "num_res_blocks": 5},
        loss={"use_feat_loss": False, "use_labelmix": True},
        optim={"use_ttur": False, "beta1": 0.0, "beta2": 0.999, "lr_g": 1e-4, "lr_d": 4e-4},
    )


# ---- the N+1 loss and its class weights, by hand on a 2x2 map -----------------------------

LABELS = torch.tensor([[[0, 0], [0, 1]]])  # three pixels of class 0, one of class 1
LOGITS = torch.zeros(1, 3, 2, 2)  # channels: fake, class 0, class 1
LOGITS[0, 2, 1, 1] = LN(2.0)  # the class-1 pixel: softmax (1/4, 1/4, 1/2)


def test_class_balance_weights_by_hand():
    # 4 pixels, 2 classes present: class c weighs 4 / (2 * n_c).
    weights = losses.class_balance_weights(LABELS, num_classes=2)
    assert torch.equal(weights, torch.tensor([[[2 / 3, 2 / 3], [2 / 3, 2.0]]]))
    assert weights.sum() == LABELS.numel()  # every present class carries the same total weight
    # The void class weighs nothing and is not counted: class 1 alone is present, 4 / (1 * 1).
    void = losses.class_balance_weights(LABELS, num_classes=2, ignore_index=0)
    assert torch.equal(void, torch.tensor([[[0.0, 0.0], [0.0, 4.0]]]))
    # Classes absent from the batch do not count; counts are over the whole batch.
    batch = torch.stack([LABELS[0], torch.full((2, 2), 1)])  # 3 of class 0, 5 of class 1
    assert torch.allclose(losses.class_balance_weights(batch, num_classes=5)[1], torch.full((2, 2), 8 / (2 * 5)))


def test_n_plus_one_loss_by_hand():
    # Real: pixels of class 0 -> target 1 (-log 1/3), the class-1 pixel -> target 2 (-log 1/2).
    unweighted = losses.n_plus_one_loss(LOGITS, LABELS, target_is_real=True)
    assert unweighted.item() == pytest.approx((3 * LN(3) + LN(2)) / 4)
    balanced = losses.n_plus_one_loss(LOGITS, LABELS, True, losses.class_balance_weights(LABELS, 2))
    assert balanced.item() == pytest.approx((3 * (2 / 3) * LN(3) + 2 * LN(2)) / 4)  # = log(6) / 2
    void = losses.n_plus_one_loss(LOGITS, LABELS, True, losses.class_balance_weights(LABELS, 2, ignore_index=0))
    assert void.item() == pytest.approx(LN(2))
    # Fake: every pixel against "fake" (index 0), unweighted: -log 1/3 three times, -log 1/4 once.
    fake = losses.n_plus_one_loss(LOGITS, LABELS, target_is_real=False)
    assert fake.item() == pytest.approx((3 * LN(3) + LN(4)) / 4)


def test_n_plus_one_loss_matches_cross_entropy_on_random_maps():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 6, 8, 8), torch.randint(0, 5, (2, 8, 8))
    weights = losses.class_balance_weights(labels, 5, ignore_index=4)
    expected = (F.cross_entropy(logits, labels + 1, reduction="none") * weights).mean()
    assert torch.allclose(losses.n_plus_one_loss(logits, labels, True, weights), expected)
    assert torch.allclose(losses.n_plus_one_loss(logits, labels, False), F.cross_entropy(logits, 0 * labels))


# ---- LabelMix ---------------------------------------------------------------------------------


def test_labelmix_mask_is_one_coin_per_class_shared_by_the_batch():
    labels = torch.arange(6).repeat_interleave(8).view(1, 6, 8).expand(3, 6, 8).contiguous()  # 6 classes
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        mask = losses.labelmix_mask(labels, num_classes=6)
        assert mask.shape == (3, 1, 6, 8) and set(mask.unique().tolist()) <= {0.0, 1.0}
        for c in range(6):
            values = mask[:, 0][labels == c].unique()
            assert values.numel() == 1  # every pixel of a class, in every image, the same source
            seen.add((c, values.item()))
    assert len(seen) == 12  # each class came from the real and from the fake image in some draw


def test_labelmix_loss_by_hand():
    mask = torch.tensor([[[[1.0, 0.0]]]])
    real, fake = torch.full((1, 2, 1, 2), 3.0), torch.full((1, 2, 1, 2), -1.0)
    consistent = torch.tensor([[[[3.0, -1.0]], [[3.0, -1.0]]]])
    assert losses.labelmix_loss(mask, consistent, fake, real).item() == 0.0
    assert losses.labelmix_loss(mask, consistent + 0.5, fake, real).item() == pytest.approx(0.25)


def test_segmentation_adversary_equals_separate_passes_as_published():
    """One D pass over [fake, real, mix] gives the losses of three passes (D has no batch statistics)."""
    torch.manual_seed(0)
    D = OASISDiscriminator(DiscriminatorConfig(arch="oasis", ndf=4, num_res_blocks=3, use_spectral_norm=False), 3)
    labels = torch.randint(0, 3, (2, 8, 8))
    seg = semantic_input(labels, 3)
    fake, real = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    adversary = SegmentationAdversary(3, void_index=None, use_labelmix=True, lambda_labelmix=10.0)
    torch.manual_seed(1)
    terms = adversary.discriminator_losses(D, seg, fake, real)
    torch.manual_seed(1)
    mask = losses.labelmix_mask(labels, 3)
    d_fake, d_real, d_mixed = D(fake), D(real), D(mask * real + (1 - mask) * fake)
    weights = losses.class_balance_weights(labels, 3)
    assert torch.allclose(terms["loss/d_fake"], losses.n_plus_one_loss(d_fake, labels, False), atol=1e-6)
    assert torch.allclose(terms["loss/d_real"], losses.n_plus_one_loss(d_real, labels, True, weights), atol=1e-6)
    assert torch.allclose(terms["loss/d_labelmix"], 10 * losses.labelmix_loss(mask, d_mixed, d_fake, d_real),
                          atol=1e-6)
    g_terms = adversary.generator_losses(D, seg, fake, real)
    assert torch.allclose(g_terms["loss/g_gan"], losses.n_plus_one_loss(d_fake, labels, True, weights), atol=1e-6)


def test_void_class_of_each_dataset():
    assert published_spec("ade20k").void_index == 0  # "other", as the OASIS code treats it
    assert published_spec("cityscapes").void_index == 0  # "unlabeled"
    assert published_spec("coco").void_index == 182  # 255 is stored as index 182
    assert published_spec("landscapes").void_index is None and published_spec("facades").void_index is None


# ---- 3D noise -------------------------------------------------------------------------------


def test_noise_is_reproducible_and_resampled_per_class_only():
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[2:5, 3:7] = 4
    base = edited_noise(labels, 6, seed=3)
    assert base.shape == (1, 6, 8, 8)
    assert torch.equal(base, noise_vector(6, 3)[None, :, None, None].expand(1, 6, 8, 8))  # one vector everywhere
    assert torch.equal(base, edited_noise(labels, 6, seed=3))
    assert not torch.equal(base, edited_noise(labels, 6, seed=4))  # "new style": every pixel changes
    assert (edited_noise(labels, 6, seed=4) != base).all()
    rerolled = edited_noise(labels, 6, seed=3, class_seeds={4: 1})
    changed = (rerolled != base).any(dim=1)[0]
    assert torch.equal(changed, labels == 4)  # only the class's pixels
    assert torch.equal(rerolled, edited_noise(labels, 6, seed=3, class_seeds={4: 1}))  # reproducible
    assert torch.equal(edited_noise(labels, 6, seed=3, class_seeds={9: 1}), base)  # an absent class: no change


def test_noise_of_a_split_depends_on_the_image_only():
    batch = noise_for_images(torch.tensor([5, 2]), 4, (3, 3), seed=1)
    again = noise_for_images(torch.tensor([2]), 4, (3, 3), seed=1)
    assert torch.equal(batch[1], again[0]) and not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("arch", ["oasis", "spade"])
def test_generator_with_noise_resamples_and_edits_locally(arch):
    """The noise reaches the input and every SPADE block in front of the label map; a re-drawn
    class changes the blocks' input in that class's pixels only. (How local the change of the
    image is depends on the trained weights: docs/OASIS.md section 3 has the measurement.)"""
    torch.manual_seed(0)
    cfg = GeneratorConfig(arch=arch, ngf=4, spade_hidden=8, noise_channels=8, param_free_norm="instance")
    G = build_generator(cfg, 5, (64, 64)).eval()
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[:, 32:] = 3
    seg = semantic_input(labels[None], 5)
    blocks = [m for m in G.modules() if type(m).__name__ == "SPADEResBlock"]
    seen: list[torch.Tensor] = []
    hooks = [block.register_forward_pre_hook(lambda module, args: seen.append(args[1])) for block in blocks]
    with torch.no_grad():
        base = G(seg, edited_noise(labels, 8, seed=0))
        assert torch.equal(base, G(seg, edited_noise(labels, 8, seed=0)))  # deterministic given the noise
        other = G(seg, edited_noise(labels, 8, seed=1))
        seen.clear()
        G(seg, edited_noise(labels, 8, seed=0))
        base_inputs = list(seen)
        seen.clear()
        edited = G(seg, edited_noise(labels, 8, seed=0, class_seeds={3: 5}))
        drawn = G(seg)  # no noise given: one vector per image from the global RNG
    for hook in hooks:
        hook.remove()
    assert G.fc.in_channels == 8 + 5 and len(base_inputs) == len(blocks)
    assert drawn.shape == (1, 3, 64, 64) and not torch.equal(drawn, base)
    whole = (other - base).abs().mean(dim=1)[0]
    assert whole[:, :16].mean() > 0 and whole[:, 48:].mean() > 0  # a new style changes both regions
    assert not torch.equal(edited, base)
    for before, after in zip(base_inputs, seen[: len(blocks)]):
        assert torch.equal(before[:, 8:], after[:, 8:]) and torch.equal(before[:, 8:], seg)  # the label map
        assert torch.equal((before[:, :8] != after[:, :8]).any(dim=1)[0], labels == 3)  # noise: the class only


def test_noise_settings_are_checked():
    cfg = tiny_config()
    with pytest.raises(ConfigError, match="generator.noise_channels"):
        replace(cfg, generator={"arch": "clade", "noise_channels": 4})
    with pytest.raises(ConfigError, match="encoder.use_vae"):
        replace(cfg, generator={"noise_channels": 4}, encoder={"use_vae": True})
    with pytest.raises(ConfigError, match="encoder.use_vae"):
        replace(cfg, generator={"arch": "oasis"}, encoder={"use_vae": True})
    with pytest.raises(ValueError, match="noise"):
        G = build_generator(GeneratorConfig(ngf=4, spade_hidden=8), 5, (32, 32))
        G(torch.zeros(1, 5, 32, 32), torch.zeros(1, 4))


# ---- networks and published parameter counts ------------------------------------------------


def test_oasis_networks_shapes_and_gradients():
    torch.manual_seed(0)
    G = OASISGenerator(GeneratorConfig(arch="oasis", ngf=4, spade_hidden=8, noise_channels=4), 6, (64, 64))
    assert len(G.body) == 6 and G.fc.in_channels == 10 and G.fc.out_channels == 64
    D = build_discriminator(DiscriminatorConfig(arch="oasis", ndf=4), 6, num_classes=5)
    seg = semantic_input(torch.randint(0, 5, (2, 64, 64)), 5, torch.randint(0, 3, (2, 64, 64)))
    fake = G(seg)
    logits = D(fake)
    assert fake.shape == (2, 3, 64, 64) and logits.shape == (2, 6, 64, 64)
    logits.mean().backward()
    for network in (G, D):
        for name, param in network.named_parameters():
            assert param.grad is not None, name
    with pytest.raises(ConfigError, match="multiples of 64"):
        D(torch.zeros(1, 3, 32, 32))
    # A store too small for the D's depth is refused when the networks are built, before training.
    with pytest.raises(ConfigError, match="num_res_blocks=6 needs image sides that are multiples of 64, got 32x32"):
        build_training_models(replace(oasis_config(), discriminator={"num_res_blocks": 6}),
                              resolve_dataset(oasis_config().data))
    with pytest.raises(ConfigError, match="num_upsampling_layers"):
        OASISGenerator(GeneratorConfig(arch="oasis", num_upsampling_layers="most"), 6, (256, 256))


def _oasis_generator_count(semantic_nc: int, z_dim: int = 64, ch: int = 64, hidden: int = 128, ks: int = 3) -> int:
    """The OASIS generator's parameters counted from its description (docs/OASIS.md section 2)."""
    cond = semantic_nc + z_dim
    def spade(n: int) -> int:  # mlp_shared (cond -> hidden), mlp_gamma and mlp_beta (hidden -> n), with biases
        return hidden * cond * ks * ks + hidden + 2 * (n * hidden * ks * ks + n)
    widths = [16 * ch, 16 * ch, 16 * ch, 8 * ch, 4 * ch, 2 * ch, ch]
    total = 16 * ch * cond * 9 + 16 * ch + 3 * ch * 9 + 3  # fc and conv_img
    for fin, fout in zip(widths[:-1], widths[1:]):
        mid = min(fin, fout)
        total += mid * fin * 9 + mid + fout * mid * 9 + fout + spade(fin) + spade(mid)
        if fin != fout:
            total += fin * fout + spade(fin)  # conv_s (no bias) and norm_s
    return total


def _oasis_discriminator_count(semantic_nc: int) -> int:
    def block(fin: int, fout: int) -> int:
        return fout * fin * 9 + fout + fout * fout * 9 + fout + (fin * fout + fout if fin != fout else 0)
    down = [3, 128, 128, 256, 256, 512, 512]
    total = sum(block(fin, fout) for fin, fout in zip(down[:-1], down[1:]))
    total += block(512, 512) + block(1024, 256) + block(512, 256) + block(512, 128) + block(256, 128) + block(256, 64)
    return total + 64 * (semantic_nc + 1) + semantic_nc + 1


@pytest.mark.parametrize("dataset, semantic_nc, expected", [
    # Counted on the authors' network definitions (3D noise on, z_dim 64, 6 blocks, 64 channels).
    ("ade20k", 151, {"G": 74_314_691, "D": 22_258_904}),
    ("coco", 183, {"G": 75_199_427, "D": 22_260_984}),
    ("cityscapes", 35, {"G": 71_107_523, "D": 22_251_364}),
])
def test_published_oasis_parameter_counts(dataset, semantic_nc, expected):
    counts = published_parameter_counts(published_spec(dataset), "oasis")
    assert counts == expected
    assert counts == {"G": _oasis_generator_count(semantic_nc), "D": _oasis_discriminator_count(semantic_nc)}


def test_params_command_prints_oasis_counts():
    import json

    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["params", "--dataset", "ade20k", "--model", "oasis", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == {"G": 74_314_691, "D": 22_258_904}
    result = CliRunner().invoke(app, ["params", "--dataset", "cityscapes", "--model", "oasis"])
    assert result.exit_code == 0 and "35 label channels" in result.output and "E " not in result.output
    result = CliRunner().invoke(app, ["params", "--dataset", "ade20k", "--model", "pix2pix"])
    assert result.exit_code == 2 and "--model" in result.output


# ---- the parts paired by settings ------------------------------------------------------------


def test_settings_pair_the_parts_and_name_the_method():
    base = tiny_config()
    assert method_name(base) == "SPADE"
    spade_g_oasis_d = replace(base, discriminator={"arch": "oasis"}, loss={"use_feat_loss": False})
    assert method_name(spade_g_oasis_d) == "SPADE G + OASIS D (no LabelMix)"
    oasis = oasis_config()
    assert method_name(oasis) == "OASIS"
    assert method_name(replace(oasis, discriminator={"arch": "multiscale"}, loss={"use_labelmix": False})) == (
        "OASIS G + PatchGAN D")
    assert method_name(replace(oasis, generator={"noise_channels": 0})) == "OASIS (no 3D noise)"
    assert method_name(replace(oasis, loss={"use_vgg_loss": True})) == "OASIS (VGG)"
    with pytest.raises(ConfigError, match="loss.use_feat_loss=false"):
        replace(base, discriminator={"arch": "oasis"})
    with pytest.raises(ConfigError, match="loss.use_labelmix=false"):
        replace(oasis, discriminator={"arch": "multiscale"})
    spec = resolve_dataset(base.data)
    assert isinstance(make_adversary(base, spec), PatchGANAdversary)
    adversary = make_adversary(oasis, spec)
    assert isinstance(adversary, SegmentationAdversary) and adversary.num_classes == spec.num_label_values


def test_oasis_optimiser_settings():
    optim = oasis_config().optim
    assert learning_rates(optim, 0) == pytest.approx((1e-4, 4e-4)) and adam_betas(optim) == (0.0, 0.999)
    decayed = replace(oasis_config(), optim={"num_epochs_constant": 1, "num_epochs_decay": 2}).optim
    assert learning_rates(decayed, 2) == pytest.approx((0.5e-4, 2e-4))  # scaled as lr decays


@pytest.mark.parametrize("pairing", ["oasis", "spade_g_oasis_d", "oasis_g_patchgan_d"])
def test_every_pairing_trains_every_parameter(pairing):
    cfg = oasis_config(size=64)
    if pairing == "spade_g_oasis_d":
        cfg = replace(cfg, generator={"arch": "spade", "noise_channels": 0}, discriminator={"num_res_blocks": 6})
    if pairing == "oasis_g_patchgan_d":
        cfg = replace(cfg, discriminator={"arch": "multiscale"}, loss={"use_labelmix": False, "use_feat_loss": True})
    spec = resolve_dataset(cfg.data)
    torch.manual_seed(0)
    G, D, E = build_training_models(cfg, spec)
    optimizers = make_optimizers(cfg, G, D, E, torch.device("cpu"), epoch=0)
    networks = Networks(G=G, D=D, D_module=D, E=E)
    seg, real = prepare_batch(synthetic_batch(spec, 2), spec.num_label_values, torch.device("cpu"))
    settings = step_settings(cfg, spec)
    before = {name: p.detach().clone() for name, p in [*G.named_parameters(), *D.named_parameters()]}
    g_terms = generator_step(networks, optimizers, seg, real, settings)
    d_terms = discriminator_step(networks, optimizers, seg, real, settings)
    assert all(torch.isfinite(v) for v in {**g_terms, **d_terms}.values())
    if pairing != "oasis_g_patchgan_d":
        assert "loss/d_labelmix" in d_terms and "loss/g_feat" not in g_terms
    after = dict([*G.named_parameters(), *D.named_parameters()])
    unchanged = [name for name, value in before.items() if torch.equal(value, after[name].detach())]
    assert not unchanged, unchanged[:5]


# ---- EMA statistics ---------------------------------------------------------------------------


def test_ema_statistics_are_recomputed_without_touching_the_global_random_stream():
    torch.manual_seed(0)
    G = OASISGenerator(GeneratorConfig(arch="oasis", ngf=4, spade_hidden=8, noise_channels=4,
                                       param_free_norm="syncbatch"), 5, (32, 32))
    ema = GeneratorEMA(G, decay=0.5)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in ema.module.modules())  # runs in one process
    assert ema.module.state_dict().keys() == G.state_dict().keys()
    segs = [semantic_input(torch.randint(0, 5, (2, 32, 32)), 5) for _ in range(3)]
    state = torch.get_rng_state()
    used = ema.refresh_statistics([lambda g, s=s: g(s) for s in segs], seed=7)
    assert used == 3 and torch.equal(torch.get_rng_state(), state) and not ema.module.training
    norm = ema.batch_norms[0]
    refreshed = norm.running_mean.clone()
    assert norm.num_batches_tracked.item() == 3 and norm.momentum == 0.1
    ema.refresh_statistics([lambda g, s=s: g(s) for s in segs], seed=7)
    assert torch.equal(norm.running_mean, refreshed)  # the same images and noise: the same statistics
    assert ema.refresh_statistics([], seed=7) == 0 and torch.equal(norm.running_mean, refreshed)


# ---- a whole OASIS run -------------------------------------------------------------------------


def test_oasis_run_resumes_bit_for_bit(store, tmp_path):
    """3D noise, LabelMix coins and the EMA's statistics batches all come from saved random states."""
    cfg = oasis_config(use_ema=True, ema_decay=0.9, checkpoint_every=3, ema_statistics_batches=2)
    full = train(cfg, store, tmp_path / "full", show_progress=False)
    assert full.step == 6 and "loss/d_labelmix" in full.metrics
    first = train(replace(cfg, train={"max_steps": 3}), store, tmp_path / "split", show_progress=False)
    assert first.step == 3
    second = train(replace(cfg, train={"checkpoint_every": 5}), store, tmp_path / "split", show_progress=False)
    assert second.resumed_from_step == 3 and second.step == 6
    assert_identical(full.last_checkpoint, second.last_checkpoint)


def test_every_discriminator_family_is_complete():
    """A discriminator family is a network (gaugan.models.DISCRIMINATORS), its adversary
    (ADVERSARIES), a value of discriminator.arch and a name in the method's (gaugan.methods):
    none may be missing (before, make_adversary gave any unknown family SPADE's adversary)."""
    import typing

    from gaugan.config import DiscriminatorConfig
    from gaugan.methods import DISCRIMINATOR_NAMES
    from gaugan.models import DISCRIMINATORS

    settings = set(typing.get_args(typing.get_type_hints(DiscriminatorConfig)["arch"]))
    assert set(DISCRIMINATORS) == set(ADVERSARIES) == set(DISCRIMINATOR_NAMES) == settings

