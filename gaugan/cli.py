"""The ``gaugan`` command line (typer). The only place in the library that parses arguments.

Each command is a thin wrapper: parse options, call the library, print the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="SPADE / GauGAN: semantic image synthesis (Park et al., CVPR 2019).",
)

# ---- networks and checkpoints (issue 2): synthesize, params ----
# torch-heavy imports live inside these commands so that `gaugan --help` stays instant.


@app.command("synthesize")
def synthesize_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="one of our checkpoints or an official latest_net_G.pth"),
    dataset: str = typer.Option(..., "--dataset", help="the dataset whose label conventions the label map follows"),
    label: Path = typer.Option(..., "--label", help="label map PNG (class indices, any size)"),
    output: Path = typer.Option(..., "--output", help="where to write the generated PNG"),
    instance: Optional[Path] = typer.Option(None, "--instance", help="instance map PNG (datasets with instance edges)"),
    style: Optional[Path] = typer.Option(None, "--style", help="style photo (VAE generators only)"),
    seed: int = typer.Option(0, "--seed", help="seed of z (VAE generators)"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
    use_ema: bool = typer.Option(True, "--ema/--no-ema", help="use the EMA weights when the checkpoint has them"),
) -> None:
    """Generate one image from one label map."""
    from gaugan.config import DATASET_NAMES, ConfigError
    from gaugan.data.io import DataError
    from gaugan.models.official import CheckpointError
    from gaugan.synthesize import SynthesisError, synthesize_file

    if dataset not in DATASET_NAMES:
        _fail(f"--dataset: got {dataset!r}, expected one of {', '.join(DATASET_NAMES)}")
    try:
        written = synthesize_file(checkpoint, dataset, label, output, instance, style, seed, device, use_ema)
    except (DataError, CheckpointError, ConfigError, SynthesisError) as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"{err.filename or output}: cannot write the output ({err.strerror})")
    typer.echo(f"wrote {written}")


@app.command("params")
def params_command(
    dataset: str = typer.Option(..., "--dataset", help="a dataset with a published configuration"),
    as_json: bool = typer.Option(False, "--json", help='print {"G": n, "D": n, "E": n}'),
) -> None:
    """Parameter counts of G, D and E at the published configuration for a dataset."""
    from gaugan.config import ConfigError
    from gaugan.data.registry import published_spec
    from gaugan.models import published_parameter_counts

    try:
        spec = published_spec(dataset)
    except ConfigError as err:
        _fail(f"--dataset: {err}")
    counts = published_parameter_counts(spec)
    if as_json:
        typer.echo(json.dumps(counts))
        return
    typer.echo(f"{dataset}: {spec.label_channels} label channels, {spec.image_size[0]}x{spec.image_size[1]} (HxW)")
    for name, count in counts.items():
        typer.echo(f"{name}  {count:>12,}  ({count / 1e6:.2f} M)")


def _fail(message: str) -> NoReturn:
    """A user error: the message on stderr, exit code 2, no traceback."""
    typer.echo(message, err=True)
    raise typer.Exit(2)


# ---- datasets (issue 3): check-data ----


@app.command("check-data")
def check_data_command(
    dataset: str = typer.Option(..., "--dataset", help="landscapes, ade20k, ade20k_outdoor, coco, cityscapes, facades or custom"),
    root: Path = typer.Option(..., "--root", help="the dataset folder in its official layout (or the custom layout)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="custom: number of classes (default: inferred)"),
    dontcare: Optional[int] = typer.Option(None, "--dontcare", help="custom: the label value meaning don't care (default 255)"),
    no_dontcare: bool = typer.Option(False, "--no-dontcare", help="custom: no value means don't care"),
    use_instance: Optional[bool] = typer.Option(None, "--instance/--no-instance",
                                                help="check instance maps (default: the dataset's convention)"),
    outdoor_list: Optional[Path] = typer.Option(None, "--outdoor-list", help="ade20k_outdoor: a file of image stems"),
    num_workers: int = typer.Option(2, "--num-workers", help="processes reading files"),
) -> None:
    """Check a dataset folder as preprocessing would: summary, or every problem (exit 1)."""
    from gaugan.config import DATASET_NAMES, Config, ConfigError, replace
    from gaugan.data.check import check_dataset, format_report
    from gaugan.data.io import DataError

    if dataset not in DATASET_NAMES:
        _fail(f"--dataset: got {dataset!r}, expected one of {', '.join(DATASET_NAMES)}")
    custom = {"num_classes": num_classes}
    if no_dontcare:
        custom["dontcare_label"] = None
    elif dontcare is not None:
        custom["dontcare_label"] = dontcare
    try:
        cfg = replace(Config(), data={"dataset": dataset, "use_instance": use_instance, "custom": custom,
                                      "outdoor_list": str(outdoor_list) if outdoor_list else None})
        report = check_dataset(cfg.data, root, repo_root=Path.cwd(), num_workers=num_workers)
    except (DataError, ConfigError) as err:
        _fail(str(err))
    typer.echo(format_report(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command("bench-loader")
def bench_loader_command(
    size: int = typer.Option(256, "--size", help="crop size (the store is built at 286/256 of it, as published)"),
    num_images: int = typer.Option(256, "--num-images", help="training images in the generated store"),
    batch_size: int = typer.Option(32, "--batch-size"),
    num_workers: int = typer.Option(2, "--num-workers"),
    num_batches: int = typer.Option(100, "--num-batches", help="batches timed after the warm-up"),
    store: Optional[Path] = typer.Option(None, "--store", help="benchmark an existing store instead of a generated one"),
    output: Path = typer.Option(Path("reports/bench_loader.json"), "--output", help="where to write the result"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Measure the training loader's images/s (random crop + flip, workers) from a store."""
    import tempfile

    from gaugan.data.bench import benchmark_loader, build_benchmark_store
    from gaugan.data.io import DataError, atomic_write_json

    try:
        with tempfile.TemporaryDirectory(prefix="gaugan-bench-") as work:
            store_dir = store if store is not None else build_benchmark_store(work, size, num_images, seed, num_workers)
            result = benchmark_loader(store_dir, batch_size, num_workers, num_batches, seed=seed)
    except (DataError, ValueError) as err:
        _fail(str(err))
    atomic_write_json(output, result)
    typer.echo(f"{result['images_per_s']} images/s ({result['config']['image_shape_chw']}, batch {batch_size}, "
               f"{num_workers} workers, load {result['uptime']['loadavg_before']}) -> {output}")


