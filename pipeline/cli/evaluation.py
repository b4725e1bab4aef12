"""Commands about evaluation: evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import command


@command("evaluate")
def evaluate_command(
    checkpoint: Annotated[Path | None, typer.Option(
        help="generator to score: one of ours or an official latest_net_G.pth "
             "(default: evaluate.checkpoint, else the one evaluate.checkpoint_choice names)")] = None,
    out: Annotated[Path, typer.Option(
        help="folder for generated/, metrics.json, per_class_iou.csv, generated_grid.png, generation.json")] = Path(
        "outputs/evaluation"),
    overrides: Annotated[list[str], typer.Option(
        "-S", "--set", help="params override section.key=value (repeatable)")] = [],  # noqa: B006 (typer reads it)
    params: Annotated[Path, typer.Option(help="the parameters file")] = Path("params.yaml"),
) -> None:
    """Generate the validation set and score it with every registered metric, outside DVC, e.g.
    `gaugan evaluate --checkpoint latest_net_G.pth -S data.dataset=ade20k` after `dvc repro
    preprocess`, to re-measure the paper's Table 1. Fetches the weights evaluation needs (as the
    weights stage does), writes into --out and logs nothing to MLflow (the stages do)."""
    from gaugan.data.io import atomic_write_json
    from gaugan.metrics.registry import registered_metrics
    from pipeline.evaluation import evaluate_generated, write_evaluation
    from pipeline.generation import generate
    from pipeline.params import load_config, repo_root
    from pipeline.weights import fetch_for_run

    if checkpoint is not None:
        overrides = [*overrides, f"evaluate.checkpoint={checkpoint.resolve()}"]
    cfg = load_config(params, overrides)
    root = repo_root()
    out = out if out.is_absolute() else root / out
    fetch_for_run(cfg, root, groups=("inception", "segmenter"), write=False)
    generation = generate(cfg, root, out / "generated", out / "generated_grid.png")
    atomic_write_json(out / "generation.json", generation)
    report = evaluate_generated(cfg, root, out / "generated", generation)
    write_evaluation(report, out / "metrics.json", out / "per_class_iou.csv")
    for metric in registered_metrics():
        reason = report.metrics["unavailable"].get(metric.name)
        typer.echo(f"{metric.heading}: {metric.format(report.metrics[metric.name])}"
                   + (f"  (unavailable: {reason})" if reason else ""))
    typer.echo(f"written to {out}: " + json.dumps({m.name: report.metrics[m.name] for m in registered_metrics()}))
