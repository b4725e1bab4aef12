"""The checkpoint module: safe reading (no pickled code runs; files that are not checkpoints
get a message saying what they are), atomic writing, the payload builder, random states as
plain data, and the resume-compatibility rule."""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gaugan import checkpoint as ckpt
from gaugan.config import Config, config_to_dict, replace
from gaugan.data.registry import published_spec

SPEC = published_spec("landscapes")


def small_payload() -> dict:
    return ckpt.build_checkpoint(Config(), SPEC, {"G": nn.Linear(2, 2)})


def test_atomic_save_leaves_no_temporary_file_and_keeps_the_old_one_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.atomic_torch_save({**small_payload(), "value": 1}, path)
    assert ckpt.load_checkpoint(path)["value"] == 1
    with pytest.raises(Exception):
        ckpt.atomic_torch_save({**small_payload(), "bad": lambda: None}, path)  # unpicklable
    assert ckpt.load_checkpoint(path)["value"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_a_pickle_that_runs_a_command_is_refused_without_running_it(tmp_path, write_crafted_checkpoint):
    path, marker = tmp_path / "last.pt", tmp_path / "pwned"
    write_crafted_checkpoint(path, marker)
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_checkpoint(path)
    assert not marker.exists()
    message = str(caught.value)
    assert message.startswith(f"{path}: refused") and f"({os.system.__module__}.system)" in message
    assert "disallowed Python object" in message and "could run code" in message


def _truncated(path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(1000)}, buffer)
    path.write_bytes(buffer.getvalue()[:2000])


def _zip_without_torch(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


NOT_CHECKPOINTS = {
    "empty": (lambda path: path.write_bytes(b""), "the file is empty"),
    "text": (lambda path: path.write_text("epoch: 1\nloss: 0.5\n"), "a text file, beginning 'epoch: 1'"),
    "truncated": (_truncated, "a truncated or damaged zip archive"),
    "zip": (_zip_without_torch, "a zip archive, but not one written by torch.save"),
    "plain pickle": (lambda path: path.write_bytes(pickle.dumps({"a": 1}, protocol=4)), "the weights-only reader"),
    "binary": (lambda path: path.write_bytes(bytes([0x89, 0x50, 0x4E, 0x47, 0xFF, 0xFE, 0x00, 0x01])),
               "unrecognised binary content, first bytes 89 50 4e 47"),
}


@pytest.mark.parametrize("kind", NOT_CHECKPOINTS)
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, kind):
    write, expected = NOT_CHECKPOINTS[kind]
    path = tmp_path / "last.pt"
    write(path)
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.read_torch_file(path)
    assert str(caught.value).startswith(f"{path}: not a PyTorch checkpoint (")
    assert expected in str(caught.value)


def test_an_unusable_last_pt_says_how_to_start_afresh(tmp_path):
    path = tmp_path / "last.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match=r"not a PyTorch checkpoint .*set train.resume=false or delete"):
        ckpt.load_for_resume(path)
    ckpt.atomic_torch_save(ckpt.generator_payload(small_payload()), path)  # generator.pt-like: no training state
    with pytest.raises(ckpt.CheckpointError, match=r"incomplete .*: no optimizers, progress, rng.*train.resume=false"):
        ckpt.load_for_resume(path)


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(), random.random()


def test_random_states_are_plain_data_and_restore_exactly(tmp_path):
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    state = ckpt.capture_rng_state()
    expected = _draws()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    reloaded = torch.load(path, weights_only=True)  # no allow-listing needed: tensors, numbers, strings
    ckpt.restore_rng_state(reloaded)
    assert _draws() == expected


def test_checkpoints_with_numpy_random_state_from_earlier_versions_still_load(tmp_path):
    np.random.seed(3)
    legacy_rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                  "cuda": None}
    expected = np.random.rand(2).tolist()
    payload = {**small_payload(), "rng": legacy_rng}
    path = tmp_path / "last.pt"
    torch.save(payload, path)
    loaded = ckpt.load_checkpoint(path)
    np.random.seed(0)
    ckpt.restore_rng_state(loaded["rng"])
    assert np.random.rand(2).tolist() == expected