# ---- training (issue 4): bench ----


@app.command("bench")
def bench_command(
    overrides: list[str] = typer.Option([], "-S", "--set", help="params override section.key=value (repeatable)"),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="the parameters file"),
    steps: int = typer.Option(20, "--steps", help="timed G+D steps"),
    warmup: int = typer.Option(3, "--warmup", help="untimed steps first"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto"),
    reference_schedule: bool = typer.Option(
        False, "--reference-schedule",
        help="run the official code's schedule instead (D weight grads in the G step, fake grad in the D step, fp32, NCHW, unfused Adam)"),
    compare: bool = typer.Option(False, "--compare", help="run both schedules, each in its own process, and the speed-up"),
    repeats: int = typer.Option(
        1, "--repeats", help="with --compare: alternate the two schedules this many times each and compare medians"),
    count_flops: bool = typer.Option(True, "--flops/--no-flops", help="count model FLOPs of one step (MFU on GPU)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's choice)"),
    output: Optional[Path] = typer.Option(None, "--output", help="also write the JSON here"),
) -> None:
    """Training speed of G step + D step on synthetic batches: images/s, step time, peak memory, MFU.

    E.g. the CPU target configuration: gaugan bench -S data.dataset=custom -S data.custom.num_classes=8
    -S data.custom.dontcare_label=null -S data.load_size=64 -S data.crop_size=64 --compare"""
    import os

    from gaugan.config import ConfigError
    from gaugan.data.io import atomic_write_json
    from gaugan.data.registry import resolve_dataset
    from gaugan.train.bench import BenchSettings, compare_schedules, run_benchmark
    from gaugan.train.distributed import resolve_device
    from pipeline.params import load_config

    if steps < 1 or warmup < 0:
        _fail(f"--steps must be >= 1 and --warmup >= 0, got --steps {steps} --warmup {warmup}")
    if repeats < 1 or (repeats > 1 and not compare):
        _fail(f"--repeats must be >= 1 and needs --compare when above 1, got --repeats {repeats}")
    if threads is not None:
        if threads < 1:
            _fail(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by --compare's child processes
    try:
        cfg = load_config(params, overrides)
        spec = resolve_dataset(cfg.data)
        torch_device = resolve_device(device)
    except ConfigError as err:
        _fail(str(err))
    settings = BenchSettings(steps=steps, warmup=warmup, reference_schedule=reference_schedule, count_flops=count_flops)
    if compare:
        result = compare_schedules(cfg, spec, torch_device, settings, repeats)
    else:
        result = run_benchmark(cfg, spec, torch_device, settings)
    result = {**result, "params_file": str(params), "config_overrides": list(overrides)}
    if output is not None:
        atomic_write_json(output, result)
    typer.echo(json.dumps(result))


# ---- evaluation (issue 5) ----


@app.command("evaluate")
def evaluate_command(
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="generator to score: one of ours or an official latest_net_G.pth "
                                   "(default: evaluate.checkpoint, else <train.checkpoint_dir>/generator.pt)"),
    overrides: list[str] = typer.Option([], "-S", "--set", help="params override section.key=value (repeatable)"),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="the parameters file"),
) -> None:
    """Generate the validation set and score it (FID, mIoU, accuracy): the generate and evaluate
    stages outside DVC, e.g. `gaugan evaluate --checkpoint latest_net_G.pth -S data.dataset=ade20k`
    after `dvc repro preprocess`, to re-measure the paper's Table 1. Writes reports/metrics.json."""
    from gaugan.config import ConfigError
    from gaugan.data.io import DataError
    from gaugan.generate import GenerationError
    from gaugan.models.official import CheckpointError
    from gaugan.segmenters.published import SegmenterWeightsError
    from gaugan.segmenters.trained import SegmenterCheckpointError
    from pipeline.params import load_config, repo_root
    from stages import evaluate as evaluate_stage
    from stages import generate as generate_stage

    if checkpoint is not None:
        overrides = [*overrides, f"evaluate.checkpoint={checkpoint.resolve()}"]
    try:
        cfg = load_config(params, overrides)
        root = repo_root()
        generate_stage.run(cfg, root)
        evaluate_stage.run(cfg, root)
    except (ConfigError, DataError, CheckpointError, GenerationError, SegmenterWeightsError,
            SegmenterCheckpointError) as err:
        _fail(str(err))
    metrics = json.loads((root / evaluate_stage.METRICS_PATH).read_text())
    typer.echo(json.dumps({key: metrics[key] for key in ("fid", "miou", "accuracy", "real_miou", "real_accuracy",
                                                         "fid_status", "segmentation_status")}))

