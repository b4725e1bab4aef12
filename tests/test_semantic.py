"""One-hot + instance edge input (paper section 3, docs/SPADE.md section 3)."""

from __future__ import annotations

import pytest
import torch

from gaugan.data.semantic import LabelRangeError, check_label_range, instance_edges, semantic_input
from gaugan.train.steps import prepare_batch


def test_edges_marked_on_both_sides_of_every_change():
    inst = torch.tensor([[[1, 1, 2], [1, 1, 2], [3, 3, 3]]])
    expected = torch.tensor([[[0, 1, 1], [1, 1, 1], [1, 1, 1]]], dtype=torch.float32)
    assert torch.equal(instance_edges(inst)[:, 0], expected)


def test_uniform_instance_map_has_no_edges():
    assert instance_edges(torch.full((2, 5, 7), 4)).sum() == 0


def test_single_pixel_instance():
    inst = torch.zeros(1, 5, 5, dtype=torch.long)
    inst[0, 2, 2] = 9
    edges = instance_edges(inst)[0, 0]
    expected = torch.zeros(5, 5)
    expected[2, 1:4] = 1
    expected[1:4, 2] = 1
    assert torch.equal(edges, expected)


def test_semantic_input_one_hot_and_edge_channel():
    label = torch.tensor([[[0, 2], [1, 2]]])
    inst = torch.tensor([[[5, 5], [6, 6]]])
    out = semantic_input(label, 3, inst)
    assert out.shape == (1, 4, 2, 2)
    assert torch.equal(out[:, :3].argmax(1), label)
    assert torch.equal(out[:, :3].sum(1), torch.ones(1, 2, 2))
    assert torch.equal(out[0, 3], torch.ones(2, 2))
    assert semantic_input(label, 3).shape == (1, 3, 2, 2)


def test_semantic_input_dtype_and_uint8_labels():
    label = torch.tensor([[[0, 1]]], dtype=torch.uint8)
    out = semantic_input(label, 2, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 2, 1, 2)


def test_check_label_range_names_the_value_and_the_valid_range():
    check_label_range(torch.tensor([[[0, 4]]]), 5)
    with pytest.raises(LabelRangeError, match=r"^seg\.png: label index 5 outside the valid range 0\.\.4 "
                                              r"\(5 label values\)$"):
        check_label_range(torch.tensor([[[0, 5]]]), 5, "seg.png")
    with pytest.raises(LabelRangeError, match=r"label indices -3, 7 outside the valid range 0\.\.4"):
        check_label_range(torch.tensor([[[-3, 7, 2]]], dtype=torch.int16), 5, "seg.png")


@pytest.mark.parametrize("label_lookup", [True, False])
def test_a_batch_with_an_out_of_range_label_is_refused_before_it_reaches_the_networks(label_lookup):
    """The lookup (gaugan.models.onehot_conv) would read another kernel offset's weights for
    index 10 of 10 label values; the batch is checked once, on the host, where it enters."""
    label = torch.zeros(2, 4, 4, dtype=torch.uint8)
    label[1, 2, 3] = 10
    batch = {"label": label, "image": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "index": torch.tensor([6, 9])}
    with pytest.raises(LabelRangeError, match=r"^batch of store items 6, 9: label index 10 outside the valid "
                                              r"range 0\.\.9 \(10 label values\)"):
        prepare_batch(batch, 10, torch.device("cpu"), label_lookup=label_lookup)
