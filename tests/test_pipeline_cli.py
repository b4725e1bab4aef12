"""The pipeline's gaugan commands: classes, preset, import-checkpoint, ui (link-experiments: test_e2e_dvc)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from gaugan.config import GeneratorConfig
from gaugan.data.registry import published_spec
from gaugan.models import build_generator
from gaugan.models.loading import load_generator

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_classes_prints_index_colour_and_name() -> None:
    result = runner.invoke(app, ["classes", "--dataset", "landscapes"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "landscapes: 10 classes, + 1 instance edge channel -> 11 label channels"
    assert lines[1] == "   0  #78aaf0  sky" and len(lines) == 11
    coco = runner.invoke(app, ["classes", "--dataset", "coco"]).output.splitlines()
    assert coco[0].startswith("coco: 182 classes, index 182 = don't care") and coco[-1].endswith("dontcare")


def test_classes_errors_name_the_option() -> None:
    result = runner.invoke(app, ["classes", "--dataset", "imagenet"])
    assert result.exit_code == 2 and "data.dataset: got 'imagenet'" in result.output
    result = runner.invoke(app, ["classes", "--dataset", "custom"])
    assert result.exit_code == 2 and "--num-classes" in result.output
    result = runner.invoke(app, ["classes", "--dataset", "custom", "--num-classes", "3"])
    assert result.exit_code == 0 and result.output.splitlines()[-1].endswith("dontcare")


def test_preset_prints_overrides_that_dvc_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["preset", "gpu-cityscapes"])
    assert result.exit_code == 0, result.output
    tokens = result.output.split()
    assert tokens[::2] == ["-S"] * (len(tokens) // 2)
    assert "data.dataset=cityscapes" in tokens and "generator.num_upsampling_layers=more" in tokens
    result = runner.invoke(app, ["preset", "gpu-mnist"])
    assert result.exit_code == 2 and "available presets" in result.output


def test_import_checkpoint_round_trip(tmp_path: Path) -> None:
    spec = published_spec("facades")
    config = dataclasses.replace(GeneratorConfig(), ngf=8, spade_hidden=16, param_free_norm="instance")
    official = build_generator(config, spec.label_channels, spec.image_size).eval()
    torch.save(official.state_dict(), tmp_path / "latest_net_G.pth")
    output = tmp_path / "ours" / "generator.pt"

    result = runner.invoke(app, ["import-checkpoint", str(tmp_path / "latest_net_G.pth"), "--dataset", "facades",
                                 "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "facades, spade ngf 8, normal upsampling, instance norm, no VAE" in result.output
    loaded = load_generator(output)  # no dataset needed any more: the file carries it
    assert loaded.source == "gaugan" and loaded.spec == spec and loaded.config == config
    seg = torch.zeros(1, spec.label_channels, *spec.image_size)
    seg[:, 3] = 1.0
    with torch.no_grad():
        assert torch.equal(loaded.generator(seg), official(seg))

    wrong = runner.invoke(app, ["import-checkpoint", str(tmp_path / "latest_net_G.pth"), "--dataset", "coco",
                                "--output", str(tmp_path / "coco.pt")])
    assert wrong.exit_code == 2 and "13 label channels" in wrong.output and not (tmp_path / "coco.pt").exists()
    again = runner.invoke(app, ["import-checkpoint", str(output), "--dataset", "facades", "--output", str(tmp_path / "x.pt")])
    assert again.exit_code == 2 and "already one of our checkpoints" in again.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_serves_the_configured_tracking_store(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    database = tmp_path / "elsewhere.db"
    params["tracking"]["tracking_uri"] = f"sqlite:///{database}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    port = _free_port()
    gaugan = shutil.which("gaugan", path=str(Path(sys.executable).parent)) or "gaugan"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    process = subprocess.Popen([gaugan, "ui", "--port", str(port)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
                with urllib.request.urlopen(url, timeout=5) as response:
                    experiments = json.load(response)["experiments"]
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not answer within 120 s"
                time.sleep(1)
        assert [e["name"] for e in experiments] == ["Default"] and database.is_file()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