# ---- pipeline (issue 6): import-checkpoint, classes, ui, link-experiments ----
# pipeline/ (MLflow, DVC, YAML) is imported inside the commands: the library itself never
# imports it, and `gaugan --help` stays fast.


@app.command("import-checkpoint")
def import_checkpoint_command(
    source: Path = typer.Argument(..., help="the authors' latest_net_G.pth (latest_net_E.pth beside it for VAE models)"),
    dataset: str = typer.Option(..., "--dataset", help="the dataset it was trained on: ade20k, coco, cityscapes, ..."),
    output: Path = typer.Option(..., "--output", help="where to write our checkpoint, e.g. checkpoints/official/ade20k.pt"),
) -> None:
    """Convert an official pretrained generator into our checkpoint format (synthesize, evaluate)."""
    from gaugan.config import ConfigError
    from gaugan.data.registry import published_spec
    from gaugan.importing import import_official_generator
    from gaugan.models.official import CheckpointError

    try:
        summary = import_official_generator(source, output, published_spec(dataset))
    except ConfigError as err:
        _fail(f"--dataset: {err}")
    except CheckpointError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"{err.filename or output}: {err.strerror}")
    generator = summary["generator"]
    typer.echo(f"wrote {summary['destination']}: {dataset}, {generator['arch']} ngf {generator['ngf']}, "
               f"{generator['num_upsampling_layers']} upsampling, {generator['param_free_norm']} norm, "
               f"{'VAE' if summary['vae'] else 'no VAE'}, {summary['parameters']:,} parameters")


