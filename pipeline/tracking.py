"""MLflow run handling for every stage (REFERENCE.md section 6). The only module that imports mlflow.

Facts this file is built around, measured with dvc 3.67 / mlflow 3.17:
- ``dvc exp run --queue`` runs in a temporary copy that is deleted afterwards, so a relative
  tracking URI or artifact location silently loses runs: the URI is absolute
  (``sqlite:///<DVC_ROOT or root>/mlflow.db``) and experiments are created with an explicit
  artifact location under the real root (``<root>/mlartifacts/<experiment>``).
- ``DVC_ROOT`` names the real repository (also in queued runs); ``DVC_EXP_NAME`` and
  ``DVC_EXP_BASELINE_REV`` tie the run to its DVC experiment.

Stages use :func:`open_run` as a context manager and hand ``tracker.log_metrics`` to the
library as its report callback; with ``tracking.enabled: false`` the tracker does nothing.
The train stage writes ``run.json`` so that later stages log into the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gaugan.config import Config, config_to_dict, flatten
from gaugan.data.io import atomic_write_json
from pipeline.dvc import current_context

RUN_FILE = "run.json"
MLFLOW_PARAM_LIMIT = 6000  # characters per param value accepted by the MLflow store


def tracking_root(root: Path) -> Path:
    """The real repository root: DVC_ROOT (also inside queued experiment copies), else ``root``."""
    return current_context(cwd=root).root


def resolve_tracking_uri(cfg: Config, root: Path) -> str:
    """tracking.tracking_uri, else MLFLOW_TRACKING_URI, else an absolute sqlite file at the root."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{tracking_root(root) / 'mlflow.db'}"


def file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_tags(cfg: Config, root: Path, stage: str) -> dict[str, str]:
    """Tags that tie a run to its DVC experiment, code version and data."""
    context = current_context(cwd=root)
    tags = {
        "dvc.stage": context.stage or stage,
        "dvc.exp_name": context.exp_name,
        "dvc.baseline_rev": context.baseline_rev,
        "git.commit": context.commit,
        "data.manifest_sha256": file_sha256(root / cfg.data.processed_dir / "manifest.json"),
        "data.dataset": cfg.data.dataset,
    }
    return {key: value for key, value in tags.items() if value}


class NullTracker:
    """Tracking switched off: every call is accepted and does nothing."""

    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_config(self, cfg: Config) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def log_image(self, path: str | os.PathLike, step: int | None = None, key: str = "samples") -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass


class Tracker(NullTracker):
    """One MLflow run, written through an explicit client (no global fluent-API state)."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, tracking_uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # A resumed run already holds its params; MLflow refuses to change one, so values
        # that legitimately changed on resume (e.g. train.log_every) are recorded as tags.
        existing = self.client.get_run(self.run_id).data.params
        new, changed = [], {}
        for key, value in params.items():
            text = str(value)[:MLFLOW_PARAM_LIMIT]
            if key not in existing:
                new.append(Param(key, text))
            elif existing[key] != text:
                changed[f"param_changed_on_resume.{key}"] = text
        for start in range(0, len(new), 100):  # the store accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=new[start:start + 100])
        if changed:
            self.set_tags(changed)

    def log_config(self, cfg: Config) -> None:
        self.log_params(flatten(config_to_dict(cfg)))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        entries = [Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items()]
        for start in range(0, len(entries), 1000):
            self.client.log_batch(self.run_id, metrics=entries[start:start + 1000])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_image(self, path: str | os.PathLike, step: int | None = None, key: str = "samples") -> None:
        self.log_artifact(path, artifact_path=key)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(key, str(value)) for key, value in tags.items() if value is not None]
        if entries:
            self.client.log_batch(self.run_id, tags=entries)


def _experiment_id(client: Any, name: str, root: Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = (tracking_root(root) / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - another process created it between the two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextlib.contextmanager
def open_run(cfg: Config, root: Path, stage: str, resume_run_id: str | None = None) -> Iterator[NullTracker]:
    """A tracker for one stage: a new MLflow run, or ``resume_run_id``'s run continued.

    The run is marked FINISHED when the block ends normally and FAILED on an exception.
    With ``tracking.enabled: false`` a :class:`NullTracker` is yielded.
    """
    if not cfg.tracking.enabled:
        yield NullTracker()
        return
    from mlflow.tracking import MlflowClient

    tracking_uri = resolve_tracking_uri(cfg, root)
    client = MlflowClient(tracking_uri=tracking_uri)
    run = None
    if resume_run_id:
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(resume_run_id)
        except MlflowException:
            # The store no longer has it (e.g. mlflow.db deleted): log to a new run instead
            # of failing a training that would otherwise continue fine.
            print(f"MLflow run {resume_run_id} not found in {tracking_uri}; starting a new run", file=sys.stderr)
    if run is not None:
        experiment_id = run.info.experiment_id
        run_id = run.info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        experiment_id = _experiment_id(client, cfg.tracking.experiment_name, root)
        run_name = current_context(cwd=root).exp_name or stage
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    tracker = Tracker(client, run_id, experiment_id, tracking_uri)
    tracker.set_tags(run_tags(cfg, root, stage))
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)


def write_run_file(tracker: NullTracker, path: Path) -> None:
    """``run.json`` {run_id, experiment_id, tracking_uri}: later stages join this run.

    Written with tracking off too (``run_id`` null): dvc.yaml declares the file as a
    dependency of evaluate and report, and a missing dependency would stop ``dvc repro``.
    """
    atomic_write_json(
        path, {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id, "tracking_uri": tracker.tracking_uri}
    )


def read_run_file(path: Path) -> dict[str, str] | None:
    """The run a previous stage opened, or None when there is none (tracking was off)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it to start a new MLflow run") from err
    if not isinstance(data, dict) or "run_id" not in data:
        raise ValueError(f"{path}: expected a JSON object with 'run_id'; delete it to start a new MLflow run")
    if data["run_id"] is None:  # written with tracking off
        return None
    return data
