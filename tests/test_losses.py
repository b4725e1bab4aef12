"""Losses against values worked out by hand; the VGG19 weights contract (never random, clear errors)."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from gaugan import losses
from gaugan.pinned import Pin
from tests.support import write_truncated_torch_file


def scale(final: list[float], feature: float = 0.0) -> list[torch.Tensor]:
    """One D scale: an intermediate feature then the final map (a (1, 1, 1, n) tensor)."""
    return [torch.full((1, 2, 2, 2), feature), torch.tensor(final).view(1, 1, 1, -1)]


# ---- GAN losses -------------------------------------------------------------------------


def test_hinge_discriminator_and_generator_by_hand():
    predictions = [scale([-2.0, 0.5, 1.5]), scale([0.0])]
    # D, real: mean(relu(1 - x)) per scale: (3 + 0.5 + 0) / 3 and 1; averaged over 2 scales.
    expected_real = ((3.5 / 3) + 1.0) / 2
    assert losses.gan_loss(predictions, "hinge", True, True).item() == pytest.approx(expected_real)
    # D, fake: mean(relu(1 + x)): (0 + 1.5 + 2.5) / 3 and 1.
    expected_fake = ((4.0 / 3) + 1.0) / 2
    assert losses.gan_loss(predictions, "hinge", False, True).item() == pytest.approx(expected_fake)
    # G: -mean(x): -(0) / 3 and -0.
    assert losses.gan_loss(predictions, "hinge", True, False).item() == pytest.approx(0.0)
    assert losses.gan_loss([scale([2.0, 4.0])], "hinge", True, False).item() == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="target_is_real=True"):
        losses.gan_loss(predictions, "hinge", False, False)


def test_least_squares_and_original_by_hand():
    predictions = [scale([0.0, 2.0])]
    assert losses.gan_loss(predictions, "ls", True, True).item() == pytest.approx((1 + 1) / 2)
    assert losses.gan_loss(predictions, "ls", False, True).item() == pytest.approx((0 + 4) / 2)
    assert losses.gan_loss(predictions, "ls", True, False).item() == pytest.approx(1.0)
    # BCE with logits against 1: log(1 + exp(-x)); against 0: log(1 + exp(x)).
    real = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    fake = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert losses.gan_loss(predictions, "original", True, True).item() == pytest.approx(real)
    assert losses.gan_loss(predictions, "original", False, True).item() == pytest.approx(fake)
    assert losses.gan_loss(predictions, "original", True, False).item() == pytest.approx(real)
    with pytest.raises(ValueError, match="loss.gan_mode.*hinge, ls, original"):
        losses.gan_loss(predictions, "wgan", True, True)


def test_feature_matching_by_hand_every_layer_real_detached():
    fake = [scale([9.0], feature=1.0), [torch.full((1, 1, 2, 2), 3.0), torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 1, 1)]]
    real = [scale([-9.0], feature=0.5), [torch.full((1, 1, 2, 2), 1.0), torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 1, 1)]]
    for scale_list in fake:
        for tensor in scale_list:
            tensor.requires_grad_(True)
    for scale_list in real:
        for tensor in scale_list:
            tensor.requires_grad_(True)
    value = losses.feature_matching_loss(fake, real)
    # |1 - 0.5| (scale 0) + |3 - 1| + |1 - 0| (scale 1); the final maps are not compared.
    assert value.item() == pytest.approx(0.5 + 2.0 + 1.0)
    value.backward()
    assert all(t.grad is None for scale_list in real for t in scale_list)  # real is a target only
    assert fake[0][-1].grad is None and fake[0][0].grad is not None


def test_kld_sum_reduction_by_hand():
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # -0.5 * sum(1 + logvar - mu^2 - exp(logvar)) element by element:
    # (1+0-1-1) + (1+ln2-0-2) + (1+0-0-1) + (1+0-4-1)
    terms = (-1.0) + (math.log(2.0) - 1.0) + 0.0 + (-4.0)
    assert losses.kld_loss(mu, logvar).item() == pytest.approx(-0.5 * terms)
    assert losses.kld_loss(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_losses_reduce_in_fp32_under_bf16():
    predictions = [[torch.randn(2, 4, 4, 4).bfloat16(), torch.randn(2, 1, 3, 3).bfloat16()]]
    assert losses.gan_loss(predictions, "hinge", True, True).dtype == torch.float32
    assert losses.feature_matching_loss(predictions, predictions).dtype == torch.float32
    mu = torch.randn(4, 8).bfloat16()
    assert losses.kld_loss(mu, mu).dtype == torch.float32
    # Large but finite logits: no overflow in the reductions.
    big = [[torch.full((8, 1, 64, 64), 3e4, dtype=torch.bfloat16)]]
    assert torch.isfinite(losses.gan_loss(big, "ls", False, True))


# ---- VGG19 perceptual loss --------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_weights_file(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """A file shaped like torchvision's vgg19 weights (features only, random values, fp16 to stay small)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        features = torchvision.models.vgg19(weights=None).features
    state = {
        f"features.{key}": (torch.randn(value.shape) * (0.5 / math.sqrt(max(value[0].numel(), 1)))).half()
        for key, value in features.state_dict().items()
    }
    path = tmp_path_factory.mktemp("vgg") / losses.VGG19_FILE
    torch.save(state, path)
    return str(path), state


