"""The training benchmark: `gaugan bench` JSON, the reference schedule, the bench stage."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli import app
from gaugan.config import replace
from stages import bench as bench_stage
from tests.test_train_loop import ROOT, one_thread, tiny_train_config  # noqa: F401 (fixture)

TINY = ["-S", "data.builtin.size=32", "-S", "generator.ngf=8", "-S", "generator.spade_hidden=16",
        "-S", "discriminator.ndf=8", "-S", "train.batch_size=2"]


def test_bench_command_prints_one_json_object(tmp_path, one_thread):
    output = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--params", str(ROOT / "params.yaml"), *TINY, "--steps", "2",
                                      "--warmup", "1", "--device", "cpu", "--output", str(output)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output.strip().splitlines()[-1])
    assert printed == json.loads(output.read_text())
    assert printed["images_per_s"] > 0 and printed["step_s"] > 0
    assert printed["images_per_s"] == printed["batch_size"] / printed["step_s"]
    assert printed["peak_memory_bytes"] > 0 and "ru_maxrss" in printed["peak_memory_kind"]
    assert printed["device"] == "cpu" and printed["torch_version"] and len(printed["load_average"]) == 3
    assert printed["config_overrides"] == TINY[1::2]
    assert printed["schedule"] == "ours" and printed["losses_finite"]
    assert printed["label_channels"] == 11 and printed["image_size"] == [32, 32]
    assert printed["flops_per_step"] > 0 and printed["mfu"] is None  # MFU needs a GPU's peak

    reference = CliRunner().invoke(app, ["bench", "--params", str(ROOT / "params.yaml"), *TINY, "--steps", "1",
                                         "--warmup", "0", "--reference-schedule", "--no-flops"])
    assert reference.exit_code == 0, reference.output
    printed = json.loads(reference.output.strip().splitlines()[-1])
    assert printed["schedule"] == "reference" and printed["channels_last"] is False and "flops_per_step" not in printed


def test_bench_command_rejects_bad_input_clearly():
    result = CliRunner().invoke(app, ["bench", "--params", str(ROOT / "params.yaml"), "-S", "train.batch_size=0"])
    assert result.exit_code == 2 and "train.batch_size" in result.output
    result = CliRunner().invoke(app, ["bench", "--params", str(ROOT / "params.yaml"), "-S", "data.dataset=custom"])
    assert result.exit_code == 2 and "data.custom.num_classes" in result.output
    result = CliRunner().invoke(app, ["bench", "--params", str(ROOT / "params.yaml"), "--steps", "0"])
    assert result.exit_code == 2 and "--steps" in result.output
    result = CliRunner().invoke(app, ["bench", "--params", str(ROOT / "params.yaml"), "--repeats", "3"])
    assert result.exit_code == 2 and "--repeats" in result.output and "--compare" in result.output


def test_bench_stage_compares_both_schedules_in_their_own_processes(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(bench_stage, "NUM_STEPS", 1)
    monkeypatch.setattr(bench_stage, "NUM_WARMUP", 0)
    monkeypatch.setattr(bench_stage, "NUM_REPEATS", 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child processes' torch threads (see one_thread)
    cfg = replace(tiny_train_config(), train={"max_steps": None})
    bench_stage.run(cfg, tmp_path)
    report = json.loads((tmp_path / "reports" / "bench.json").read_text())
    assert report["ours"]["schedule"] == "ours" and report["reference"]["schedule"] == "reference"
    assert report["speedup_images_per_s"] == report["ours"]["images_per_s"] / report["reference"]["images_per_s"]
    runs = report["runs_images_per_s"]
    assert report["repeats"] == 2 and len(runs["ours"]) == len(runs["reference"]) == len(report["paired_speedups"]) == 2
    assert report["ours"]["images_per_s"] == min(runs["ours"])  # the lower middle of two runs
    assert report["paired_speedups"][1] == runs["ours"][1] / runs["reference"][1]
