"""Commands about experiments and tracking: preset, ui, link-experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import command


@command("ui")
def ui_command(
    params: Annotated[str, typer.Option(help="the params file naming the tracking settings")] = "params.yaml",
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 5000,
) -> None:
    """Open the MLflow UI on the project's tracking store (the same URI the stages log to)."""
    import subprocess

    from pipeline.params import load_config, repo_root
    from pipeline.tracking import resolve_tracking_uri

    cfg = load_config(params)
    uri = resolve_tracking_uri(cfg, repo_root())
    if uri.startswith(("http://", "https://")):
        typer.echo(f"the tracking store is a server already: open {uri} in a browser")
        return
    typer.echo(f"MLflow UI on {uri} at http://{host}:{port} (Ctrl-C stops it)")
    raise typer.Exit(subprocess.call(ui_command_line(uri, repo_root(), host, port)))


def ui_command_line(uri: str, root: Path, host: str, port: int) -> list[str]:
    """``mlflow ui`` on the store ``uri``, with new experiments' artifacts where the stages put them."""
    import sys

    from pipeline.tracking import tracking_root

    artifacts = (tracking_root(root) / "mlartifacts").as_uri()
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root", artifacts,
            "--host", host, "--port", str(port)]


@command("preset")
def preset_command(
    name: Annotated[str, typer.Argument(help="a file in presets/ without .yaml (e.g. gpu-ade20k), or a path")],
) -> None:
    """Print a preset as -S overrides: `dvc exp run $(gaugan preset gpu-ade20k)`."""
    from pipeline.presets import preset_config, preset_overrides, preset_path

    path = preset_path(name, Path.cwd())
    preset_config(path)  # validate against params.yaml before anything runs
    typer.echo(" ".join(f"-S {override}" for override in preset_overrides(path)))


@command("link-experiments")
def link_experiments_command(
    params: Annotated[str, typer.Option(help="the params file naming the tracking settings")] = "params.yaml",
) -> None:
    """After a sweep: tie MLflow runs to DVC experiments and list experiments without a run."""
    from pipeline.params import load_config, repo_root
    from pipeline.runs import link_sweep

    cfg = load_config(params)
    links = link_sweep(cfg, repo_root())
    typer.echo(f"{'experiment':24s} {'commit':8s} {'state':8s} {'status':9s} run")
    for link in links:
        experiment = link.experiment
        run = link.source_run_id or (link.run_ids[0] if link.run_ids else "-")
        note = f" (outputs of {link.source_name}'s run)" if link.source_name else ""
        typer.echo(f"{experiment.name[:24]:24s} {experiment.rev[:7]:8s} {experiment.state or '-':8s} "
                   f"{link.status:9s} {run}{note}")
    restored = [link.experiment.name for link in links if link.status == "restored"]
    missing = [link.experiment.name for link in links if link.status == "no-run"]
    if restored:
        typer.echo(f"\n{len(restored)} experiment(s) made no MLflow run of their own: DVC restored their "
                   f"outputs from its run-cache or had nothing to run: {', '.join(restored)}")
    if missing:
        typer.echo(f"\n{len(missing)} experiment(s) have no MLflow run at all (tracking off, failed before "
                   f"training, or no run.json in the DVC cache): {', '.join(missing)}")
