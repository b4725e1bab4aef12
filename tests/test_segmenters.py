"""Segmenters: the published networks' key layout (names, shapes, counts as read from
CSAILVision/semantic-segmentation-pytorch, kazuto1011/deeplab-pytorch v1.0 and fyu/drn),
forwards, preprocessing and class mappings; strict loading and weight files (missing files,
user-supplied files; downloads: test_weights.py); the pipeline's own segmenter; a user's
TorchScript segmenter; choosing one (gaugan.segmenters.loading)."""

from __future__ import annotations

import dataclasses
import logging
import math
import zipfile

import pytest
import torch

from gaugan.checkpoint import load_state_dict_exactly
from gaugan.config import SegmenterConfig
from gaugan.data.registry import PUBLISHED, DatasetSpec
from gaugan.segmenters.base import IGNORE_INDEX
from gaugan.segmenters.deeplab import DeepLabV2COCOStuff
from gaugan.segmenters.drn import DRND105Cityscapes, bilinear_upsampling_kernel
from gaugan.segmenters.published import (
    PUBLISHED_SEGMENTERS,
    SEGMENTER_FOR_DATASET,
    SegmenterWeightsError,
    ensure_weights,
    load_published_segmenter,
    read_state_dict,
)
from gaugan.segmenters.trained import (
    SegmenterCheckpointError,
    TrainedSegmenter,
    balanced_class_weights,
    load_trained_segmenter,
    save_trained_segmenter,
    train_segmenter,
)
from gaugan.segmenters.upernet import UperNet101
from tests.support import state_shapes

SHALLOW = (1, 1, 1, 1)  # one block per stage: the same code, fast enough for every test


def meta(cls):
    with torch.device("meta"):
        return cls()


# ---- key layout of the full-size networks (built on the meta device: no memory, no init) ----


def test_upernet101_key_layout():
    model = meta(UperNet101)
    encoder, decoder = state_shapes(model.encoder), state_shapes(model.decoder)
    # deep stem: three 3x3 convs 3-64-64-128, the first with stride 2; layer1 starts at 128 channels
    assert encoder["conv1.weight"] == (64, 3, 3, 3) and encoder["conv3.weight"] == (128, 64, 3, 3)
    assert encoder["layer1.0.conv1.weight"] == (64, 128, 1, 1)
    assert encoder["layer1.0.downsample.0.weight"] == (256, 128, 1, 1)
    assert encoder["layer3.22.conv3.weight"] == (1024, 256, 1, 1) and "layer3.23.conv1.weight" not in encoder
    assert encoder["layer4.2.bn3.running_var"] == (2048,)
    convs = [k for k in encoder if k.endswith(".weight") and len(encoder[k]) == 4]
    assert len(convs) == 3 + 3 * (3 + 4 + 23 + 3) + 4  # stem, three per bottleneck, one projection per stage
    assert len(encoder) == 636
    assert sum(p.numel() for p in model.encoder.parameters()) == 42_623_936
    # UPerNet: PPM (4 scales, 512 each), FPN (fpn_dim 512), fusion, 150 classes
    assert decoder["ppm_conv.3.0.weight"] == (512, 2048, 1, 1) and "ppm_conv.4.0.weight" not in decoder
    assert decoder["ppm_last_conv.0.weight"] == (512, 2048 + 4 * 512, 3, 3)
    assert [decoder[f"fpn_in.{i}.0.weight"] for i in range(3)] == [(512, c, 1, 1) for c in (256, 512, 1024)]
    assert decoder["fpn_out.2.0.0.weight"] == (512, 512, 3, 3)
    assert decoder["conv_last.0.0.weight"] == (512, 4 * 512, 3, 3)
    assert decoder["conv_last.1.weight"] == (150, 512, 1, 1) and decoder["conv_last.1.bias"] == (150,)
    assert len(decoder) == 74


