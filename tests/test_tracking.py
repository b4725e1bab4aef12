"""MLflow tracking (REFERENCE.md section 6) through the train stage, on a temporary sqlite store."""

from __future__ import annotations

import hashlib
import json

import pytest

from gaugan.config import replace
from pipeline import tracking
from stages import train as train_stage
from tests.test_train_loop import make_store, one_thread, tiny_train_config  # noqa: F401 (fixture)


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    cfg = tiny_train_config()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking.resolve_tracking_uri(cfg, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    # Inside a queued experiment the stage runs in a temporary copy: the store stays at the real root.
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "real"))
    assert tracking.resolve_tracking_uri(cfg, tmp_path / "copy") == f"sqlite:///{(tmp_path / 'real').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert tracking.resolve_tracking_uri(cfg, tmp_path) == "sqlite:////elsewhere/m.db"
    explicit = replace(cfg, tracking={"tracking_uri": "sqlite:////explicit.db"})
    assert tracking.resolve_tracking_uri(explicit, tmp_path) == "sqlite:////explicit.db"


def test_train_stage_logs_a_complete_run_and_resumes_into_it(tmp_path, monkeypatch, one_thread):
    root = tmp_path / "repo"
    make_store(root)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in ("MLFLOW_TRACKING_URI", "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    cfg = tiny_train_config(max_steps=2, log_every=1, sample_every=2, checkpoint_every=2)
    cfg = replace(cfg, tracking={"enabled": True, "tracking_uri": uri, "experiment_name": "tiny"})

    train_stage.run(cfg, root)

    run_info = json.loads((root / cfg.train.checkpoint_dir / "run.json").read_text())
    assert run_info["tracking_uri"] == uri
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.artifact_location == (root / "mlartifacts" / "tiny").resolve().as_uri()
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-exp"
    params = run.data.params
    assert params["optim.lr"] == "0.0002" and params["generator.ngf"] == "8" and params["train.batch_size"] == "2"
    tags = run.data.tags
    manifest = root / cfg.data.processed_dir / "manifest.json"
    assert tags["dvc.exp_name"] == "tiny-exp" and tags["dvc.baseline_rev"] == "abc123"
    assert tags["dvc.stage"] == "train"
    assert tags["data.manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    for key in ("loss/g_gan", "loss/g_feat", "loss/d_real", "loss/d_fake", "lr/g", "lr/d",
                "perf/images_per_s", "perf/peak_memory_bytes"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "samples"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/generator.pt"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/step_0000002.png"]
    assert json.loads((root / "reports" / "train.json").read_text())["step"] == 2

    # Continue training (a larger max_steps, another log_every): the same run goes on.
    more = replace(cfg, train={"max_steps": 4, "log_every": 2})
    train_stage.run(more, root)
    assert json.loads((root / cfg.train.checkpoint_dir / "run.json").read_text())["run_id"] == run_info["run_id"]
    history = client.get_metric_history(run.info.run_id, "loss/g_gan")
    assert [m.step for m in history] == [1, 2, 4]
    resumed = client.get_run(run_info["run_id"])
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["param_changed_on_resume.train.log_every"] == "2"
    assert len(client.search_runs([experiment.experiment_id])) == 1

    # Tracking off: training still runs, and no stale run.json points later stages at the old
    # run; the file exists (a declared DVC dependency of evaluate/report) with a null run id.
    off = replace(more, train={"max_steps": 5}, tracking={"enabled": False})
    train_stage.run(off, root)
    run_file = root / cfg.train.checkpoint_dir / "run.json"
    assert json.loads(run_file.read_text())["run_id"] is None
    assert tracking.read_run_file(run_file) is None
    assert json.loads((root / "reports" / "train.json").read_text())["step"] == 5


def test_a_failed_training_marks_the_run_failed(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = replace(tiny_train_config(), tracking={"enabled": True, "tracking_uri": uri})
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.open_run(cfg, tmp_path, "train") as tracker:
            run_id = tracker.run_id
            raise RuntimeError("boom")
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    with tracking.open_run(replace(cfg, tracking={"enabled": False}), tmp_path, "train") as tracker:
        assert isinstance(tracker, tracking.NullTracker) and tracker.run_id is None
        tracker.log_metrics({"x": 1.0}, step=1)  # accepted, does nothing


def test_rerun_of_a_finished_training_retrains_instead_of_keeping_stale_weights(tmp_path, capsys, one_thread):
    """DVC re-runs train only when an input changed: a finished run with no steps left starts afresh."""
    root = tmp_path / "repo"
    make_store(root)
    cfg = replace(tiny_train_config(max_steps=2, checkpoint_every=2), tracking={"enabled": False})
    train_stage.run(cfg, root)
    assert "starting afresh" not in capsys.readouterr().out
    train_stage.run(cfg, root)
    assert "starting afresh" in capsys.readouterr().out
    assert json.loads((root / "reports" / "train.json").read_text())["step"] == 2
    # Steps left (a larger max_steps): the finished run is continued, not restarted.
    train_stage.run(replace(cfg, train={"max_steps": 3}), root)
    assert "starting afresh" not in capsys.readouterr().out
    assert json.loads((root / "reports" / "train.json").read_text())["step"] == 3
