"""The exact one-hot lookup: the convolution over the one-hot label map computed from class
indices (gaugan.models.onehot_conv), in SPADE, CLADE and every registered generator."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gaugan.config import GeneratorConfig
from gaugan.data.semantic import SemanticLabels, semantic_input, semantic_labels
from gaugan.models import CLADE, GENERATORS, SPADE, build_generator
from gaugan.models.onehot_conv import label_bags, onehot_conv

NUM_CLASSES = 6


def random_labels(batch: int, height: int, width: int, with_edges: bool, seed: int = 0,
                  num_label_values: int = NUM_CLASSES) -> SemanticLabels:
    generator = torch.Generator().manual_seed(seed)
    label = torch.randint(0, num_label_values, (batch, height, width), generator=generator)
    instance = torch.randint(0, 3, (batch, height, width), generator=generator) if with_edges else None
    return semantic_labels(label, num_label_values, instance)


def assert_same_gradients(module: nn.Module, reference: nn.Module, atol: float = 1e-5) -> None:
    for (name, param), reference_param in zip(module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, reference_param.grad, atol=atol, rtol=1e-4, msg=name)


# ---- the lookup itself ----------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("with_edges", [False, True])
def test_lookup_equals_the_convolution_in_values_and_gradients(kernel_size, with_edges):
    torch.manual_seed(kernel_size)
    labels = random_labels(2, 7, 9, with_edges)  # not square: a swapped axis would show
    weight = torch.randn(5, labels.num_channels, kernel_size, kernel_size, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    expected = F.conv2d(labels.dense(), weight, bias, padding=kernel_size // 2)
    got = onehot_conv(label_bags(labels, kernel_size), weight, bias)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (weight, bias), upstream)
    got_grads = torch.autograd.grad(got, (weight, bias), upstream)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        torch.testing.assert_close(got_grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_one_pixel_lands_where_the_convolution_puts_it():
    """Class 1 at the top-left corner only: each output pixel sees it through one kernel offset
    (or not at all), so a wrong offset order or padding puts a different column there."""
    label = torch.zeros(1, 4, 5, dtype=torch.long)
    label[0, 0, 0] = 1
    labels = semantic_labels(label, 2)
    weight = torch.zeros(1, 2, 3, 3)
    weight[0, 1] = torch.arange(1.0, 10.0).view(3, 3)  # class 1's column differs per offset
    out = onehot_conv(label_bags(labels, 3), weight, None)[0, 0]
    expected = torch.zeros(4, 5)
    expected[0, 0], expected[0, 1], expected[1, 0], expected[1, 1] = 5.0, 4.0, 2.0, 1.0  # centre, left, up, up-left
    assert torch.equal(out, expected)


def test_dontcare_is_one_more_class_and_edges_count_once_per_offset():
    label = torch.tensor([[[0, 3], [3, 2]]])  # 3: the don't-care index of 3 classes + dontcare
    instance = torch.tensor([[[1, 1], [2, 2]]])  # a horizontal boundary: every pixel is an edge
    labels = semantic_labels(label, 4, instance)
    assert labels.num_channels == 5 and torch.equal(labels.dense(), semantic_input(label, 4, instance))
    weight = torch.randn(3, 5, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(onehot_conv(label_bags(labels, 3), weight, None),
                               F.conv2d(labels.dense(torch.float64), weight, padding=1))


def test_labels_resize_like_the_one_hot_map():
    labels = random_labels(2, 9, 7, with_edges=True)
    for size in [(9, 7), (4, 3), (18, 14), (5, 11)]:
        expected = F.interpolate(labels.dense(), size=size, mode="nearest")
        assert torch.equal(labels.resized(size).dense(), expected)


def test_lookup_follows_autocast_like_the_convolution():
    labels = random_labels(2, 6, 6, with_edges=True)
    weight, bias = torch.randn(4, labels.num_channels, 3, 3), torch.randn(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = onehot_conv(label_bags(labels, 3), weight, bias)
        expected = F.conv2d(labels.dense(), weight, bias, padding=1)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), atol=0.05, rtol=0.02)


def test_bad_shapes_are_clear_errors():
    labels = random_labels(1, 4, 4, with_edges=False)
    with pytest.raises(ValueError, match="odd"):
        label_bags(labels, 2)
    with pytest.raises(ValueError, match=r"does not fit bags of 6 label channels and kernel 3"):
        onehot_conv(label_bags(labels, 3), torch.zeros(2, 7, 3, 3), None)


# ---- in the norms and generators -------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("with_edges", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_spade_given_labels_equals_spade_given_the_one_hot_map(kernel_size, with_edges, channels_last):
    torch.manual_seed(0)
    labels = random_labels(3, 16, 16, with_edges)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    layer = SPADE(6, labels.num_channels, param_free_norm="batch", kernel_size=kernel_size, hidden_channels=5)
    nn.init.normal_(layer.mlp_shared[0].bias)
    layer = layer.to(memory_format=memory_format)
    reference = copy.deepcopy(layer)
    x = (torch.randn(3, 6, 8, 8) * 2 + 1).contiguous(memory_format=memory_format).requires_grad_()
    x_reference = x.detach().clone().requires_grad_()
    got = layer(x, labels)
    expected = reference(x_reference, labels.dense().contiguous(memory_format=memory_format))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=memory_format)
    upstream = torch.randn_like(got)
    got.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x.grad, x_reference.grad, atol=1e-5, rtol=1e-5)
    assert_same_gradients(layer, reference, atol=1e-4)


def test_clade_given_labels_equals_clade_given_the_one_hot_map():
    torch.manual_seed(0)
    labels = random_labels(2, 8, 8, with_edges=True)
    layer = CLADE(4, labels.num_channels, param_free_norm="instance")
    reference = copy.deepcopy(layer)
    x = torch.randn(2, 4, 4, 4)
    got, expected = layer(x, labels), reference(x, labels.dense())
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    got.square().sum().backward()
    expected.square().sum().backward()
    assert_same_gradients(layer, reference)


@pytest.mark.parametrize("arch", list(GENERATORS))
def test_every_generator_gives_the_same_image_from_labels_as_from_the_one_hot_map(arch):
    torch.manual_seed(0)
    labels = random_labels(2, 64, 64, with_edges=True, num_label_values=8)
    cfg = GeneratorConfig(arch=arch, ngf=8, spade_hidden=16, param_free_norm="batch", pix2pixhd_num_downsample=2,
                          pix2pixhd_num_blocks=1)
    # float64: through a whole generator, float32 rounding alone reaches 1e-4 in gradients
    # that cancel (a bias before a batch norm has a true gradient of zero).
    G = build_generator(cfg, labels.num_channels, (64, 64)).double()
    reference = copy.deepcopy(G)
    got, expected = G(labels), reference(labels.dense(torch.float64))
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    upstream = torch.randn_like(got)
    got.backward(upstream)
    expected.backward(upstream)
    assert_same_gradients(G, reference, atol=1e-9)


def test_vae_generator_draws_z_from_labels_in_fp32():
    labels = random_labels(2, 64, 64, with_edges=False)
    G = build_generator(GeneratorConfig(ngf=4, spade_hidden=8), labels.num_channels, (64, 64), z_dim=8).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        got = G(labels)
    torch.manual_seed(3)
    with torch.no_grad():
        expected = G(labels.dense())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