def test_deeplabv2_key_layout():
    state = state_shapes(meta(DeepLabV2COCOStuff).network)
    assert all(key.startswith("base.") for key in state)  # MSC wraps the network as "base"
    assert state["base.layer1.conv1.conv.weight"] == (64, 3, 7, 7) and "base.layer1.conv1.bn.running_mean" in state
    assert state["base.layer2.block1.reduce.conv.weight"] == (64, 64, 1, 1)
    assert state["base.layer2.block1.shortcut.conv.weight"] == (256, 64, 1, 1)
    assert "base.layer2.block2.shortcut.conv.weight" not in state  # projection only in the first block
    assert state["base.layer4.block23.conv3x3.conv.weight"] == (256, 256, 3, 3) and "base.layer4.block24.reduce.conv.weight" not in state
    assert state["base.layer5.block3.increase.bn.weight"] == (2048,)
    assert [state[f"base.aspp.c{i}.weight"] for i in range(4)] == [(182, 2048, 3, 3)] * 4
    assert state["base.aspp.c3.bias"] == (182,) and "base.aspp.c4.weight" not in state
    assert len(state) == 632


def test_drn_d_105_key_layout_and_published_parameter_count():
    model = meta(DRND105Cityscapes)
    state = state_shapes(model.network)
    assert state["base.0.0.weight"] == (16, 3, 7, 7)
    assert state["base.1.0.weight"] == (16, 16, 3, 3) and state["base.2.0.weight"] == (32, 16, 3, 3)
    assert state["base.3.0.downsample.0.weight"] == (256, 32, 1, 1)
    assert state["base.5.22.conv3.weight"] == (1024, 256, 1, 1) and "base.5.23.conv1.weight" not in state
    assert state["base.6.0.conv2.weight"] == (512, 512, 3, 3)
    assert state["base.7.0.weight"] == (512, 2048, 3, 3) and state["base.8.1.running_var"] == (512,)
    assert "base.9.0.weight" not in state
    assert state["seg.weight"] == (19, 512, 1, 1) and state["seg.bias"] == (19,) and state["up.weight"] == (19, 1, 16, 16)
    assert "up.bias" not in state and len(state) == 651
    # fyu/drn's README: DRN-D-105 has 54.8 M parameters with its 1000-way ImageNet classifier
    trunk = sum(p.numel() for p in model.network.base.parameters())
    assert trunk + 512 * 1000 + 1000 == pytest.approx(54.8e6, abs=0.05e6)
    # dilations: stride 8 overall, dilation 2 in layer5, 4 in layer6, 2 then 1 in the plain tail
    assert model.network.base[5][0].conv2.dilation == (2, 2) and model.network.base[6][2].conv2.dilation == (4, 4)
    assert model.network.base[7][0].dilation == (2, 2) and model.network.base[8][0].dilation == (1, 1)


def test_drn_upsampling_kernel_is_fyu_drn_bilinear_fill():
    kernel = bilinear_upsampling_kernel(3, 16)
    f = math.ceil(16 / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    for i in range(16):
        for j in range(16):
            assert kernel[2, 0, i, j].item() == pytest.approx((1 - abs(i / f - c)) * (1 - abs(j / f - c)))


# ---- forwards ----


@pytest.mark.parametrize("cls", [UperNet101, DeepLabV2COCOStuff, DRND105Cityscapes])
def test_full_size_forward_on_a_tiny_input(cls):
    torch.manual_seed(0)
    model = cls().eval()
    images = torch.randint(0, 256, (1, 3, 32, 48), dtype=torch.uint8)
    prediction = model.predict(images)
    assert prediction.shape == (1, 32, 48) and prediction.dtype == torch.int64
    assert int(prediction.min()) >= 0 and int(prediction.max()) < model.num_classes


def test_drn_upsamples_to_the_input_size_exactly():
    model = DRND105Cityscapes(blocks=(1, 1, 1, 1, 1, 1, 1, 1)).eval()
    with torch.no_grad():
        scores = model.logits(model.preprocess(torch.zeros(2, 3, 40, 64, dtype=torch.uint8)))
    assert scores.shape == (2, 19, 40, 64)  # output stride 8, x8 transposed conv


def test_predict_rejects_non_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        UperNet101(SHALLOW).predict(torch.zeros(1, 3, 32, 32))


# ---- preprocessing ----


def solid(r, g, b, height=4, width=4):
    return torch.tensor([r, g, b], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, height, width).contiguous()


def test_upernet_preprocessing_imagenet_normalisation_and_multiple_of_32():
    model = UperNet101(SHALLOW)
    x = model.preprocess(solid(255, 0, 128, 32, 64))
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert x.shape == (1, 3, 32, 64) and torch.allclose(x[0, :, 0, 0], torch.tensor(expected), atol=1e-5)
    assert model.preprocess(solid(1, 2, 3, 40, 70)).shape == (1, 3, 64, 96)  # rounded up to multiples of 32


def test_deeplab_preprocessing_bgr_mean_subtracted_unscaled():
    x = DeepLabV2COCOStuff(SHALLOW).preprocess(solid(10, 20, 30))
    assert torch.allclose(x[0, :, 1, 1], torch.tensor([30 - 104.008, 20 - 116.669, 10 - 122.675]))


def test_drn_preprocessing_cityscapes_mean_std():
    x = DRND105Cityscapes(blocks=(1,) * 8).preprocess(solid(255, 0, 51))
    expected = [(1 - 0.290101) / 0.182954, (0 - 0.328081) / 0.186566, (0.2 - 0.286964) / 0.184475]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(expected), atol=1e-5)


