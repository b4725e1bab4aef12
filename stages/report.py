"""Report stage: one static page that leads with this run's numbers and images, then compares
every run of the MLflow experiment.

The paper's ablations (Park et al. 2019, Section 4 and Tables 1-4) compare FID, mIoU and
pixel accuracy per variant; this stage builds that comparison from MLflow with pandas
(pipeline/runs.py) and renders it with gaugan/report.py. reports/index.html, one file that
inlines everything and opens offline, reads top down:

1. this run's headline numbers (every registered metric: FID, mIoU, accuracy, the judge's
   ceiling on real photos, KID; why any is missing) and the label | generated | real grid at a
   readable size;
2. the judge class by class (generated vs real IoU; classes the segmenter does not recognise
   on real photos flagged as not judged reliably);
3. the runs compared (one row per training run: the parameters that differ, the metrics,
   images/s, training time; also as Markdown and CSV) and the plots (metrics per run, metrics
   during training, losses);
4. more samples, and the full evaluation protocol in a collapsed section.

With tracking off the table has this workspace's row only, read from reports/metrics.json, and
the curves during training come from reports/train.json. Runs are read at the moment the stage
runs: after a queued sweep, run `gaugan link-experiments` and then `dvc repro --force
--single-item report` to see every experiment side by side (README "Sweeps").

Its params, data and code deps and outputs are listed once, in dvc.yaml (stage ``report``).
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import pandas as pd

from gaugan import report
from gaugan.config import Config, flatten
from gaugan.data.io import atomic_write_json, atomic_write_text, require_writable
from gaugan.metrics.registry import registered_metrics
from pipeline.dvc import current_context
from pipeline.stage import read_json_input, run_stage
from pipeline.tracking import RUN_FILE, read_run_file

REPORTS = Path("reports")
METRICS = REPORTS / "metrics.json"
PER_CLASS = REPORTS / "per_class_iou.csv"
TRAINING = REPORTS / "train.json"
HEADLINE = REPORTS / "headline.json"
GENERATED_GRID = REPORTS / "generated_grid.png"
DATA_SAMPLES = REPORTS / "data" / "samples.png"
TABLE_MD, TABLE_CSV = REPORTS / "ablations.md", REPORTS / "ablations.csv"
LOSSES_PNG, METRICS_PNG = REPORTS / "plots" / "losses.png", REPORTS / "plots" / "metrics.png"
CURVES_PNG = REPORTS / "plots" / "training_metrics.png"
PAGE = REPORTS / "index.html"
# scripts/compare_methods.py's results, shown when present (not a stage output: rebuild the
# report after running the script).
COMPARISON = REPORTS / "compare_methods.json"
# Runs that compare as rows: a training run (evaluate logs into it), or an evaluation of a
# given checkpoint (evaluate.checkpoint). The segmenter's own runs are not variants.
RUN_STAGES = ("train", "evaluate")
MAX_RUNS_WITH_DETAILS = 12  # curves and sample grids fetched for the newest runs only
EVALUATION_GRID_ARTIFACT = "evaluation/generated_grid.png"
SAMPLE_SCALE = 2  # smaller grids (training samples, other runs) shown twice their size


def local_runs(metrics: dict, training: dict, run_id: str | None) -> pd.DataFrame:
    """This workspace as a one-row runs frame (tracking off, or its run missing from MLflow),
    from reports/metrics.json and reports/train.json."""
    row = {"run_id": run_id or "workspace", "run_name": "workspace"}
    row.update({f"metrics.{metric.tracking_key}": metrics.get(metric.name) for metric in registered_metrics()})
    row.update({f"metrics.{key}": value for key, value in training.items() if key.startswith(("perf/", "time/"))})
    row["metrics.final/step"] = training.get("step")
    row["params.method"] = training.get("method")
    return pd.DataFrame([row])


def local_curves(training: dict, run_id: str | None) -> pd.DataFrame:
    """The metrics scored during training as a history frame, from reports/train.json."""
    history = training.get("evaluation_during_training", {}).get("history", [])
    rows = [(run_id or "workspace", key, point["step"], value)
            for point in history for key, value in point.items() if key not in ("epoch", "step")]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def comparable_runs(runs: pd.DataFrame) -> pd.DataFrame:
    if "tags.dvc.stage" not in runs.columns:
        return runs
    return runs[runs["tags.dvc.stage"].isin(RUN_STAGES)]


def latest_training_samples(checkpoint_dir: Path) -> Path | None:
    grids = sorted((checkpoint_dir / "samples").glob("step_*.png"))
    return grids[-1] if grids else None


def read_per_class(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run(cfg: Config, root: Path) -> None:
    require_writable(root / REPORTS, None, f"the report ({PAGE}, tables, plots)")  # before the work
    metrics = read_json_input(root / METRICS, "evaluate")
    training = read_json_input(root / TRAINING, "train")
    current = read_run_file(root / cfg.train.checkpoint_dir / RUN_FILE)
    current_id = current["run_id"] if current else None
    metric_keys = [metric.tracking_key for metric in registered_metrics()]

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
            history = local_curves(training, current_id)  # its curves from reports/train.json
        table = report.ablation_table(runs)
        # Names for legends and captions: the experiment, and the run id since names repeat
        # (every plain `dvc repro` is "workspace").
        labels = {run_id: f"{name} ({str(run_id)[:8]})"
                  for run_id, name in zip(runs["run_id"], report.experiment_labels(runs))}
        if tracked:
            # Details (curves, grids) for the newest runs and this one.
            detailed = [r for r in tracked[-MAX_RUNS_WITH_DETAILS:] if r != current_id]
            detailed += [current_id] if current_id in tracked else []
            loss_keys = sorted({c[len("metrics."):] for c in runs.columns if c.startswith("metrics.loss/")})
            history = pd.concat([fetch_histories(client, detailed, loss_keys + metric_keys), history],
                                ignore_index=True)
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
        report.plot_curves(history, labels, root / CURVES_PNG, metric_keys,
                           "no metrics during training (evaluate.every_epochs is 0)")
        sections = page_sections(cfg, root, metrics, training, table, current_row, current_id, other_grids)
        title = f"GauGAN report: {metrics.get('protocol', {}).get('dataset', cfg.tracking.experiment_name)}"
        atomic_write_text(root / PAGE, report.render_page(title, sections))
    print(f"report: {len(table)} run(s) compared -> {PAGE} ({TABLE_MD}, {TABLE_CSV})")


def page_sections(cfg: Config, root: Path, metrics: dict, training: dict, table: pd.DataFrame,
                  current_row: int | None, current_id: str | None,
                  other_grids: list[tuple[str, Path]]) -> list[report.Section]:
    """The page top down: numbers and grid, the judge per class, runs and plots, the rest, the protocol."""
    protocol = metrics.get("protocol", {})
    sections = [report.Section("This run", report.headline_html(metrics, metrics.get("unavailable", {}),
                                                                 context_lines(protocol)), anchor="headline")]
    grid = root / GENERATED_GRID
    if grid.is_file():
        sections.append(report.Section("Label | generated | real", report.figure_html(
            grid, "validation label maps | generated | real (this run)", scale=report.readable_scale(grid)),
            anchor="samples"))
    rows = read_per_class(root / PER_CLASS)
    if rows:
        unreliable = metrics.get("classes_not_judged_reliably", [])
        note = (f"{len(unreliable)} class(es) not judged reliably: {', '.join(unreliable)}. " if unreliable else "")
        sections.append(report.Section("The judge, class by class", report.per_class_html(rows) + report.text_html(
            f"IoU of the segmenter on the generated images against their label maps, next to the same segmenter "
            f"on the real photos (what a perfect generator could reach). {note}A class whose real-photo IoU is "
            "below 20% is not judged reliably: its generated IoU measures the segmenter, not the generator. "
            f"Also as {PER_CLASS.name}."), anchor="judge"))
    sections.append(report.Section("Runs compared", report.table_html(table, current_row) + report.text_html(
        f"One row per run of the MLflow experiment '{cfg.tracking.experiment_name}' (the highlighted row is this "
        "run); columns between 'run' and 'FID' are the parameters that differ. mIoU and accuracy in percent. "
        f"Also as {TABLE_MD.name} and {TABLE_CSV.name}. Experiments that DVC completed without training "
        "(run-cache) have no row of their own: `gaugan link-experiments` lists them."), anchor="runs"))
    comparison = root / COMPARISON
    if comparison.is_file():
        results = json.loads(comparison.read_text())
        sections.append(report.Section("Methods compared on one protocol", report.methods_html(results) + report.text_html(
            f"{results.get('what', '')}: every method trained on the same store with the same judge, "
            f"{results.get('equal_steps', '?')} steps each (equal steps) or for the wall time "
            f"{results.get('reference_candidate', 'the first method')} needs for them (equal time), or the steps of "
            "the method's own schedule, as the train stage runs it (full schedule). Mean ± standard "
            f"deviation over the seeds; CPU: {results.get('cpu', '?')}, {parallel_runs(results)}, "
            f"torch {results.get('torch', '?')}. From {COMPARISON.name} (scripts/compare_methods.py)."),
            anchor="methods"))
    sections.append(report.Section("Plots", "".join([
        report.figure_html(root / METRICS_PNG, "metrics per run"),
        report.figure_html(root / CURVES_PNG, "metrics during training (evaluate.every_epochs), against the step"),
        report.figure_html(root / LOSSES_PNG, "training losses")]), anchor="plots"))
    samples = []
    training_grid = latest_training_samples(root / cfg.train.checkpoint_dir)
    if training_grid is not None:
        samples.append((training_grid, f"training samples at {training_grid.stem.replace('_', ' ')}", SAMPLE_SCALE))
    samples += [(path, f"{name}: label | generated | real", SAMPLE_SCALE) for name, path in other_grids]
    if (root / DATA_SAMPLES).is_file():
        samples.append((root / DATA_SAMPLES, "training data samples", 1))
    if samples:
        sections.append(report.Section("More samples", "".join(
            report.figure_html(path, caption, scale=scale) for path, caption, scale in samples), anchor="more"))
    sections.append(report.Section("Protocol", protocol_html(metrics, training, current_id), collapsed=True,
                                   anchor="protocol"))
    return sections


def parallel_runs(comparison: dict) -> str:
    """How the comparison's runs shared the machine, as the report says it."""
    runs, threads = comparison.get("runs_at_a_time", 1), comparison.get("threads_per_run", comparison.get("num_threads"))
    each = f"{threads} thread{'s' if threads != 1 else ''}"
    return f"{runs} runs at a time, {each} each" if runs > 1 else f"one run at a time, {each}"


