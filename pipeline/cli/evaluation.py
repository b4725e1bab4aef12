"""Commands about evaluation: evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.cli.app import command


@command("evaluate")
def evaluate_command(
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="generator to score: one of ours or an official latest_net_G.pth "
             "(default: evaluate.checkpoint, else <train.checkpoint_dir>/generator.pt)")] = None,
    overrides: Annotated[list[str], typer.Option(
        "-S", "--set", help="params override section.key=value (repeatable)")] = [],  # noqa: B006 (typer reads it)
    params: Annotated[Path, typer.Option(help="the parameters file")] = Path("params.yaml"),
) -> None:
    """Generate the validation set and score it (FID, mIoU, accuracy): the generate and evaluate
    stages outside DVC, e.g. `gaugan evaluate --checkpoint latest_net_G.pth -S data.dataset=ade20k`
    after `dvc repro preprocess`, to re-measure the paper's Table 1. Writes reports/metrics.json."""
    from pipeline.params import load_config, repo_root
    from stages import evaluate as evaluate_stage
    from stages import generate as generate_stage

    if checkpoint is not None:
        overrides = [*overrides, f"evaluate.checkpoint={checkpoint.resolve()}"]
    cfg = load_config(params, overrides)
    root = repo_root()
    generate_stage.run(cfg, root)
    evaluate_stage.run(cfg, root)
    metrics = json.loads((root / evaluate_stage.METRICS_PATH).read_text())
    typer.echo(json.dumps({key: metrics[key] for key in ("fid", "miou", "accuracy", "real_miou", "real_accuracy",
                                                         "fid_status", "segmentation_status")}))
