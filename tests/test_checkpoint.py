"""The checkpoint module: safe reading (no pickled code runs; files that are not checkpoints
get a message saying what they are), atomic writing, the payload builder, random states as
plain data (gaugan.seeding), the resume-compatibility rule and restoring a training
(gaugan.train.progress)."""

from __future__ import annotations

import io
import os
import pickle
import random
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gaugan import checkpoint as ckpt
from gaugan import seeding
from gaugan.config import Config, config_to_dict, replace
from gaugan.data.registry import published_spec
from gaugan.train.progress import Progress, restore_training
from tests.support import write_truncated_torch_file

ROOT = Path(__file__).resolve().parents[1]
SPEC = published_spec("landscapes")


def small_payload() -> dict:
    return ckpt.build_checkpoint(Config(), SPEC, {"G": nn.Linear(2, 2)})


def test_atomic_save_leaves_no_temporary_file_and_keeps_the_old_one_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.atomic_torch_save({**small_payload(), "value": 1}, path)
    assert ckpt.load_checkpoint(path)["value"] == 1
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):  # AttributeError for a local lambda
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


def _zip_without_torch(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


NOT_CHECKPOINTS = {
    "empty": (lambda path: path.write_bytes(b""), "the file is empty"),
    "text": (lambda path: path.write_text("epoch: 1\nloss: 0.5\n"), "a text file, beginning 'epoch: 1'"),
    "truncated": (write_truncated_torch_file, "a truncated or damaged zip archive"),
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
    state = seeding.capture_rng_state()
    expected = _draws()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    reloaded = torch.load(path, weights_only=True)  # no allow-listing needed: tensors, numbers, strings
    seeding.restore_rng_state(reloaded)
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
    seeding.restore_rng_state(loaded["rng"])
    assert np.random.rand(2).tolist() == expected


def test_builder_writes_our_format_and_the_generator_file_keeps_generation_models():
    G, D = nn.Linear(2, 2), nn.Linear(2, 1)
    optimizer = torch.optim.Adam(G.parameters())
    payload = ckpt.build_checkpoint(Config(), SPEC, {"G": G, "D": D, "G_ema": G.state_dict()}, {"G": optimizer},
                                    None, Progress(epoch=1, step=5, batch_in_epoch=2), [seeding.capture_rng_state()])
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


def _trained_adam(fused: bool | None) -> tuple[nn.Linear, torch.optim.Adam]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), fused=fused)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("fused", [False, True])
def test_optimiser_state_of_a_cuda_graph_run_resumes_on_the_cpu(tmp_path, fused):
    """A CUDA-graph run saves Adam with capturable=True (step counts on the GPU); the CPU refuses
    to step such an optimiser. The flag is how this run executes, not part of the state."""
    model, optimizer = _trained_adam(fused)
    payload = ckpt.build_checkpoint(Config(), SPEC, {"G": model}, {"G": optimizer}, None, Progress(0, 1, 1),
                                    [seeding.capture_rng_state()])
    for group in payload["optimizers"]["G"]["param_groups"]:
        group["capturable"] = True  # as train.cuda_graph leaves it (gaugan.train.cuda_graphs.make_capturable)
    path = tmp_path / "last.pt"
    ckpt.atomic_torch_save(payload, path)
    resumed_model, resumed = _trained_adam(fused)
    restore_training(ckpt.load_for_resume(path), path, {"G": resumed_model}, {"G": resumed}, None, 0, 1, 0)
    assert [group["capturable"] for group in resumed.param_groups] == [False]
    resumed_model(torch.ones(1, 3)).sum().backward()
    resumed.step()  # before: AssertionError "If capturable=True, params and state_steps must be on supported devices"
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    for ours, theirs in zip(resumed_model.parameters(), model.parameters()):
        assert torch.equal(ours, theirs)
    # And the other way: a checkpoint without the flag restored into an optimiser that has it
    # (a CUDA-graph continuation of a CPU run) keeps it.
    payload["optimizers"]["G"] = optimizer.state_dict()
    ckpt.atomic_torch_save(payload, path)
    capturable_model = nn.Linear(3, 2)
    capturable = torch.optim.Adam(capturable_model.parameters(), fused=fused, capturable=True)  # stepped on a GPU only
    restore_training(ckpt.load_for_resume(path), path, {"G": capturable_model}, {"G": capturable}, None, 0, 1, 0)
    assert [group["capturable"] for group in capturable.param_groups] == [True]


def test_a_full_disk_or_file_size_limit_is_one_line_and_keeps_the_previous_file(tmp_path):
    """torch.save reports a failed write as "enforce fail at inline_container.cc" (RLIMIT_FSIZE
    makes the write fail with EFBIG, as ENOSPC would on a full disk)."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        import torch
        from gaugan.checkpoint import atomic_torch_save
        from gaugan.errors import UserError

        path = Path({str(tmp_path / "last.pt")!r})
        atomic_torch_save({{"weights": torch.zeros(10)}}, path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        try:
            atomic_torch_save({{"weights": torch.zeros(100_000)}}, path)
        except UserError as err:
            print(err)
            sys.exit(0)
        sys.exit("no user error")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    path = tmp_path / "last.pt"
    assert result.stdout == (f"{path}: could not write the checkpoint (File too large); the previous last.pt is kept "
                             "unchanged. Free space on that disk (or raise the file size limit) and run again: "
                             "training resumes from the kept last.pt\n")
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.zeros(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_failed_write_without_a_cause_is_one_line_too(tmp_path, monkeypatch):
    """torch's zip writer failing with no OSError behind it (before: NameError: _first_line)."""

    def failing_save(payload, file):
        file.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\nmore of torch's lines")

    path = tmp_path / "last.pt"
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(ckpt.CheckpointWriteError) as caught:
        ckpt.atomic_torch_save({"weights": torch.zeros(1)}, path)
    assert str(caught.value) == (
        f"{path}: could not write the checkpoint (torch's writer: [enforce fail at inline_container.cc:664] "
        ". unexpected pos 64 vs 0); no last.pt was written. Free space on that disk (or raise the file size limit) "
        "and run again")
    assert list(tmp_path.iterdir()) == []


def test_reading_shows_no_torch_warning_or_advice(tmp_path, recwarn):
    """Item 10: a pickle of another protocol makes torch warn on stderr before it fails; the
    user sees one line, never torch's warning or its advice to load with weights_only=False."""
    path = tmp_path / "weights.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.read_torch_file(path)
    assert [str(warning.message) for warning in recwarn] == []
    assert "\n" not in str(caught.value) and "weights_only" not in str(caught.value)
    legacy = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    path.write_bytes(legacy.getvalue()[: len(legacy.getvalue()) // 2])
    with pytest.raises(ckpt.CheckpointError, match=r"weights.pth: not a PyTorch checkpoint, or a damaged one "
                                                   r"\(the file ends early: truncated\)"):
        ckpt.read_torch_file(path)
