"""scripts/gpu_bench.sh, the prepared GPU benchmark: its dry run on the CPU, its report, its
configurations against params.yaml, and its message when a module is missing."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from gaugan.config import Config, replace
from pipeline.params import load_config
from tests.support import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_configuration_is_params_yaml_for_everything_a_step_depends_on():
    gpu_bench = load_script("gpu_bench")
    written_out = replace(Config(), **gpu_bench.BUILTIN)
    shipped = load_config(ROOT / "params.yaml")
    for section in ("generator", "discriminator", "encoder", "loss"):
        assert getattr(written_out, section) == getattr(shipped, section), section
    step_keys = ("batch_size", "use_ema", "ema_decay", "precision", "channels_last", "compile", "cuda_graph", "label_conv", "cudnn_benchmark")
    for key in step_keys:
        assert getattr(written_out.train, key) == getattr(shipped.train, key), f"train.{key}"
    assert written_out.optim.fused == shipped.optim.fused and written_out.optim.use_ttur == shipped.optim.use_ttur
    assert (written_out.data.dataset, written_out.data.builtin.size) == (shipped.data.dataset, shipped.data.builtin.size)
    assert dataclasses.asdict(replace(Config(), **gpu_bench.ADE20K).generator)["spade_hidden"] == 128


def test_dry_run_on_the_cpu_writes_the_report_and_its_copy(tmp_path):
    """A subset of the plan (each measurement forks a process: about 30 s on the loaded 2-core CPU)."""
    output, copies = tmp_path / "reports" / "bench_gpu.json", tmp_path / "out"
    names = ["builtin_eager", "builtin_cuda_graph", "ade20k_reference_b16", "ade20k_lookup_check"]
    environment = {**os.environ, "OUT": str(copies), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [str(ROOT / "scripts" / "gpu_bench.sh"), "--device", "cpu", "--tiny", "--output", str(output), "--only", *names],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert json.loads((copies / "bench_gpu.json").read_text()) == report
    measurements = report["measurements"]
    assert list(measurements) == names
    assert measurements["builtin_cuda_graph"] == {"status": "skipped", "reason": "needs a CUDA device"}
    for name in ("builtin_eager", "ade20k_reference_b16", "ade20k_lookup_check"):
        assert measurements[name]["status"] == "ok", measurements[name]
    eager = measurements["builtin_eager"]["result"]
    assert eager["schedule"] == "ours" and eager["image_size"] == [32, 32] and eager["steps_per_s"] > 0
    reference = measurements["ade20k_reference_b16"]["result"]
    assert reference["schedule"] == "reference" and reference["label_channels"] == 151
    check = measurements["ade20k_lookup_check"]["result"]
    assert check["other_train_settings"] == {"label_conv": "lookup"} and check["max_relative_difference"] < 1e-3
    assert report["summary"]["ade20k_b16_reference_images_per_s"] == reference["images_per_s"]
    assert report["environment"]["torch_version"] and report["vgg_weights"]
    assert "gpu_bench: builtin_eager:" in completed.stdout


def test_missing_modules_are_named_before_anything_runs(monkeypatch, capsys):
    gpu_bench = load_script("gpu_bench")
    monkeypatch.setattr(gpu_bench, "REQUIRED_MODULES", ("torch", "no_such_module_here"))
    assert gpu_bench.main(["--device", "cpu", "--tiny"]) == 2
    assert "missing Python modules: no_such_module_here" in capsys.readouterr().err