# ---- class mappings ----


def test_ade20k_mapping_drops_other_and_shifts_by_one():
    labels = torch.tensor([[0, 1, 2, 150]])
    assert UperNet101(SHALLOW).map_target(labels).tolist() == [[IGNORE_INDEX, 0, 1, 149]]


def test_cocostuff_mapping_keeps_classes_and_ignores_dontcare():
    labels = torch.tensor([[0, 91, 181, 182]])
    assert DeepLabV2COCOStuff(SHALLOW).map_target(labels).tolist() == [[0, 91, 181, IGNORE_INDEX]]


def test_cityscapes_label_ids_to_train_ids():
    model = DRND105Cityscapes(blocks=(1,) * 8)
    label_ids = torch.tensor([[7, 8, 11, 24, 26, 33, 0, 1, 6, 9, 10, 14, 29, 30, 34]])
    assert model.map_target(label_ids).tolist() == [[0, 1, 2, 11, 13, 18] + [IGNORE_INDEX] * 9]
    table = model.target_table.tolist()
    assert sorted(v for v in table if v != IGNORE_INDEX) == list(range(19))
    assert model.class_names()[0] == "road" and model.class_names()[18] == "bicycle"


def test_mapping_rejects_indices_outside_the_table():
    with pytest.raises(ValueError, match="label indices span 0..183"):
        DeepLabV2COCOStuff(SHALLOW).map_target(torch.tensor([0, 183]))


def test_every_paper_dataset_has_a_segmenter_and_a_protocol():
    assert set(SEGMENTER_FOR_DATASET) == {"ade20k", "ade20k_outdoor", "coco", "cityscapes"}
    for name in SEGMENTER_FOR_DATASET.values():
        protocol = meta(PUBLISHED_SEGMENTERS[name].build).protocol()
        assert {"segmenter", "preprocessing", "class_mapping", "num_classes"} <= set(protocol)


# ---- weight files and strict loading ----


def test_strict_loading_roundtrip_and_published_file_conventions(tmp_path):
    torch.manual_seed(0)
    source = UperNet101(SHALLOW)
    encoder_state = source.encoder.state_dict()
    # saved from DataParallel inside a training checkpoint, without num_batches_tracked (PyTorch < 0.4.1)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in encoder_state.items() if "num_batches_tracked" not in k},
               "epoch": 50}
    torch.save(wrapped, tmp_path / "encoder.pth")
    target = UperNet101(SHALLOW)
    load_state_dict_exactly(target.encoder, read_state_dict(tmp_path / "encoder.pth"), tmp_path / "encoder.pth")
    assert all(torch.equal(a, b) for a, b in zip(source.encoder.state_dict().values(), target.encoder.state_dict().values())
               if a.dtype.is_floating_point)


def test_strict_loading_reports_mismatches_key_by_key(tmp_path):
    state = UperNet101(SHALLOW).decoder.state_dict()
    state.pop("conv_last.1.bias")
    state["extra.weight"] = torch.zeros(1)
    state["conv_last.1.weight"] = torch.zeros(151, 512, 1, 1)
    with pytest.raises(SegmenterWeightsError) as info:
        load_state_dict_exactly(UperNet101(SHALLOW).decoder, state, tmp_path / "decoder.pth",
                                error=SegmenterWeightsError)
    message = str(info.value)
    assert "decoder.pth" in message and "missing keys (1):\n    conv_last.1.bias" in message
    assert "unexpected keys (1):\n    extra.weight" in message
    assert "conv_last.1.weight: checkpoint (151, 512, 1, 1)" in message


