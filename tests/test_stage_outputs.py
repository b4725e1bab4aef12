"""The folders the stages write into: a checkpoint folder is never a user's, an output folder
that cannot be written fails before the work with one line, and a full disk while training is
one line that keeps the last good checkpoint."""

from __future__ import annotations

import errno
import importlib
import json
from pathlib import Path

import pytest
import torch

from gaugan import checkpoint as ckpt
from gaugan.config import Config, replace
from gaugan.data import io
from gaugan.errors import USER_ERROR_EXIT_CODE, UserError
from gaugan.train.loop import train
from pipeline.params import dump_config
from pipeline.stage import run_stage
from stages import segmenter as segmenter_stage
from tests.support import no_work, tiny_config


def stage_config(store: Path, **train: object) -> Config:
    """The tiny training configuration reading ``store`` (an absolute path) from any root."""
    return replace(tiny_config(**train), data={"processed_dir": str(store)})


def run_stage_in(name: str, cfg: Config, root: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture) -> str:
    """``python -m stages.<name>`` in ``root`` with ``cfg``, expected to fail as a user error; its stderr."""
    (root / "params.yaml").write_text(dump_config(cfg))
    monkeypatch.chdir(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_stage(name, importlib.import_module(f"stages.{name}").run)
    assert exited.value.code == USER_ERROR_EXIT_CODE
    return capsys.readouterr().err


# ---- train.checkpoint_dir and segmenter.checkpoint_dir are never a user's folder ----------


def test_train_refuses_a_checkpoint_folder_of_the_users_and_leaves_it_untouched(store, tmp_path, monkeypatch,
                                                                                capsys):
    mine = tmp_path / "my_project"
    mine.mkdir()
    (mine / "run.json").write_text("my own run notes\n")
    (mine / "notes.txt").write_text("keep me\n")
    cfg = stage_config(store, checkpoint_dir="my_project")
    stderr = run_stage_in("train", cfg, tmp_path, monkeypatch, capsys)
    assert stderr.count("\n") == 1
    assert stderr.startswith(f"train: {mine}: train.checkpoint_dir names an existing folder")
    assert "notes.txt" in stderr and "run.json" in stderr
    assert sorted(path.name for path in mine.iterdir()) == ["notes.txt", "run.json"]
    assert (mine / "run.json").read_text() == "my own run notes\n"
    # The library refuses it too, and a file where the folder should be.
    with pytest.raises(UserError, match="train.checkpoint_dir names an existing folder"):
        train(cfg, store, mine, show_progress=False)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="train.checkpoint_dir names a file, not a folder"):
        train(cfg, store, tmp_path / "a_file", show_progress=False)


def test_checkpoint_folders_of_earlier_versions_keep_resuming(store, tmp_path):
    """A folder written before folders were marked (last.pt, generator.pt, run.json, samples/) is
    recognised, marked and resumed; one holding anything else besides is refused."""
    folder = tmp_path / "checkpoints"
    cfg = tiny_config(max_steps=2, sample_every=2)
    train(cfg, store, folder, show_progress=False)
    (folder / ckpt.CHECKPOINT_DIR_MARKER.file).unlink()  # as an earlier version left it
    (folder / "run.json").write_text("{}\n")
    assert {"last.pt", "generator.pt", "run.json", "samples"} <= {path.name for path in folder.iterdir()}
    resumed = train(replace(cfg, train={"max_steps": 4}), store, folder, show_progress=False)
    assert resumed.resumed_from_step == 2 and resumed.step == 4
    assert ckpt.CHECKPOINT_DIR_MARKER.found_in(folder)

    earlier = tmp_path / "earlier_with_extra"
    earlier.mkdir()
    (earlier / "last.pt").write_bytes((folder / "last.pt").read_bytes())
    (earlier / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(UserError, match=r"did not write .*holiday\.jpg"):
        train(replace(cfg, train={"max_steps": 4}), store, earlier, show_progress=False)
    assert sorted(path.name for path in earlier.iterdir()) == ["holiday.jpg", "last.pt"]


def test_segmenter_stage_never_deletes_or_writes_into_a_folder_of_the_users(store, tmp_path, monkeypatch, capsys):
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "segmenter.pt").write_bytes(b"my own segmenter")
    cfg = replace(stage_config(store), segmenter={"checkpoint_dir": "models"}, evaluate={"segmenter": "none"})
    stderr = run_stage_in("segmenter", cfg, tmp_path, monkeypatch, capsys)
    assert stderr.count("\n") == 1 and "segmenter.checkpoint_dir names an existing folder" in stderr
    assert (mine / "segmenter.pt").read_bytes() == b"my own segmenter"
    assert sorted(path.name for path in mine.iterdir()) == ["segmenter.pt"]
    # Its own folder, also as an earlier version wrote it (no marker), is used as before.
    (mine / "segmenter.pt").unlink()
    (mine / "segmenter.json").write_text(json.dumps({"trained": False}) + "\n")
    monkeypatch.chdir(tmp_path)
    segmenter_stage.run(cfg, tmp_path)
    assert json.loads((mine / "segmenter.json").read_text())["trained"] is False


