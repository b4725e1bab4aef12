"""Reading MLflow runs into pandas for the report, and tagging them after a sweep.

The report (gaugan/report.py) never talks to MLflow: this module fetches runs and metric
histories as DataFrames in the layout of ``mlflow.search_runs`` (``run_id``,
``params.<key>``, ``metrics.<key>``, ``tags.<key>``), and writes the link tags that
``gaugan experiments link`` computes (pipeline/dvc.py). The client is built from the same
tracking URI the stages log to (pipeline/tracking.py), so queued experiments' runs in the
real root are found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from gaugan.config import Config
from pipeline.dvc import TAG_EXP_REV, ExperimentLink, link_experiments, list_experiments, read_run_id_at
from pipeline.tracking import RUN_FILE, resolve_tracking_uri
from pipeline.tracking_store import check_store, limit_http_retries


def mlflow_client(cfg: Config, root: Path) -> Any:
    """An MlflowClient on the project's tracking URI (``tracking`` section, env, root), after
    a quick check that the store is there (a TrackingError naming the URI, not minutes of
    MLflow's retries)."""
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(cfg, root)
    check_store(uri)
    limit_http_retries()
    return MlflowClient(tracking_uri=uri)


def fetch_runs(client: Any, experiment_name: str) -> pd.DataFrame:
    """Every run of the experiment as one row; an empty frame when the experiment does not exist."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame(columns=["run_id", "run_name", "status", "start_time", "end_time", "artifact_uri"])
    rows = []
    page_token = None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=page_token)
        for run in page:
            row = {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
                "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True) if run.info.end_time else pd.NaT,
                "artifact_uri": run.info.artifact_uri,
            }
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
            rows.append(row)
        page_token = page.token
        if not page_token:
            break
    return pd.DataFrame(rows)


def fetch_histories(client: Any, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """Every logged value of ``keys`` for ``run_ids``: columns run_id, key, step, value."""
    rows = []
    for run_id in run_ids:
        for key in keys:
            rows += [(run_id, key, m.step, m.value) for m in client.get_metric_history(run_id, key)]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def download_artifact(client: Any, run_id: str, artifact_path: str, destination: Path) -> Path | None:
    """A run's artifact (file or folder) copied under ``destination``; None when it is absent."""
    names = {item.path for item in client.list_artifacts(run_id, str(Path(artifact_path).parent)
                                                         if "/" in artifact_path else None)}
    if artifact_path not in names:
        return None
    destination.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, artifact_path, str(destination)))


def tag_linked_runs(client: Any, links: list[ExperimentLink]) -> int:
    """Record each experiment's commit on the run behind its outputs; returns the number tagged.

    That run is the one named in the experiment's run.json; when that is unknown (tracking
    information incomplete), the newest run made for the experiment.
    """
    tagged = 0
    for link in links:
        if link.experiment.is_baseline or not link.run_ids:
            continue
        run_id = link.source_run_id if link.source_run_id in link.run_ids else link.run_ids[0]
        client.set_tag(run_id, TAG_EXP_REV, link.experiment.rev)
        tagged += 1
    return tagged


def link_sweep(cfg: Config, root: Path) -> list[ExperimentLink]:
    """After a sweep: match every DVC experiment in ``root`` to its MLflow runs and tag them.

    Each experiment's run.json (``<train.checkpoint_dir>/run.json`` as DVC recorded it at
    the experiment's commit) names the run behind its outputs, which tells experiments that
    ran apart from those DVC restored from its run-cache or found nothing to run for.
    """
    experiments = list_experiments(root)
    client = mlflow_client(cfg, root)
    runs = fetch_runs(client, cfg.tracking.experiment_name)
    run_file = f"{cfg.train.checkpoint_dir}/{RUN_FILE}"
    sources = {experiment.rev: read_run_id_at(root, experiment.rev, run_file) for experiment in experiments}
    links = link_experiments(experiments, runs, sources)
    tag_linked_runs(client, links)
    return links