def context_lines(protocol: dict) -> list[str]:
    segmenter = protocol.get("segmenter", {}).get("segmenter", "-")
    generation = protocol.get("generation", {})
    lines = [f"{protocol.get('dataset', '?')}: {protocol.get('num_images', '?')} validation images at "
             f"{str(protocol.get('resolution', '?')).split(' ')[0]}; judged by {segmenter}."]
    if generation.get("checkpoint"):
        chosen = generation.get("selection")
        choice = (f", the best by {chosen['metric']} during training (epoch {chosen['epoch']}, step {chosen['step']}, "
                  f"{chosen['split']} split)" if chosen else "")
        lines.append(f"Generated by {generation['checkpoint']} ({generation.get('weights', '?')} weights{choice}).")
    return lines


def protocol_html(metrics: dict, training: dict, run_id: str | None) -> str:
    """Where this report was built and the full evaluation protocol, key by key."""
    context = current_context()
    items: dict[str, object] = {
        "DVC experiment": context.exp_name or "(none: the workspace)",
        "git commit": (context.baseline_rev or context.commit or "(not a git repository)")[:12],
        "MLflow run": run_id or "(tracking off)",
    }
    for name, reason in metrics.get("unavailable", {}).items():
        items[f"{name} unavailable"] = reason
    during = training.get("evaluation_during_training", {})
    items.update({f"during training: {key}": json.dumps(value) if isinstance(value, (dict, list)) else value
                  for key, value in during.items() if key != "history"})
    protocol = flatten(metrics.get("protocol", {}))
    items.update({f"protocol: {key}": json.dumps(value) if isinstance(value, (dict, list)) else value
                  for key, value in protocol.items()})
    return report.definition_list_html(items)


if __name__ == "__main__":
    run_stage("report", run)