def test_builder_writes_our_format_and_the_generator_file_keeps_generation_models():
    G, D = nn.Linear(2, 2), nn.Linear(2, 1)
    optimizer = torch.optim.Adam(G.parameters())
    payload = ckpt.build_checkpoint(Config(), SPEC, {"G": G, "D": D, "G_ema": G.state_dict()}, {"G": optimizer},
                                    None, ckpt.Progress(epoch=1, step=5, batch_in_epoch=2), [ckpt.capture_rng_state()])
    assert payload["format"] == ckpt.CHECKPOINT_FORMAT and payload["spec"]["name"] == "landscapes"
    assert payload["config"] == config_to_dict(Config()) and payload["scaler"] is None
    assert payload["progress"] == {"epoch": 1, "step": 5, "batch_in_epoch": 2}
    assert set(payload["models"]["G"]) == {"weight", "bias"} and len(payload["rng"]["per_rank"]) == 1
    final = ckpt.generator_payload(payload)
    assert set(final["models"]) == {"G", "G_ema"} and "optimizers" not in final and "rng" not in final


def test_config_differences_that_change_training_are_listed_others_allowed():
    base = Config()
    saved = config_to_dict(base)
    harmless = replace(base, train={"log_every": 1, "sample_every": 5, "checkpoint_every": 7, "max_steps": 3,
                                    "gpus": 4},  # four processes train on the batches one would
                       data={"num_workers": 0}, tracking={"enabled": False}, evaluate={"batch_size": 2})
    assert ckpt.training_config_differences(saved, config_to_dict(harmless)) == []
    changed = replace(base, optim={"lr": 1e-3}, train={"batch_size": 4}, generator={"ngf": 8})
    assert ckpt.training_config_differences(saved, config_to_dict(changed)) == [
        "generator.ngf", "optim.lr", "train.batch_size"]
    payload = {"config": saved, "spec": {"name": "x"}}
    with pytest.raises(ckpt.CheckpointError, match=r"optim\.lr: 0\.0002 -> 0\.001.*train\.resume=false"):
        ckpt.check_resumable(payload, config_to_dict(changed), {"name": "x"}, Path("last.pt"))
    with pytest.raises(ckpt.CheckpointError, match="dataset spec differs"):
        ckpt.check_resumable(payload, saved, {"name": "y"}, Path("last.pt"))


def test_keys_added_to_the_config_after_a_checkpoint_are_no_difference():
    """A checkpoint from before a setting existed trained as its default: not 'None -> None'."""
    saved = config_to_dict(Config())
    del saved["data"]["outdoor_list"]  # null by default
    del saved["data"]["custom"]["num_classes"]  # a nested section, null by default
    assert ckpt.training_config_differences(saved, config_to_dict(Config())) == []
    ckpt.check_resumable({"config": saved, "spec": {}}, config_to_dict(Config()), {}, Path("last.pt"))
    # A value that really differs from the default still counts, and a setting this version
    # no longer has is named as such.
    saved["optim"]["retired_setting"] = 1
    current = config_to_dict(replace(Config(), data={"outdoor_list": "outdoor.txt"}))
    assert ckpt.training_config_differences(saved, current) == ["data.outdoor_list", "optim.retired_setting"]
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.check_resumable({"config": saved, "spec": {}}, current, {}, Path("last.pt"))
    message = str(caught.value)
    assert "data.outdoor_list: None -> 'outdoor.txt'" in message
    assert "optim.retired_setting: 1 -> (not a setting of this version)" in message
    assert "None -> None" not in message


def test_trained_segmenter_file_is_read_safely(tmp_path, write_crafted_checkpoint):
    from gaugan.segmenters.trained import SegmenterCheckpointError, load_trained_segmenter

    path, marker = tmp_path / "segmenter.pt", tmp_path / "pwned"
    write_crafted_checkpoint(path, marker)
    with pytest.raises(SegmenterCheckpointError, match=r"disallowed Python object.*rerun the segmenter stage"):
        load_trained_segmenter(path, SPEC, torch.device("cpu"))
    assert not marker.exists()
