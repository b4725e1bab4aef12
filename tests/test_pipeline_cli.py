"""The pipeline's gaugan commands: classes, preset, import-checkpoint, ui (link-experiments: test_e2e_dvc)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gaugan.config import GeneratorConfig
from gaugan.data.registry import published_spec
from gaugan.models import build_generator
from gaugan.models.loading import load_generator
from pipeline.cli import app

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


def _mlflow_accepts(command_line: list[str]) -> dict:
    """Parse ``python -m mlflow ui ...`` with MLflow's own command definition, without starting it."""
    import click
    from mlflow.cli import cli

    assert command_line[:4] == [sys.executable, "-m", "mlflow", "ui"]
    ui = cli.get_command(click.Context(cli), "ui")
    return ui.make_context("ui", command_line[4:]).params


def test_ui_serves_the_configured_tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    database = tmp_path / "elsewhere.db"
    params["tracking"]["tracking_uri"] = f"sqlite:///{database}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr(subprocess, "call", lambda command_line: started.append(command_line) or 0)

    result = runner.invoke(app, ["ui", "--port", "5123"])
    assert result.exit_code == 0, result.output
    assert f"MLflow UI on sqlite:///{database} at http://127.0.0.1:5123" in result.output
    options = _mlflow_accepts(started[0])
    assert options["backend_store_uri"] == f"sqlite:///{database}"
    assert options["default_artifact_root"] == (tmp_path / "mlartifacts").resolve().as_uri()
    assert (options["host"], options["port"]) == ("127.0.0.1", 5123)

    # A tracking server is opened in the browser, not wrapped in another UI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    params["tracking"]["tracking_uri"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["ui"])
    assert result.exit_code == 0 and "open http://tracking.example:5000" in result.output and len(started) == 1