@app.command("classes")
def classes_command(
    dataset: str = typer.Option(..., "--dataset", help="landscapes, ade20k, ade20k_outdoor, coco, cityscapes, facades or custom"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="custom datasets: the number of classes"),
) -> None:
    """Print a dataset's class table: stored label index, colour in sample grids, name."""
    from gaugan.config import Config, ConfigError, replace
    from gaugan.data.classes import class_names, label_palette
    from gaugan.data.registry import resolve_dataset

    if dataset == "custom" and num_classes is None:
        _fail("--dataset custom needs --num-classes N (the preprocess stage infers it from "
              "the training labels and records it in <data.processed_dir>/manifest.json)")
    try:
        cfg = replace(Config(), data={"dataset": dataset, "custom": {"num_classes": num_classes}})
        spec = resolve_dataset(cfg.data)
    except ConfigError as err:
        _fail(f"--dataset {dataset}: {err}")
    names = class_names(spec)
    palette = label_palette(len(names), spec.name)
    typer.echo(f"{spec.name}: {spec.label_nc} classes"
               + (f", index {spec.label_nc} = don't care" if spec.contain_dontcare else "")
               + (", + 1 instance edge channel" if spec.use_instance else "")
               + f" -> {spec.label_channels} label channels")
    for index, (name, colour) in enumerate(zip(names, palette)):
        typer.echo(f"{index:4d}  #{colour[0]:02x}{colour[1]:02x}{colour[2]:02x}  {name}")


@app.command("ui")
def ui_command(
    params: str = typer.Option("params.yaml", "--params", help="the params file naming the tracking settings"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (127.0.0.1: this machine only)"),
    port: int = typer.Option(5000, "--port"),
) -> None:
    """Open the MLflow UI on the project's tracking store (the same URI the stages log to)."""
    import subprocess
    import sys

    from gaugan.config import ConfigError
    from pipeline.params import load_config, repo_root
    from pipeline.tracking import resolve_tracking_uri, tracking_root

    try:
        cfg = load_config(params)
    except ConfigError as err:
        _fail(str(err))
    uri = resolve_tracking_uri(cfg, repo_root())
    artifacts = (tracking_root(repo_root()) / "mlartifacts").as_uri()
    typer.echo(f"MLflow UI on {uri} at http://{host}:{port} (Ctrl-C stops it)")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--default-artifact-root", artifacts, "--host", host, "--port", str(port)]
    raise typer.Exit(subprocess.call(command))


@app.command("preset")
def preset_command(name: str = typer.Argument(..., help="a file in presets/ without .yaml (e.g. gpu-ade20k), or a path")) -> None:
    """Print a preset as -S overrides: `dvc exp run $(gaugan preset gpu-ade20k)`."""
    from pathlib import Path

    from gaugan.config import ConfigError
    from pipeline.presets import preset_config, preset_overrides, preset_path

    try:
        path = preset_path(name, Path.cwd())
        preset_config(path)  # validate against params.yaml before anything runs
    except ConfigError as err:
        _fail(str(err))
    typer.echo(" ".join(f"-S {override}" for override in preset_overrides(path)))


@app.command("link-experiments")
def link_experiments_command(
    params: str = typer.Option("params.yaml", "--params", help="the params file naming the tracking settings"),
) -> None:
    """After a sweep: tie MLflow runs to DVC experiments and list experiments without a run."""
    from gaugan.config import ConfigError
    from pipeline.dvc import DvcError
    from pipeline.params import load_config, repo_root
    from pipeline.runs import link_sweep

    try:
        cfg = load_config(params)
        links = link_sweep(cfg, repo_root())
    except (ConfigError, DvcError) as err:
        _fail(str(err))
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