def reference_vgg_features(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of torchvision's VGG19, taken layer by layer."""
    features = torchvision.models.vgg19(weights=None).features[:30]
    own = features.state_dict()
    features.load_state_dict({k[len("features."):]: v.float() for k, v in state.items() if k[len("features."):] in own})
    picked = []
    for index, layer in enumerate(features):
        x = layer(x)
        if index in (1, 6, 11, 20, 29):
            picked.append(x)
    return picked


def test_vgg_loss_matches_layer_by_layer_reference(vgg_weights_file):
    path, state = vgg_weights_file
    loss = losses.VGGLoss(path)
    torch.manual_seed(1)
    fake = torch.rand(2, 3, 32, 32) * 2 - 1  # fed in [-1, 1] as they are, as published
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        fake_features = reference_vgg_features(state, fake)
        real_features = reference_vgg_features(state, real)
    weights = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]
    expected = sum(w * F.l1_loss(a, b) for w, a, b in zip(weights, fake_features, real_features))
    fake.requires_grad_(True)
    real.requires_grad_(True)
    value = loss(fake, real)
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)
    value.backward()
    assert fake.grad is not None and real.grad is None  # real detached
    assert not any(p.requires_grad for p in loss.parameters())  # VGG stays fixed
    assert not loss.train().training


def test_vgg_weights_default_to_the_torch_hub_cache(vgg_weights_file, tmp_path, monkeypatch):
    path, _ = vgg_weights_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    with pytest.raises(losses.VGGWeightsError) as error:
        losses.VGGLoss(None)
    message = str(error.value)
    assert str(cache / losses.VGG19_FILE) in message
    assert "loss.vgg_weights" in message and "loss.use_vgg_loss=false" in message and losses.VGG19_URL in message
    cache.mkdir(parents=True)
    (cache / losses.VGG19_FILE).symlink_to(path)
    with pytest.raises(losses.VGGWeightsError, match="not the published VGG19 weights"):
        losses.VGGLoss(None)  # the cache holds the published file or nothing
    stand_in = Pin(os.path.getsize(path), hashlib.sha256(Path(path).read_bytes()).hexdigest())
    monkeypatch.setattr(losses, "VGG19_PIN", stand_in)  # the test file plays the published one
    assert isinstance(losses.VGGLoss(None), losses.VGGLoss)


def test_vgg_wrong_or_broken_file_is_refused(tmp_path):
    wrong = tmp_path / "not_vgg.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3, 3, 3)}, wrong)
    with pytest.raises(losses.VGGWeightsError, match=r"not torchvision VGG19 weights.*features.0.weight has shape"):
        losses.VGGLoss(wrong)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(losses.VGGWeightsError, match="unreadable VGG19 weights"):
        losses.VGGLoss(broken)
    with pytest.raises(losses.VGGWeightsError, match=r"missing.pth: VGG19 ImageNet weights not found \(loss.vgg_weights\)"):
        losses.VGGLoss(tmp_path / "missing.pth")


UNUSABLE_VGG_FILES = {
    "random bytes": (lambda path: path.write_bytes(bytes(range(256)) * 8), "unrecognised binary content"),
    "text": (lambda path: path.write_text("<html>Not Found</html>\n"), "a text file, beginning '<html>Not Found"),
    "empty": (lambda path: path.write_bytes(b""), "the file is empty"),
    "truncated zip": (write_truncated_torch_file, "a truncated or damaged zip archive"),
}


@pytest.mark.parametrize("kind", UNUSABLE_VGG_FILES)
def test_unusable_vgg_files_are_one_line_saying_what_they_are(tmp_path, kind):
    """Item 10: one line naming the file and what it is, never torch's own multi-line text."""
    write, expected = UNUSABLE_VGG_FILES[kind]
    path = tmp_path / "vgg.pth"
    write(path)
    with pytest.raises(losses.VGGWeightsError) as caught:
        losses.VGGLoss(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: unreadable VGG19 weights (") and expected in message
    assert "\n" not in message and "miniz" not in message and "loss.vgg_weights" in message


def test_a_vgg_file_that_would_run_code_is_refused_in_one_line_without_torch_advice(tmp_path,
                                                                                   write_crafted_checkpoint):
    """Item 10: torch's advice to re-run torch.load with weights_only=False never reaches the user."""
    path, marker = tmp_path / "vgg.pth", tmp_path / "pwned"
    write_crafted_checkpoint(path, marker)
    with pytest.raises(losses.VGGWeightsError) as caught:
        losses.VGGLoss(path)
    message = str(caught.value)
    assert not marker.exists() and "\n" not in message and "weights_only" not in message
    assert f"refused: the file holds a disallowed Python object ({os.system.__module__}.system)" in message
