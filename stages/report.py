"""Report stage: one static page comparing every run of the MLflow experiment with this one.

The paper's ablations (Park et al. 2019, Section 4 and Tables 1-4) compare FID, mIoU and
pixel accuracy per variant; this stage builds that comparison from MLflow with pandas
(pipeline/runs.py) and renders it with gaugan/report.py: the ablation table as Markdown
and CSV (one row per training run: the parameters that differ, FID, mIoU, accuracy,
images/s, training time), loss curves and metric bars as PNGs, sample grids, and
reports/index.html, which inlines everything and opens offline. With tracking off the
table has this workspace's row only, read from reports/metrics.json.

Runs are read at the moment the stage runs: after a queued sweep, run `gaugan
link-experiments` and then `dvc repro --force --single-item report` to see every
experiment side by side (README "Sweeps").

DVC:
  params: tracking, train.checkpoint_dir
  deps:   reports/metrics.json, reports/train.json, reports/generated_grid.png, reports/data/samples.png,
          ${train.checkpoint_dir}/run.json, ${train.checkpoint_dir}/samples, gaugan code it imports
  outs:   reports/index.html, reports/ablations.md, reports/ablations.csv,
          reports/plots/losses.png, reports/plots/metrics.png
  metrics: reports/headline.json (cache: false): this run's FID, mIoU, accuracy, images/s and
          training minutes, what `dvc metrics show` and `dvc exp show` list
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from gaugan import report
from gaugan.config import Config, flatten
from gaugan.data.io import atomic_write_json, atomic_write_text
from gaugan.metrics.registry import registered_metrics
from pipeline.dvc import current_context
from pipeline.stage import run_stage
from pipeline.tracking import RUN_FILE, read_run_file

REPORTS = Path("reports")
METRICS = REPORTS / "metrics.json"
TRAINING = REPORTS / "train.json"
HEADLINE = REPORTS / "headline.json"
GENERATED_GRID = REPORTS / "generated_grid.png"
DATA_SAMPLES = REPORTS / "data" / "samples.png"
TABLE_MD, TABLE_CSV = REPORTS / "ablations.md", REPORTS / "ablations.csv"
LOSSES_PNG, METRICS_PNG = REPORTS / "plots" / "losses.png", REPORTS / "plots" / "metrics.png"
PAGE = REPORTS / "index.html"
# Runs that compare as rows: a training run (evaluate logs into it), or an evaluation of a
# given checkpoint (evaluate.checkpoint). The segmenter's own runs are not variants.
RUN_STAGES = ("train", "evaluate")
MAX_RUNS_WITH_DETAILS = 12  # loss curves and sample grids fetched for the newest runs only
EVALUATION_GRID_ARTIFACT = "evaluation/generated_grid.png"
SAMPLE_SCALE = 2  # generated and training grids shown twice their size (the built-in images are 64x64)


def local_runs(metrics: dict, training: dict, run_id: str | None) -> pd.DataFrame:
    """This workspace as a one-row runs frame (tracking off, or its run missing from MLflow),
    from reports/metrics.json and reports/train.json."""
    row = {"run_id": run_id or "workspace", "run_name": "workspace"}
    row.update({f"metrics.{metric.tracking_key}": metrics.get(metric.name) for metric in registered_metrics()})
    row.update({f"metrics.{key}": value for key, value in training.items() if key.startswith(("perf/", "time/"))})
    return pd.DataFrame([row])


def comparable_runs(runs: pd.DataFrame) -> pd.DataFrame:
    if "tags.dvc.stage" not in runs.columns:
        return runs
    return runs[runs["tags.dvc.stage"].isin(RUN_STAGES)]


def latest_training_samples(checkpoint_dir: Path) -> Path | None:
    grids = sorted((checkpoint_dir / "samples").glob("step_*.png"))
    return grids[-1] if grids else None


def run(cfg: Config, root: Path) -> None:
    metrics = json.loads((root / METRICS).read_text())
    training = json.loads((root / TRAINING).read_text())
    current = read_run_file(root / cfg.train.checkpoint_dir / RUN_FILE)
    current_id = current["run_id"] if current else None

    runs = pd.DataFrame(columns=["run_id"])
    history = pd.DataFrame(columns=["run_id", "key", "step", "value"])
    other_grids: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="gaugan-report-") as scratch:
        if cfg.tracking.enabled:
            from pipeline.runs import download_artifact, fetch_histories, fetch_runs, mlflow_client

            client = mlflow_client(cfg, root)
            runs = comparable_runs(fetch_runs(client, cfg.tracking.experiment_name))
        tracked = list(runs.sort_values("start_time")["run_id"]) if len(runs) else []
        if current_id not in tracked:
            runs = pd.concat([runs, local_runs(metrics, training, current_id)], ignore_index=True)
        table = report.ablation_table(runs)
        # Names for legends and captions: the experiment, and the run id since names repeat
        # (every plain `dvc repro` is "workspace").
        labels = {run_id: f"{name} ({str(run_id)[:8]})"
                  for run_id, name in zip(runs["run_id"], report.experiment_labels(runs))}
        if tracked:
            # Details (loss curves, grids) for the newest runs and this one.
            detailed = [r for r in tracked[-MAX_RUNS_WITH_DETAILS:] if r != current_id]
            detailed += [current_id] if current_id in tracked else []
            loss_keys = sorted({c[len("metrics."):] for c in runs.columns if c.startswith("metrics.loss/")})
            history = fetch_histories(client, detailed, loss_keys)
            for run_id in detailed:
                if run_id != current_id:
                    grid = download_artifact(client, run_id, EVALUATION_GRID_ARTIFACT, Path(scratch) / run_id)
                    if grid is not None:
                        other_grids.append((labels[run_id], grid))

        # Files: table, headline metrics of this run, plots.
        current_key = (current_id or "workspace")[:8]  # the table shows 8-character run ids
        current_row = next((i for i, run in enumerate(table["run"]) if run == current_key), None)
        atomic_write_text(root / TABLE_MD, report.table_markdown(table))
        atomic_write_text(root / TABLE_CSV, table.to_csv(index=False))
        headline = report.headline_json(table.iloc[current_row]) if current_row is not None else {}
        atomic_write_json(root / HEADLINE, headline)
        report.plot_loss_curves(history, labels, root / LOSSES_PNG)
        report.plot_headlines(table, root / METRICS_PNG)

        # The page.
        sections = [report.Section("This run", summary_html(metrics, current_id))]
        samples = [(root / GENERATED_GRID, "validation label maps | generated | real (this run)")]
        training_grid = latest_training_samples(root / cfg.train.checkpoint_dir)
        if training_grid is not None:
            samples.append((training_grid, f"training samples at {training_grid.stem.replace('_', ' ')}"))
        samples += [(path, f"{name}: label | generated | real") for name, path in other_grids]
        sections.append(report.Section("Samples", "".join(
            report.figure_html(path, caption, scale=SAMPLE_SCALE) for path, caption in samples if path.is_file())))
        sections.append(report.Section("Runs compared", report.table_html(table, current_row) + report.text_html(
            f"One row per run of the MLflow experiment '{cfg.tracking.experiment_name}' (the highlighted row is this "
            "run); columns between 'run' and 'FID' are the parameters that differ. mIoU and accuracy in percent. "
            f"Also as {TABLE_MD.name} and {TABLE_CSV.name}. Experiments that DVC completed without training "
            "(run-cache) have no row of their own: `gaugan link-experiments` lists them.")))
        sections.append(report.Section("Metrics per run", report.figure_html(root / METRICS_PNG, "headline metrics")))
        sections.append(report.Section("Training losses", report.figure_html(root / LOSSES_PNG, "loss curves")))
        if (root / DATA_SAMPLES).is_file():
            sections.append(report.Section("Data", report.figure_html(root / DATA_SAMPLES, "training data samples")))
        title = f"GauGAN report: {metrics.get('protocol', {}).get('dataset', cfg.tracking.experiment_name)}"
        atomic_write_text(root / PAGE, report.render_page(title, sections))
    print(f"report: {len(table)} run(s) compared -> {PAGE} ({TABLE_MD}, {TABLE_CSV})")


def summary_html(metrics: dict, run_id: str | None) -> str:
    """Where this report was built, headline numbers of this run (with why a number is
    missing) and the evaluation protocol."""
    context = current_context()
    items: dict[str, object] = {
        "DVC experiment": context.exp_name or "(none: the workspace)",
        "git commit": (context.baseline_rev or context.commit or "(not a git repository)")[:12],
        "MLflow run": run_id or "(tracking off)",
    }
    for metric in registered_metrics():
        reason = metrics.get("unavailable", {}).get(metric.name)
        items[metric.heading] = f"unavailable: {reason}" if reason else metrics.get(metric.name)
    protocol = flatten(metrics.get("protocol", {}))
    items.update({f"protocol: {key}": json.dumps(value) if isinstance(value, (dict, list)) else value
                  for key, value in protocol.items()})
    return report.definition_list_html(items)


if __name__ == "__main__":
    run_stage("report", run)
