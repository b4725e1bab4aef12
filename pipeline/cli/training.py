"""Commands about training: bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import command, fail


@command("bench")
def bench_command(
    overrides: Annotated[list[str], typer.Option(
        "-S", "--set", help="params override section.key=value (repeatable)")] = [],  # noqa: B006 (typer reads it)
    params: Annotated[Path, typer.Option(help="the parameters file")] = Path("params.yaml"),
    steps: Annotated[int, typer.Option(help="timed G+D steps")] = 20,
    warmup: Annotated[int, typer.Option(help="untimed steps first")] = 3,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "cpu",
    reference_schedule: Annotated[bool, typer.Option(
        help="run the official code's schedule instead (D weight grads in the G step, fake grad in the D step, "
             "fp32, NCHW, unfused Adam)")] = False,
    compare: Annotated[bool, typer.Option(
        help="run both schedules, each in its own process, and the speed-up")] = False,
    repeats: Annotated[int, typer.Option(
        help="with --compare: alternate the two schedules this many times each and compare medians")] = 1,
    count_flops: Annotated[bool, typer.Option("--flops/--no-flops", help="count model FLOPs of one step (MFU on GPU)")] = True,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for torch (default: train.num_threads, else OMP_NUM_THREADS, else all available cores)")] = None,
    output: Annotated[Path | None, typer.Option(help="also write the JSON here")] = None,
) -> None:
    """Training speed of G step + D step on synthetic batches: images/s, step time, peak memory, MFU.

    E.g. the CPU target configuration: gaugan bench -S data.dataset=custom -S data.custom.num_classes=8
    -S data.custom.dontcare_label=null -S data.load_size=64 -S data.crop_size=64 --compare"""
    from gaugan.data.io import atomic_write_json
    from gaugan.data.registry import resolve_dataset
    from gaugan.threads import configure_threads
    from gaugan.train.bench import BenchSettings, compare_schedules, run_benchmark
    from gaugan.train.distributed import resolve_device
    from pipeline.params import load_config

    if steps < 1 or warmup < 0:
        fail(f"--steps must be >= 1 and --warmup >= 0, got --steps {steps} --warmup {warmup}")
    if repeats < 1 or (repeats > 1 and not compare):
        fail(f"--repeats must be >= 1 and needs --compare when above 1, got --repeats {repeats}")
    cfg = load_config(params, overrides)
    # Synthetic batches: no loader workers. Exported to --compare's child processes.
    if threads is not None:
        configure_threads(threads, export=True, setting="--threads")
    else:
        configure_threads(cfg.train.num_threads, export=True)
    spec = resolve_dataset(cfg.data)
    torch_device = resolve_device(device)
    settings = BenchSettings(steps=steps, warmup=warmup, reference_schedule=reference_schedule, count_flops=count_flops)
    if compare:
        result = compare_schedules(cfg, spec, torch_device, settings, repeats)
    else:
        result = run_benchmark(cfg, spec, torch_device, settings)
    result = {**result, "params_file": str(params), "config_overrides": list(overrides)}
    if output is not None:
        atomic_write_json(output, result)
    typer.echo(json.dumps(result))