def test_missing_user_supplied_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(SegmenterWeightsError) as info:
        load_published_segmenter("cityscapes", tmp_path / "weights", torch.device("cpu"))
    message = str(info.value)
    assert str(tmp_path / "weights" / "drn_d_105_cityscapes" / "drn_d_105_cityscapes.pth") in message
    assert "fyu/drn" in message and "evaluate.segmenter_weights_dir" in message
    with pytest.raises(KeyError, match="no published segmenter for dataset 'landscapes'"):
        load_published_segmenter("landscapes", tmp_path, torch.device("cpu"))


def test_missing_published_weights_name_the_weights_stage(tmp_path):
    entry = PUBLISHED_SEGMENTERS["upernet101_ade20k"]
    with pytest.raises(SegmenterWeightsError, match="encoder_epoch_50.pth.*weights stage.*sceneparsing.csail.mit.edu"):
        ensure_weights(entry, tmp_path)


# ---- the pipeline's own segmenter ----


def tiny_spec(contain_dontcare: bool = False) -> DatasetSpec:
    return dataclasses.replace(PUBLISHED["landscapes"], label_nc=3, contain_dontcare=contain_dontcare,
                               dontcare_value=255 if contain_dontcare else None, load_size=16, crop_size=16)


def stripes(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Images whose colour says the class: red/green/blue vertical bands, random widths."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        label = torch.zeros(4, 16, 16, dtype=torch.uint8)
        for b in range(4):
            cut1, cut2 = sorted(torch.randint(2, 14, (2,), generator=generator).tolist())
            label[b, :, cut1:] = 1
            label[b, :, cut2:] = 2
        colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=torch.uint8)
        image = colours[label.long()].permute(0, 3, 1, 2).contiguous()
        noise = torch.randint(0, 20, image.shape, generator=generator, dtype=torch.uint8)
        batches.append({"image": image + noise, "label": label})
    return batches


def test_trained_segmenter_learns_and_round_trips(tmp_path):
    spec = tiny_spec()
    reported = []
    cfg = SegmenterConfig(width=8, num_steps=33, batch_size=4, lr=1e-2, seed=0)  # 6 batches per epoch: 5.5 epochs
    segmenter = train_segmenter(stripes(6, 0), spec, cfg, torch.device("cpu"), ["red", "green", "blue"],
                                report=lambda metrics, step: reported.append((step, metrics)))
    assert [step for step, _ in reported] == [6, 12, 18, 24, 30, 33]  # per epoch; the last one cut at num_steps
    assert reported[-1][1]["segmenter/loss"] < 0.5 * reported[0][1]["segmenter/loss"]
    test = stripes(2, 99)
    correct = sum(int((segmenter.predict(b["image"]) == b["label"].long()).sum()) for b in test)
    assert correct / (2 * 4 * 16 * 16) > 0.9
    path = tmp_path / "segmenter" / "segmenter.pt"
    save_trained_segmenter(segmenter, path, {"report": {"real_miou": 1.0}})
    loaded = load_trained_segmenter(path, spec, torch.device("cpu"))
    assert loaded.class_names() == ["red", "green", "blue"]
    assert torch.equal(loaded.predict(test[0]["image"]), segmenter.predict(test[0]["image"]))
    with pytest.raises(SegmenterCheckpointError, match="label_nc=3.*label_nc=4.*rerun the segmenter stage"):
        load_trained_segmenter(path, dataclasses.replace(spec, label_nc=4), torch.device("cpu"))
    with pytest.raises(SegmenterCheckpointError, match="run the segmenter stage first"):
        load_trained_segmenter(tmp_path / "none.pt", spec, torch.device("cpu"))


def test_trained_segmenter_ignores_the_dontcare_index():
    segmenter = TrainedSegmenter(tiny_spec(contain_dontcare=True), width=4)
    assert segmenter.num_classes == 3
    assert segmenter.map_target(torch.tensor([0, 2, 3])).tolist() == [0, 2, IGNORE_INDEX]


