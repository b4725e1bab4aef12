"""Commands about experiments and tracking: preset, ui, link-experiments, sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import command, fail


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
    print_links(link_sweep(cfg, repo_root()))


def print_links(links: list) -> None:
    """The table of ``gaugan link-experiments``: each experiment, its commit, state and MLflow run."""
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


@command("sweep")
def sweep_command(
    from_file: Annotated[Path | None, typer.Option(
        "--from-file", help="experiments, one per line: name section.key=value ... (# comments)")] = None,
    overrides: Annotated[list[str], typer.Option(
        "-S", "--set", help="one experiment's override section.key=value (repeatable); key=a,b queues one "
                            "experiment per value")] = [],  # noqa: B006 (typer reads it)
    jobs: Annotated[int | None, typer.Option(
        help="experiments at a time (default: the GPUs divided by train.gpus; 1 on the CPU)")] = None,
    gpus: Annotated[str | None, typer.Option(
        help="GPU indices the experiments may use, e.g. 0-7 or 0,2,5 (default: every visible GPU)")] = None,
    params: Annotated[Path, typer.Option(help="the parameters file")] = Path("params.yaml"),
) -> None:
    """Run experiments in parallel through DVC's queue, one GPU set each, tracked in MLflow; then link
    the runs and rebuild the report. Without --from-file or -S it runs what is queued already.

    Exit code 1: an experiment failed or was not run (listed, with its log)."""
    import os
    import sys
    from collections import Counter

    from pipeline.launch import visible_device_count
    from pipeline.params import load_config, repo_root
    from pipeline.runs import link_sweep
    from pipeline.sweep import (
        SWEEP_DIR,
        DvcQueue,
        PlannedExperiment,
        SweepError,
        TrackingServer,
        check_clean_workspace,
        check_overrides,
        failure_note,
        plan_gpus,
        plan_tracking,
        progress_line,
        read_experiment_file,
        rebuild_report,
        run_sweep,
    )

    if from_file is not None and overrides:
        fail("--from-file and -S: give one of them (the file's lines carry their own overrides)")
    if jobs is not None and jobs < 1:
        fail(f"--jobs: got {jobs}, expected an integer >= 1")
    root = repo_root()
    cfg = load_config(params)
    planned = read_experiment_file(from_file) if from_file is not None else (
        [PlannedExperiment(None, tuple(overrides), "-S")] if overrides else [])
    configs = check_overrides(planned, params) or [cfg]
    untracked = [name for name in check_clean_workspace(root)
                 if from_file is None or (root / name).resolve() != from_file.resolve()]
    if untracked:
        typer.echo(f"sweep: files git does not track do not reach the experiments: {', '.join(untracked[:5])}"
                   f"{' ...' if len(untracked) > 5 else ''}")
    tracking = plan_tracking(cfg, root, os.environ)
    on_gpu = gpus is not None or any(config.train.device != "cpu" for config in configs)
    gpu_plan = plan_gpus(gpus, visible_device_count() if on_gpu else 0, os.environ.get("CUDA_VISIBLE_DEVICES"),
                         configs)
    jobs = gpu_plan.max_parallel if jobs is None else jobs
    if gpu_plan.gpus and jobs > gpu_plan.max_parallel:
        typer.echo(f"sweep: --jobs {jobs} with {len(gpu_plan.gpus)} GPU(s) and train.gpus up to "
                   f"{gpu_plan.per_experiment}: experiments beyond {gpu_plan.max_parallel} wait for free GPUs")
    server = None
    if tracking.serve is not None:
        server = TrackingServer(tracking.serve, tracking.serve.parent / "mlartifacts", root / SWEEP_DIR / "mlflow.log")

    interactive = sys.stderr.isatty()
    shown: list[str] = []  # the progress line on the terminal, or the counts last printed

    def say(message: str) -> None:
        if interactive and shown:
            typer.echo("", err=True)  # end the progress line
            shown.clear()
        typer.echo(f"sweep: {message}")

    def progress(tasks: list, elapsed: float) -> None:
        counts = str(sorted(Counter(task.status for task in tasks).items()))
        if interactive:
            typer.echo(f"\r{progress_line(tasks, elapsed)}", nl=False, err=True)
            shown[:] = [counts]
        elif shown != [counts]:  # a log file: a line when the counts change
            typer.echo(progress_line(tasks, elapsed), err=True)
            shown[:] = [counts]

    result = run_sweep(DvcQueue(root), planned, jobs, tracking, gpu_plan, server, say, progress)
    if interactive and shown:
        typer.echo("", err=True)
    minutes, seconds = divmod(int(result.seconds), 60)
    failed = [task for task in result.tasks if task.status != "Success"]
    typer.echo(f"\nsweep: {len(result.tasks)} experiment(s) in {minutes}m{seconds:02d}s: "
               f"{len(result.tasks) - len(failed)} succeeded, {len(failed)} failed or not run")
    for task in result.tasks:
        typer.echo(f"  {task.name:24s} {task.status}")
        if task.status == "Failed":
            note = failure_note(task)
            typer.echo(f"    {note + '; ' if note else ''}log: {task.log or f'dvc queue logs {task.name}'}")
    if result.workers_lost:
        typer.echo("sweep: the queue workers stopped with experiments left (dvc queue status); gaugan sweep "
                   "starts them again")

    if cfg.tracking.enabled:
        typer.echo("")
        print_links(link_sweep(cfg, root))
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    problem = rebuild_report(root, env)
    if problem is None:
        typer.echo("\nsweep: report rebuilt over every run: reports/index.html (dvc exp show --only-changed: the "
                   "headline metrics per experiment)")
        try:
            check_clean_workspace(root)
        except SweepError:
            typer.echo("sweep: the rebuild changed tracked files (dvc.lock): commit them before the next sweep, "
                       "whose experiments start from the last commit")
    else:
        typer.echo(f"\nsweep: the report was not rebuilt ({problem}); it needs the baseline's outputs in the "
                   "workspace (dvc repro once), then dvc repro --force --single-item report")
    if failed:
        raise typer.Exit(1)
