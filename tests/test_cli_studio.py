"""``gaugan studio`` and ``gaugan bench-studio`` in-process: loading, binding, warnings, errors, the benchmark JSON."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from starlette.testclient import TestClient
from typer.testing import CliRunner

import gaugan.studio.server
from pipeline.cli import app
from tests.support import landscapes_spec, write_checkpoint

runner = CliRunner()


class FakeServer:
    """Stands in for uvicorn: records the app and the sockets instead of serving forever."""

    def __init__(self, app) -> None:
        self.app = app
        self.sockets = None

    def run(self, sockets) -> None:
        self.sockets = sockets
        for listener in sockets:
            listener.close()


@pytest.fixture
def served(monkeypatch):
    servers: list[FakeServer] = []

    def make_server(app, log_level="warning"):
        servers.append(FakeServer(app))
        return servers[-1]

    monkeypatch.setattr(gaugan.studio.server, "make_server", make_server)
    return servers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("cli") / "generator.pt", landscapes_spec(64))


def studio(*args: str):
    return runner.invoke(app, ["studio", "--device", "cpu", "--port", "0", *args])


def test_studio_prints_the_url_and_serves_the_checkpoint_on_loopback(served, checkpoint):
    result = studio("--checkpoint", str(checkpoint))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("GauGAN studio: http://127.0.0.1:") and "Ctrl-C" in result.stdout
    assert "warning" not in result.stderr
    (server,) = served
    assert server.sockets[0].family == socket.AF_INET
    client = TestClient(server.app, base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    assert info["dataset"] == "landscapes" and info["checkpoint"]["source"] == "gaugan"
    other_name = TestClient(server.app, base_url="http://attacker.example").get("/api/info")
    assert other_name.status_code == 400  # a loopback studio answers only to loopback names


def test_serving_beyond_loopback_needs_allowed_host(served, checkpoint):
    """--host 0.0.0.0 alone refuses to start; with --allowed-host it answers to those names and loopback only."""
    refused = studio("--checkpoint", str(checkpoint), "--host", "0.0.0.0")
    assert refused.exit_code == 2 and not served
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.output
    assert "--host 0.0.0.0: serves the studio beyond this computer" in refused.stderr
    assert "there is no login" in refused.stderr and "--allowed-host" in refused.stderr
    result = studio("--checkpoint", str(checkpoint), "--host", "0.0.0.0", "--allowed-host", "192.168.1.5",
                    "--allowed-host", "Studio.LAN")
    assert result.exit_code == 0, result.output
    assert "warning: --host 0.0.0.0" in result.stderr and "anyone who can reach port" in result.stderr
    assert "127.0.0.1, localhost, ::1, 192.168.1.5, studio.lan" in result.stderr
    assert result.stdout.startswith("GauGAN studio: http://192.168.1.5:")
    for name in ("192.168.1.5", "studio.lan", "127.0.0.1"):
        assert TestClient(served[0].app, base_url=f"http://{name}").get("/api/info").status_code == 200, name
    rebound = TestClient(served[0].app, base_url="http://attacker.example").get("/api/info")
    assert rebound.status_code == 400 and "--allowed-host" in rebound.json()["error"]


def test_studio_serves_an_official_generator_with_its_dataset(served, checkpoint, tmp_path):
    official = tmp_path / "latest_net_G.pth"
    torch.save(torch.load(checkpoint, weights_only=True)["models"]["G"], official)
    result = studio("--checkpoint", str(official), "--dataset", "landscapes")
    assert result.exit_code == 0, result.output
    info = TestClient(served[0].app, base_url="http://127.0.0.1").get("/api/info").json()
    assert info["checkpoint"]["source"] == "official" and info["image_size"] == {"height": 64, "width": 64}
    without_dataset = studio("--checkpoint", str(official))
    assert without_dataset.exit_code == 2 and "name the dataset" in without_dataset.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ([], ["checkpoints/train/generator.pt", "no trained generator yet", "dvc repro", "--checkpoint"]),
        (["--checkpoint", "CHECKPOINT", "--dataset", "ade20k"], ["trained on dataset 'landscapes'", "--dataset is 'ade20k'"]),
        (["--checkpoint", "CHECKPOINT", "--dataset", "mnist"], ["--dataset", "'mnist'"]),
        (["--checkpoint", "nothing.pt"], ["nothing.pt", "checkpoint file not found"]),
        (["--checkpoint", "CHECKPOINT", "--device", "cuda"], ["--device: got 'cuda'", "no CUDA device"]),
    ],
)
def test_studio_errors_are_one_line(served, checkpoint, tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    args = [str(checkpoint) if arg == "CHECKPOINT" else arg for arg in args]
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    result = studio(*args)
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert "Traceback" not in result.output and not served


def test_studio_reports_a_port_in_use(served, checkpoint):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        result = runner.invoke(app, ["studio", "--checkpoint", str(checkpoint), "--device", "cpu", "--port", port])
    assert result.exit_code == 2
    assert f"--port {port}: cannot listen there" in result.stderr and "choose another --port" in result.stderr


def test_bench_studio_writes_latencies_and_the_machine(tmp_path):
    output = tmp_path / "bench_studio.json"
    result = runner.invoke(app, ["bench-studio", "--no-ade20k", "--requests", "3", "--warmup", "1", "--repeats", "2",
                                 "--checkpoint", str(tmp_path / "absent.pt"), "--output", str(output)])
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    builtin = report["configurations"]["builtin_64"]
    assert builtin["image_size"] == [64, 64] and builtin["label_channels"] == 11
    assert builtin["generator"]["ngf"] == 16  # params.yaml's built-in configuration
    assert builtin["weights"].startswith("random initialisation") and len(builtin["runs"]) == 2
    assert all(len(run["latencies_ms"]) == 3 for run in builtin["runs"])
    assert builtin["median_ms"] in [run["median_ms"] for run in builtin["runs"]]
    assert report["machine"]["torch_version"] == torch.__version__ and report["machine"]["cpu_model"]
    assert report["gpu"] == "not measured: this run used the CPU"
    assert "median" in result.stdout and str(output) in result.stdout