def test_balanced_class_weights():
    weights = balanced_class_weights(torch.tensor([900, 100, 100, 0]))
    # median frequency of present classes = 0.1: the frequent class gets sqrt(1/9), absent ones 1
    assert weights.tolist() == pytest.approx([1 / 3, 1.0, 1.0, 1.0])
    assert balanced_class_weights(torch.tensor([10**6, 1, 1]))[0] == pytest.approx(0.1)  # clipped
    with pytest.raises(ValueError, match="no labelled pixels"):
        balanced_class_weights(torch.zeros(3))


def test_a_segmenter_must_define_its_three_parts():
    from gaugan.segmenters.base import Segmenter

    class OnlyPreprocess(Segmenter):
        def preprocess(self, images):
            return images

    with pytest.raises(TypeError, match="logits, protocol"):
        OnlyPreprocess()


# ---- a user's own segmenter (TorchScript) ----


class ColourScores(torch.nn.Module):
    """Scores (B, 3, h, w) for red/green/blue from the input in [0, 1], at half resolution."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(images, 2) * 10.0


class ColourIds(torch.nn.Module):
    """Class ids; all 0 unless the input is in [0, 1] as the contract says."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ids = images.argmax(dim=1)
        return torch.where(images.amax(dim=1) <= 1.0, ids, torch.zeros_like(ids))


