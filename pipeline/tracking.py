"""MLflow run handling for every stage (docs/SPADE.md section 6). The only module that imports mlflow.

Facts this file is built around, measured with dvc 3.67 / mlflow 3.17:
- ``dvc exp run --queue`` runs in a temporary copy that is deleted afterwards, so a relative
  tracking URI or artifact location silently loses runs: the URI is absolute
  (``sqlite:///<DVC_ROOT or root>/mlflow.db``) and experiments are created with an explicit
  artifact location under the real root (``<root>/mlartifacts/<experiment>``).
- ``DVC_ROOT`` names the real repository (also in queued runs); ``DVC_EXP_NAME`` and
  ``DVC_EXP_BASELINE_REV`` tie the run to its DVC experiment.

Stages use :func:`open_run` as a context manager and hand ``tracker.log_metrics`` (the
train stage: ``tracker.training_reporter()``) to the library as its report callback; with
``tracking.enabled: false`` the tracker does nothing. The train stage writes ``run.json``
so that later stages log into the same run. A store that is unreachable, locked or
read-only is handled in pipeline/tracking_store.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gaugan.config import Config, config_to_dict, flatten
from gaugan.data.io import atomic_write_json, file_digest
from gaugan.methods import method_name
from pipeline.dvc import current_context
from pipeline.stage import sigterm_unwinds
from pipeline.tracking_store import (
    RETRY_DELAYS_S,
    BackgroundWriter,
    TrackingError,
    call_with_retries,
    check_store,
    is_transient,
    limit_http_retries,
    warn,
)

RUN_FILE = "run.json"
MLFLOW_PARAM_LIMIT = 6000  # characters per param value accepted by the MLflow store
# How long the end of a run waits for queued writes: long enough to outlast a lock held by
# another process; short after Ctrl-C, when the user wants the prompt back.
FLUSH_TIMEOUT_S = 120.0
KILLED_FLUSH_TIMEOUT_S = 10.0


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
    return file_digest(path)


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

    def training_reporter(self) -> Callable[[dict[str, float], int], None]:
        return self.log_metrics


class Tracker(NullTracker):
    """One MLflow run, written through an explicit client (no global fluent-API state).

    Writes are queued to a :class:`~pipeline.tracking_store.BackgroundWriter` and return at
    once: a slow, locked or vanished store neither slows training down nor stops it.
    :meth:`finish` drains the queue and sets the run's final status.
    """

    def __init__(self, client: Any, run_id: str, experiment_id: str, tracking_uri: str,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS_S) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.retry_delays = retry_delays
        self.writer = BackgroundWriter(tracking_uri, retry_delays)

    def log_params(self, params: dict[str, Any]) -> None:
        self.writer.submit(f"{len(params)} params", self._write_params, dict(params))

    def _write_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        # A resumed run already holds its params; MLflow refuses to change one, so values
        # that legitimately changed on resume (e.g. train.log_every) are recorded as tags.
        existing = self.client.get_run(self.run_id).data.params
        new, changed = [], []
        for key, value in params.items():
            text = str(value)[:MLFLOW_PARAM_LIMIT]
            if key not in existing:
                new.append(Param(key, text))
            elif existing[key] != text:
                changed.append(RunTag(f"param_changed_on_resume.{key}", text))
        for start in range(0, len(new), 100):  # the store accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=new[start:start + 100])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def log_config(self, cfg: Config) -> None:
        # "method" (SPADE, OASIS, a pairing): runs filter by it (params.method = 'OASIS').
        self.log_params({**flatten(config_to_dict(cfg)), "method": method_name(cfg)})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)  # when measured, not when the queue got to it
        entries = [Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items()]
        for start in range(0, len(entries), 1000):
            self.writer.submit(f"metrics of step {step or 0}", self._write_batch,
                               {"metrics": entries[start:start + 1000]})

    def training_reporter(self) -> Callable[[dict[str, float], int], None]:
        """The training loop's ``report`` callback: :meth:`log_metrics`, except for steps the
        run already holds.

        A resumed training repeats the steps between its last checkpoint and the
        interruption; their values were logged before, and MLflow keeps every value, so
        logging them again would show each of those steps twice.
        """
        logged = self.last_logged_step()
        if logged is None:
            return self.log_metrics

        def report(metrics: dict[str, float], step: int) -> None:
            if step > logged:
                self.log_metrics(metrics, step)

        return report

    def last_logged_step(self) -> int | None:
        """The highest step of any metric the run holds (None: no metrics yet)."""
        def read() -> int | None:
            keys = self.client.get_run(self.run_id).data.metrics
            steps = [m.step for key in keys for m in self.client.get_metric_history(self.run_id, key)]
            return max(steps, default=None)

        return call_with_retries(read, "read the run's metric history", self.tracking_uri, self.retry_delays)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.writer.submit(f"artifact {path}", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_image(self, path: str | os.PathLike, step: int | None = None, key: str = "samples") -> None:
        self.log_artifact(path, artifact_path=key)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(key, str(value)) for key, value in tags.items() if value is not None]
        if entries:
            self.writer.submit(f"{len(entries)} tags", self._write_batch, {"tags": entries})

    def _write_batch(self, batch: dict[str, list]) -> None:
        self.client.log_batch(self.run_id, **batch)

    def finish(self, status: str, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Drain the queued writes (none starts after ``timeout_s``), then set the run's status.

        Never raises: the stage's own outcome (its outputs, or its error) is what counts;
        what could not be written is said on stderr.
        """
        dropped = self.writer.close(timeout_s)
        if dropped:
            warn(f"{len(dropped)} write(s) to {self.tracking_uri} were lost (e.g. {dropped[0]}); the run's "
                 "outputs are complete, its MLflow record is not")

        def end() -> None:
            if dropped:  # the run's record says it is incomplete, where the store takes writes again
                self.client.set_tag(self.run_id, "tracking.lost_writes", str(len(dropped)))
            self.client.set_terminated(self.run_id, status=status)

        try:
            call_with_retries(end, f"mark run {self.run_id} {status}", self.tracking_uri, self.retry_delays)
        except TrackingError as err:
            warn(f"{err}; the run stays RUNNING in MLflow")