# ---- output folders that cannot be written: one line, before the work ---------------------


def refuse_writes_into(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write probe fails in folders called ``name``, as in a read-only folder for a non-root
    user (root writes into read-only folders, so the tests cannot rely on permissions)."""
    probe = io._probe_write

    def refusing(folder: Path) -> None:
        if folder.name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        probe(folder)

    monkeypatch.setattr(io, "_probe_write", refusing)


@pytest.mark.parametrize(("name", "work"), [("train", "train"), ("generate", "generate"),
                                            ("evaluate", "evaluate_generated"), ("report", "read_json_input")])
def test_an_unwritable_reports_folder_fails_before_the_work(name, work, store, tmp_path, monkeypatch, capsys):
    (tmp_path / "reports").mkdir()
    refuse_writes_into("reports", monkeypatch)
    monkeypatch.setattr(f"stages.{name}.{work}", no_work)
    stderr = run_stage_in(name, stage_config(store), tmp_path, monkeypatch, capsys)
    assert stderr.startswith(f"{name}: {tmp_path / 'reports'}: the ")
    assert stderr.endswith(" cannot be written here: Permission denied. Make it writable (the folder is not a "
                           "setting)\n")
    assert stderr.count("\n") == 1


def test_train_checks_its_checkpoint_folder_and_reports_before_training(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("stages.train.train", no_work)
    (tmp_path / "checkpoints" / "train").mkdir(parents=True)
    refuse_writes_into("train", monkeypatch)
    stderr = run_stage_in("train", stage_config(store), tmp_path, monkeypatch, capsys)
    assert stderr == (f"train: {tmp_path / 'checkpoints' / 'train'}: the checkpoints cannot be written here: "
                      "Permission denied. Make it writable, or set train.checkpoint_dir to a folder you can write to\n")
    # A file where a folder is expected (no permissions involved: this holds for root too).
    monkeypatch.undo()
    monkeypatch.setattr("stages.train.train", no_work)
    (tmp_path / "reports").write_text("not a folder")
    stderr = run_stage_in("train", stage_config(store), tmp_path, monkeypatch, capsys)
    assert stderr == (f"train: {tmp_path / 'reports'}: the stage's reports (reports/train.json) cannot be written "
                      "here: it is a file, not a folder. Move it away (the folder is not a setting)\n")


def test_generate_checks_its_output_folder_before_generating(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("stages.generate.generate", no_work)
    (tmp_path / "outputs").write_text("not a folder")
    stderr = run_stage_in("generate", stage_config(store), tmp_path, monkeypatch, capsys)
    assert stderr == (f"generate: {tmp_path / 'outputs'}: the generated images cannot be written here (for "
                      f"{tmp_path / 'outputs' / 'generated'}): it is a file, not a folder. Move it away, or set "
                      "evaluate.output_dir to a folder you can write to\n")


# ---- a full disk while training ------------------------------------------------------------


def test_a_full_disk_while_training_is_one_line_and_keeps_the_last_checkpoint(store, tmp_path, monkeypatch, capsys):
    """The second checkpoint save runs out of space the way torch reports it (its zip writer's
    "enforce fail at inline_container.cc", caused by the file's OSError)."""
    saves = {"count": 0}
    real_save = torch.save

    def disk_fills_up(payload, file):
        saves["count"] += 1
        if saves["count"] == 1:
            return real_save(payload, file)
        file.write(b"PK\x03\x04 partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(ckpt.torch, "save", disk_fills_up)
    cfg = stage_config(store, checkpoint_every=2, max_steps=4)
    stderr = run_stage_in("train", cfg, tmp_path, monkeypatch, capsys)
    last = tmp_path / "checkpoints" / "train" / "last.pt"
    assert "Traceback" not in stderr and "inline_container" not in stderr
    assert stderr.rstrip("\n").split("\n")[-1] == (  # after the progress bar
        f"train: {last}: could not write the checkpoint (No space left on device); the previous last.pt is kept "
        "unchanged. Free space on that disk (or raise the file size limit) and run again: training resumes from "
        "the kept last.pt")
    monkeypatch.undo()
    assert ckpt.load_checkpoint(last)["progress"]["step"] == 2
    assert not list(last.parent.glob(".*.tmp"))
