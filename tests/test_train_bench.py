"""The training benchmark: `gaugan bench` JSON, the reference schedule, the bench stage."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gaugan.config import replace
from pipeline.cli import app
from stages import bench as bench_stage
from tests.support import ROOT, tiny_config

TINY = ["-S", "data.builtin.size=32", "-S", "generator.ngf=8", "-S", "generator.spade_hidden=16",
        "-S", "discriminator.ndf=8", "-S", "train.batch_size=2"]


# Every key `gaugan bench` writes, with its type: the contract that reports/bench*.json readers
# (README tables, scripts/gpu_bench.sh) rely on.
RESULT_KEYS = {
    "images_per_s": float, "steps_per_s": float, "step_s": float, "process_cpu_s_per_step": float,
    "peak_memory_bytes": int, "peak_memory_kind": str, "device": str, "device_name": str, "torch_version": str,
    "num_threads": int, "schedule": str, "precision": str, "channels_last": bool, "label_conv": str, "compile": str,
    "cuda_graph": bool, "ema": bool, "batch_size": int, "image_size": list, "label_channels": int, "steps": int, "warmup": int,
    "warmup_step_s": list, "losses_finite": bool, "load_average_before": list, "load_average": list,
    "cpu_count": int, "params_file": str, "config_overrides": list,
}
FLOP_KEYS = {"flops_per_step": int, "onehot_equivalent_flops_per_step": int, "achieved_flops_per_s": float,
             "peak_bf16_flops_per_s": type(None), "mfu": type(None), "mfu_onehot_equivalent": type(None)}


def test_bench_command_prints_one_json_object_with_the_documented_keys(tmp_path):
    output = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--params", str(ROOT / "params.yaml"), *TINY, "--steps", "2",
                                      "--warmup", "1", "--device", "cpu", "--output", str(output),
                                      "-S", "train.label_conv=lookup"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output.strip().splitlines()[-1])
    assert printed == json.loads(output.read_text())
    assert {key: type(value) for key, value in printed.items()} == RESULT_KEYS | FLOP_KEYS
    assert printed["images_per_s"] > 0 and printed["peak_memory_bytes"] > 0 and "ru_maxrss" in printed["peak_memory_kind"]
    assert printed["device"] == "cpu" and len(printed["warmup_step_s"]) == printed["warmup"] == 1
    assert printed["config_overrides"] == [*TINY[1::2], "train.label_conv=lookup"]
    assert printed["schedule"] == "ours" and printed["losses_finite"] and printed["label_conv"] == "lookup"
    assert printed["label_channels"] == 11 and printed["image_size"] == [32, 32]
    # The lookup does less work than the convolutions over the one-hot map it replaces.
    assert 0 < printed["flops_per_step"] < printed["onehot_equivalent_flops_per_step"]

    reference = CliRunner().invoke(app, ["bench", "--params", str(ROOT / "params.yaml"), *TINY, "--steps", "1",
                                         "--warmup", "0", "--reference-schedule"])
    assert reference.exit_code == 0, reference.output
    printed = json.loads(reference.output.strip().splitlines()[-1])
    assert {key: type(value) for key, value in printed.items()} == RESULT_KEYS | FLOP_KEYS
    assert (printed["schedule"], printed["channels_last"], printed["label_conv"], printed["compile"]) == (
        "reference", False, "dense", "none")
    assert printed["flops_per_step"] == printed["onehot_equivalent_flops_per_step"]


def test_flop_count_matches_a_hand_count_for_a_convolution_and_a_lookup():
    """2 FLOPs per multiply-add of a convolution (torch's counter) and 1 per added lookup entry
    and channel (ours), forward and backward, counted by hand."""
    import torch
    import torch.nn.functional as F

    from gaugan.data.semantic import semantic_labels
    from gaugan.models.onehot_conv import label_bags, onehot_conv
    from gaugan.train.bench import step_flops

    batch, height, width, hidden = 2, 5, 6, 7
    labels = semantic_labels(torch.randint(0, 4, (batch, height, width)), 4, torch.randint(0, 2, (batch, height, width)))
    weight = torch.randn(hidden, labels.num_channels, 3, 3, requires_grad=True)
    pixels = batch * height * width

    def conv_forward_backward():
        F.conv2d(labels.dense(), weight, padding=1).sum().backward()

    # forward, plus the weight gradient (the one-hot input needs none): 2 * (C * 3 * 3) * hidden per pixel each
    assert step_flops(conv_forward_backward) == 2 * (2 * labels.num_channels * 9 * hidden * pixels)
    bags = label_bags(labels, 3)

    def lookup_forward_backward():
        onehot_conv(bags, weight, None).sum().backward()

    # 9 offsets + the bias entry per pixel, one add per channel, forward and backward
    assert step_flops(lookup_forward_backward) == 2 * (10 * hidden * pixels)


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
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child processes' torch threads (see conftest.py)
    cfg = replace(tiny_config(), train={"max_steps": None})
    bench_stage.run(cfg, tmp_path)
    report = json.loads((tmp_path / "reports" / "bench.json").read_text())
    assert report["ours"]["schedule"] == "ours" and report["reference"]["schedule"] == "reference"
    runs = report["runs_images_per_s"]
    assert report["repeats"] == 2 and len(runs["ours"]) == len(runs["reference"]) == len(report["paired_speedups"]) == 2
    assert report["ours"]["images_per_s"] == min(runs["ours"])  # the lower middle of two runs
    assert report["paired_speedups"][1] == runs["ours"][1] / runs["reference"][1]


def test_bench_times_the_very_step_that_training_runs(tmp_path, monkeypatch):
    """`gaugan bench` and stages.train build their step in one place (gaugan.train.setup): the
    same TrainingStep, its EMA update included (before, the benchmark copied the loop's setup
    and skipped the EMA); the reference schedule keeps none, as the official SPADE code."""
    import torch

    from gaugan.data.registry import resolve_dataset
    from gaugan.train import setup
    from gaugan.train.bench import BenchSettings, run_benchmark
    from gaugan.train.loop import train
    from tests.support import make_store

    steps = []
    step_call = setup.TrainingStep.__call__

    def recording(step, batch):
        steps.append(step)
        return step_call(step, batch)

    monkeypatch.setattr(setup.TrainingStep, "__call__", recording)
    cfg = tiny_config(use_ema=True, ema_statistics_batches=0, max_steps=2)
    train(cfg, make_store(tmp_path), tmp_path / "checkpoints", show_progress=False)
    assert len(steps) == 2 and steps[0] is steps[1] and steps[0].ema is not None

    steps.clear()
    spec, cpu = resolve_dataset(cfg.data), torch.device("cpu")
    result = run_benchmark(cfg, spec, cpu, BenchSettings(steps=2, warmup=1, count_flops=False))
    assert result["ema"] and len(steps) == 3 and all(step is steps[0] for step in steps)
    untrained = setup.build_training(cfg, spec, setup.single_process(cpu)).G.state_dict()
    averaged = steps[0].ema.module.state_dict()
    assert any(not torch.equal(averaged[name], untrained[name]) for name in untrained)  # the EMA followed G

    steps.clear()
    reference = run_benchmark(cfg, spec, cpu, BenchSettings(steps=1, warmup=0, reference_schedule=True,
                                                            count_flops=False))
    assert not reference["ema"] and len(steps) == 1 and steps[0].ema is None