def _experiment_id(client: Any, name: str, root: Path, tracking_uri: str) -> str:
    """The MLflow experiment ``name``, created when missing: its artifacts under the real root
    (``<root>/mlartifacts/<name>``), or, with a tracking server, where the server keeps them
    (``mlflow server --serve-artifacts``): the processes that report to one server may run on
    other machines, whose folders the others cannot read."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    served = tracking_uri.startswith(("http://", "https://"))
    artifact_location = None if served else (tracking_root(root) / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - another process created it between the two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _start_run(client: Any, cfg: Config, root: Path, stage: str, resume_run_id: str | None,
               tracking_uri: str) -> tuple[str, str]:
    """(run id, experiment id): ``resume_run_id``'s run set RUNNING again, else a new run."""
    from mlflow.exceptions import MlflowException

    run = None
    if resume_run_id:
        try:
            run = client.get_run(resume_run_id)
        except MlflowException as err:
            if is_transient(err):
                raise
            # The store no longer has it (e.g. mlflow.db deleted): log to a new run instead
            # of failing a training that would otherwise continue fine.
            print(f"MLflow run {resume_run_id} not found in {tracking_uri}; starting a new run", file=sys.stderr)
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, run.info.experiment_id
    experiment_id = _experiment_id(client, cfg.tracking.experiment_name, root, tracking_uri)
    run_name = current_context(cwd=root).exp_name or stage
    return client.create_run(experiment_id, run_name=run_name).info.run_id, experiment_id


@contextlib.contextmanager
def open_run(cfg: Config, root: Path, stage: str, resume_run_id: str | None = None) -> Iterator[NullTracker]:
    """A tracker for one stage: a new MLflow run, or ``resume_run_id``'s run continued.

    The store is checked first (:func:`~pipeline.tracking_store.check_store`: a
    :class:`TrackingError` naming the URI, within seconds). The run ends FINISHED when the
    block ends normally, FAILED on an exception, KILLED on Ctrl-C or SIGTERM. With
    ``tracking.enabled: false`` a :class:`NullTracker` is yielded.
    """
    if not cfg.tracking.enabled:
        yield NullTracker()
        return
    from mlflow.tracking import MlflowClient

    tracking_uri = resolve_tracking_uri(cfg, root)
    check_store(tracking_uri)
    limit_http_retries()
    client = MlflowClient(tracking_uri=tracking_uri)
    run_id, experiment_id = call_with_retries(
        lambda: _start_run(client, cfg, root, stage, resume_run_id, tracking_uri), "start a run", tracking_uri)
    tracker = Tracker(client, run_id, experiment_id, tracking_uri)
    tracker.set_tags(run_tags(cfg, root, stage))
    status = "FAILED"
    try:
        with sigterm_unwinds():
            yield tracker
        status = "FINISHED"
    except BaseException as err:
        if not isinstance(err, Exception):  # Ctrl-C, SIGTERM, sys.exit
            status = "KILLED"
        raise
    finally:
        tracker.finish(status, timeout_s=KILLED_FLUSH_TIMEOUT_S if status == "KILLED" else FLUSH_TIMEOUT_S)


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