def scripted(module: torch.nn.Module, path) -> str:
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def test_torchscript_segmenter_scores_or_ids_under_the_contract(tmp_path):
    from gaugan.segmenters.loading import load_segmenter_for

    spec = tiny_spec(contain_dontcare=True)
    batch = stripes(1, 3)[0]
    exported = torch.export.export(ColourScores(), (batch["image"].float() / 255,),
                                   dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(exported, tmp_path / "exported.pt2")
    paths = [scripted(ColourScores(), tmp_path / "scores.pt"), scripted(ColourIds(), tmp_path / "ids.pt"),
             tmp_path / "exported.pt2"]
    for path in paths:
        segmenter = load_segmenter_for(spec, "torchscript", "cpu", torchscript_path=path)
        prediction = segmenter.predict(batch["image"])
        assert prediction.shape == (4, 16, 16) and prediction.dtype == torch.int64
        assert (prediction == batch["label"].long()).float().mean() > 0.9
        assert segmenter.map_target(torch.tensor([0, 2, 3])).tolist() == [0, 2, IGNORE_INDEX]  # 3 = don't-care
        assert segmenter.protocol()["segmenter"].startswith("user-supplied TorchScript module")


def test_choosing_a_segmenter():
    from gaugan.errors import UserError
    from gaugan.segmenters.loading import resolve_choice

    assert resolve_choice("auto", "ade20k") == "published" and resolve_choice("auto", "custom") == "trained"
    assert resolve_choice("torchscript", "landscapes") == "torchscript"
    with pytest.raises(UserError, match="no published segmenter exists for dataset 'landscapes'"):
        resolve_choice("published", "landscapes")
    with pytest.raises(UserError, match="evaluate.segmenter: got 'mine'"):
        resolve_choice("mine", "landscapes")


def test_torchscript_segmenter_breaking_the_contract_is_a_clear_error(tmp_path):
    from gaugan.segmenters.torchscript import TorchScriptSegmenterError, load_torchscript_segmenter

    images = stripes(1, 0)[0]["image"]
    four_classes = load_torchscript_segmenter(scripted(ColourScores(), tmp_path / "s.pt"),
                                              dataclasses.replace(tiny_spec(), label_nc=4), torch.device("cpu"))
    with pytest.raises(TorchScriptSegmenterError, match=r"s.pt \(evaluate.segmenter_path\).*scores of shape \(4, 3, 8, 8\); "
                                                        r"expected \(4, 4, h, w\)"):
        four_classes.predict(images)
    (tmp_path / "bad.pt").write_bytes(b"not torchscript")
    with pytest.raises(TorchScriptSegmenterError, match="bad.pt.*not a TorchScript module or exported program"):
        load_torchscript_segmenter(tmp_path / "bad.pt", tiny_spec(), torch.device("cpu"))
    with pytest.raises(TorchScriptSegmenterError, match="evaluate.segmenter_path is null"):
        load_torchscript_segmenter(None, tiny_spec(), torch.device("cpu"))
    with pytest.raises(TorchScriptSegmenterError, match="no such file"):
        load_torchscript_segmenter(tmp_path / "none.pt", tiny_spec(), torch.device("cpu"))


class NaNScores(torch.nn.Module):
    """Scores that are NaN wherever the input is dark (a judge with a division by zero, say)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scores = torch.nn.functional.avg_pool2d(images, 2) * 10.0
        return torch.where(scores < 3.0, torch.full_like(scores, float("nan")), scores)


def test_a_judge_returning_non_finite_scores_is_an_error(tmp_path):
    """Item 8: NaN scores used to argmax to class 0 and give an mIoU with exit 0."""
    from gaugan.segmenters.torchscript import TorchScriptSegmenterError, load_torchscript_segmenter

    path = scripted(NaNScores(), tmp_path / "nan_judge.pt")
    segmenter = load_torchscript_segmenter(path, tiny_spec(), torch.device("cpu"))
    with pytest.raises(TorchScriptSegmenterError) as caught:
        segmenter.predict(stripes(1, 3)[0]["image"])
    message = str(caught.value)
    assert message.startswith(f"{path} (evaluate.segmenter_path): the segmenter returned non-finite scores (NaN")
    assert "\n" not in message


def _state_dict_file(path) -> None:
    torch.save({"weight": torch.zeros(2)}, path)


def _truncated_module(path) -> None:
    scripted(ColourScores(), path)
    path.write_bytes(path.read_bytes()[:300])


def _other_zip(path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "my judge")


BROKEN_JUDGES = {
    "empty": (lambda path: path.write_bytes(b""), "the file is empty"),
    "other zip": (_other_zip, "exported archive, unreadable: [enforce fail at inline_container.cc"),
    "text": (lambda path: path.write_text("my judge\n"), "a text file, beginning 'my judge'"),
    "random bytes": (lambda path: path.write_bytes(bytes(range(256)) * 4), "unrecognised binary content"),
    "truncated": (_truncated_module, "a truncated or damaged zip archive"),
    "state dict": (_state_dict_file, "written by torch.save (weights or a pickled object), not a module"),
}


@pytest.mark.parametrize("kind", BROKEN_JUDGES)
def test_a_broken_judge_file_is_one_line_and_torch_stays_quiet(tmp_path, capfd, kind):
    """Items 10 and 16: one line with the reason; none of torch's 24-30 lines of log before it."""
    from gaugan.segmenters.torchscript import TorchScriptSegmenterError, load_torchscript_segmenter

    write, reason = BROKEN_JUDGES[kind]
    path = tmp_path / "judge.pt"
    write(path)
    capfd.readouterr()
    handlers = logging.getLogger("torch").handlers
    with pytest.raises(TorchScriptSegmenterError) as caught:
        load_torchscript_segmenter(path, tiny_spec(), torch.device("cpu"))
    assert logging.getLogger("torch").handlers == handlers  # torch logs as before afterwards
    message = str(caught.value)
    assert message.startswith(f"{path} (evaluate.segmenter_path): not a TorchScript module or exported program (")
    assert reason in message and "\n" not in message and "miniz" not in message
    assert "torch.jit.save(torch.jit.script(model), path)" in message
    assert capfd.readouterr().err == ""


class FailsOnBatches(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.view(-1, 7)


def test_a_judge_that_fails_on_a_batch_is_one_line(tmp_path, capfd):
    from gaugan.segmenters.torchscript import TorchScriptSegmenterError, load_torchscript_segmenter

    path = scripted(FailsOnBatches(), tmp_path / "judge.pt")
    segmenter = load_torchscript_segmenter(path, tiny_spec(), torch.device("cpu"))
    capfd.readouterr()
    with pytest.raises(TorchScriptSegmenterError) as caught:
        segmenter.predict(stripes(1, 3)[0]["image"])
    message = str(caught.value)
    assert message.startswith(f"{path} (evaluate.segmenter_path): the segmenter failed on a batch of shape "
                              "(4, 3, 16, 16) (RuntimeError: shape '[-1, 7]' is invalid for input of size 3072)")
    assert "\n" not in message and capfd.readouterr().err == ""
