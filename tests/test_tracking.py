"""MLflow tracking (docs/SPADE.md section 6) through the train stage, on a temporary sqlite store."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import yaml

from gaugan.config import replace
from pipeline import tracking
from pipeline.tracking_store import BackgroundWriter, TrackingError
from stages import train as train_stage
from tests.support import ROOT, make_store, stage_environment, tiny_config


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    cfg = tiny_config()
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


def test_a_new_experiment_keeps_its_artifacts_at_the_root_or_where_the_server_does(tmp_path):
    """Processes reporting to one tracking server may run on other machines (a SLURM sweep):
    their artifacts go where the server keeps them, not into one machine's folder."""

    class Client:
        def __init__(self):
            self.created = {}

        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, name, artifact_location=None):
            self.created[name] = artifact_location
            return "7"

    client = Client()
    assert tracking._experiment_id(client, "local", tmp_path, f"sqlite:///{tmp_path}/mlflow.db") == "7"
    assert tracking._experiment_id(client, "served", tmp_path, "http://mlflow.cluster:5000") == "7"
    assert client.created == {"local": (tmp_path.resolve() / "mlartifacts" / "local").as_uri(), "served": None}


def test_train_stage_logs_a_complete_run_and_resumes_into_it(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    make_store(root)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in ("MLFLOW_TRACKING_URI", "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    cfg = tiny_config(max_steps=2, log_every=1, sample_every=2, checkpoint_every=2)
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
    cfg = replace(tiny_config(), tracking={"enabled": True, "tracking_uri": uri})
    with pytest.raises(RuntimeError, match="boom"), tracking.open_run(cfg, tmp_path, "train") as tracker:
        run_id = tracker.run_id
        raise RuntimeError("boom")
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    with tracking.open_run(replace(cfg, tracking={"enabled": False}), tmp_path, "train") as tracker:
        assert isinstance(tracker, tracking.NullTracker) and tracker.run_id is None
        tracker.log_metrics({"x": 1.0}, step=1)  # accepted, does nothing


def test_rerun_of_a_finished_training_retrains_instead_of_keeping_stale_weights(tmp_path, capsys):
    """DVC re-runs train only when an input changed: a finished run with no steps left starts afresh."""
    root = tmp_path / "repo"
    make_store(root)
    cfg = replace(tiny_config(max_steps=2, checkpoint_every=2), tracking={"enabled": False})
    train_stage.run(cfg, root)
    assert "starting afresh" not in capsys.readouterr().out
    train_stage.run(cfg, root)
    assert "starting afresh" in capsys.readouterr().out
    assert json.loads((root / "reports" / "train.json").read_text())["step"] == 2
    # Steps left (a larger max_steps): the finished run is continued, not restarted.
    train_stage.run(replace(cfg, train={"max_steps": 3}), root)
    assert "starting afresh" not in capsys.readouterr().out
    assert json.loads((root / "reports" / "train.json").read_text())["step"] == 3


# ---- a store that misbehaves: unreachable, unwritable, locked; every exit path's status ----


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def _tracked(cfg, uri: str, name: str = "tiny"):
    return replace(cfg, tracking={"enabled": True, "tracking_uri": uri, "experiment_name": name})


def test_an_unreachable_server_fails_within_seconds_naming_it(tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{_closed_port()}"
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)  # MLflow's defaults: 7 retries, minutes
    started = time.monotonic()
    expected = rf"MLflow tracking server {uri} does not answer .*tracking.enabled: false"
    with pytest.raises(TrackingError, match=expected), tracking.open_run(_tracked(tiny_config(), uri), tmp_path, "t"):
        pass
    assert time.monotonic() - started < 20


def test_an_unusable_sqlite_location_is_named(tmp_path):
    (tmp_path / "a_file").write_text("")
    cfg = tiny_config()
    not_a_folder = _tracked(cfg, f"sqlite:///{tmp_path}/a_file/sub/mlflow.db")
    with pytest.raises(TrackingError, match=r"cannot create the folder .*a_file/sub \(Not a directory\)"), \
            tracking.open_run(not_a_folder, tmp_path, "train"):
        pass
    (tmp_path / "garbage.db").write_text("not a database, " * 100)
    garbage = _tracked(cfg, f"sqlite:///{tmp_path}/garbage.db")
    with pytest.raises(TrackingError, match=r"garbage.db is not an SQLite database"), \
            tracking.open_run(garbage, tmp_path, "train"):
        pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_named(tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        read_only = _tracked(tiny_config(), f"sqlite:///{folder}/mlflow.db")
        with pytest.raises(TrackingError, match=rf"{folder} is read-only"), tracking.open_run(read_only, tmp_path, "t"):
            pass
    finally:
        folder.chmod(0o755)


class _ShortBusyTimeout:
    """mlflow.store.db.utils's ``sql`` with MLflow's 20 s sqlite busy wait cut to 0.1 s, so that
    a lock held for a few seconds makes MLflow's calls fail as a longer one does."""

    def __getattr__(self, name):
        import sqlalchemy.sql

        return getattr(sqlalchemy.sql, name)

    @staticmethod
    def text(statement: str):
        import sqlalchemy.sql

        return sqlalchemy.sql.text(statement.replace("busy_timeout = 20000", "busy_timeout = 100"))


def _hold_lock(database, seconds: float) -> threading.Thread:
    """Another connection holds an exclusive lock on ``database`` for ``seconds`` (from now)."""
    connection = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    connection.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        time.sleep(seconds)
        connection.execute("ROLLBACK")
        connection.close()

    holder = threading.Thread(target=release, daemon=True)
    holder.start()
    return holder


def test_training_survives_a_locked_store_and_loses_no_step(tmp_path, monkeypatch, capsys):
    import mlflow.store.db.utils
    from mlflow.tracking import MlflowClient

    root = tmp_path / "repo"
    make_store(root)
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(mlflow.store.db.utils, "sql", _ShortBusyTimeout())
    cfg = _tracked(tiny_config(max_steps=3, log_every=1, sample_every=2), uri)
    real_train = train_stage.train
    holders = []

    def train_while_locked(*args, **kwargs):
        holders.append(_hold_lock(database, seconds=3.0))  # the run exists; every write now meets the lock
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_stage, "train", train_while_locked)
    train_stage.run(cfg, root)
    holders[0].join()

    assert json.loads((root / "reports" / "train.json").read_text())["step"] == 3
    assert "database is locked" in capsys.readouterr().err
    client = MlflowClient(uri)
    run_id = json.loads((root / cfg.train.checkpoint_dir / "run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "tracking.lost_writes" not in run.data.tags
    assert [m.step for m in client.get_metric_history(run_id, "loss/g_gan")] == [1, 2, 3]
    assert {a.path for a in client.list_artifacts(run_id, "samples")} == {"samples/step_0000002.png",
                                                                         "samples/step_0000003.png"}


def test_an_interrupted_training_is_killed_and_resumes_without_repeating_steps(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "repo"
    make_store(root)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _tracked(tiny_config(max_steps=4, log_every=1, checkpoint_every=2, num_threads=1), uri)
    real_train = train_stage.train

    def interrupted_after_step_3(*args, report, **kwargs):
        def report_then_stop(metrics, step):
            report(metrics, step)
            if step == 3:  # logged, but the last checkpoint is step 2's
                raise KeyboardInterrupt

        return real_train(*args, report=report_then_stop, **kwargs)

    monkeypatch.setattr(train_stage, "train", interrupted_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_stage.run(cfg, root)
    client = MlflowClient(uri)
    run_id = json.loads((root / cfg.train.checkpoint_dir / "run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run_id, "loss/g_gan")] == [1, 2, 3]

    monkeypatch.setattr(train_stage, "train", real_train)
    train_stage.run(cfg, root)  # resumes from step 2: steps 3 and 4 are trained, 3 is not logged again
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "loss/g_gan")] == [1, 2, 3, 4]
    assert run.data.params["runtime.num_threads"] == "1"
    assert run.data.params["runtime.threads_source"] == "train.num_threads"
    assert run.data.params["runtime.gpus"] == "none"  # started without pipeline/launch.py: nothing claimed


def test_sigterm_marks_the_run_killed_and_exits_143(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tracking"]["tracking_uri"] = uri
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    script = textwrap.dedent("""
        import sys, time
        from pipeline.stage import run_stage
        from pipeline.tracking import open_run

        def run(cfg, root):
            with open_run(cfg, root, "probe") as tracker:
                print(tracker.run_id, flush=True)
                time.sleep(120)

        run_stage("probe", run)
    """)
    env = stage_environment()
    process = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run_id = process.stdout.readline().strip()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143 and stderr.strip().endswith("probe: terminated (SIGTERM)"), stderr
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"


def test_the_writer_drops_what_cannot_be_written_and_goes_on(capsys):
    from mlflow.exceptions import MlflowException

    written, attempts = [], {"locked": 0}

    def locked_twice():
        attempts["locked"] += 1
        if attempts["locked"] <= 2:
            raise MlflowException("database is locked", error_code="TEMPORARILY_UNAVAILABLE")
        written.append("locked")

    def refused():
        raise MlflowException("bad value", error_code="INVALID_PARAMETER_VALUE")

    writer = BackgroundWriter("sqlite:///x.db", delays=(0.01, 0.01, 0.01))
    writer.submit("a", locked_twice)
    writer.submit("b", refused)
    writer.submit("c", written.append, "c")
    assert writer.close(timeout_s=10) == ["b"]
    assert written == ["locked", "c"] and attempts["locked"] == 3
    err = capsys.readouterr().err
    assert "did not take a write (database is locked)" in err and "could not write b" in err


def test_a_locked_store_shows_our_lines_not_mlflow_tracebacks(capfd):
    """Item 16: while the sqlite file is locked, MLflow logs a 60-line SQLAlchemy traceback at
    every failed attempt (logger mlflow.store.db.utils, through MLflow's own handler) and then
    raises; the user sees only the writer's lines. The write below fails as MLflow's does."""
    import logging

    import mlflow  # noqa: F401 - configures MLflow's logger and handler, as in a run
    from mlflow.exceptions import MlflowException

    uri = "sqlite:////runs/mlflow.db"

    def locked_write():
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as err:
            logging.getLogger("mlflow.store.db.utils").exception(
                "SQLAlchemy database error. The following exception is caught.\n%s", err)
            raise MlflowException("(sqlite3.OperationalError) database is locked\n[SQL: INSERT ...]",
                                  error_code="TEMPORARILY_UNAVAILABLE") from err

    capfd.readouterr()
    writer = BackgroundWriter(uri, delays=(0.01,))
    writer.submit("metric loss/g_gan", locked_write)
    assert writer.close(timeout_s=10) == ["metric loss/g_gan"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "SQLAlchemy" not in err, err
    assert err.splitlines() == [
        f"mlflow: {uri} did not take a write (database is locked); retrying in the background, the run goes on",
        f"mlflow: could not write metric loss/g_gan to {uri} (database is locked); dropped, the run goes on "
        "(further failures are counted at the end)",
    ]
    logging.getLogger("mlflow.store.db.utils").error("outside the writer")  # other threads log as before
    assert "outside the writer" in capfd.readouterr().err
