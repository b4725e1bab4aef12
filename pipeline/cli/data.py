"""Commands about datasets: check-data, bench-loader."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gaugan.config import DataConfig
from pipeline.cli.app import check_dataset_name, command, fail


@command("check-data")
def check_data_command(
    dataset: Annotated[str, typer.Option(help="landscapes, ade20k, ade20k_outdoor, coco, cityscapes, facades or custom")],
    root: Annotated[Path, typer.Option(
        help="what data.root names (the folder holding <dataset>/, e.g. data/raw) or the dataset folder itself")],
    num_classes: Annotated[int | None, typer.Option(help="custom: number of classes (default: inferred)")] = None,
    dontcare: Annotated[int | None, typer.Option(help="custom: the label value meaning don't care (default 255)")] = None,
    no_dontcare: Annotated[bool, typer.Option("--no-dontcare", help="custom: no value means don't care")] = False,
    use_instance: Annotated[bool | None, typer.Option(
        "--instance/--no-instance", help="check instance maps (default: the dataset's convention)")] = None,
    outdoor_list: Annotated[Path | None, typer.Option(help="ade20k_outdoor: a file of image stems")] = None,
    num_workers: Annotated[int, typer.Option(help="processes reading files")] = 2,
    max_image_pixels: Annotated[int, typer.Option(
        help="larger images are problems (corrupt files, decompression bombs); data.max_image_pixels")
    ] = DataConfig.max_image_pixels,
) -> None:
    """Check a dataset folder as preprocessing would and print a summary.

    Exit code 0: no problems; 1: problems in the data (every one is listed); 2: a usage
    error (a bad option value, a folder that does not exist).
    """
    from gaugan.config import Config, replace
    from gaugan.data.check import DatasetProblems, check_dataset, format_problems, format_report
    from gaugan.data.io import DataError
    from gaugan.data.sources import locate_dataset

    check_dataset_name(dataset)
    if not root.is_dir():
        fail(f"--root {root}: folder not found")
    custom = {"num_classes": num_classes}
    if no_dontcare:
        custom["dontcare_label"] = None
    elif dontcare is not None:
        custom["dontcare_label"] = dontcare
    cfg = replace(Config(), data={"dataset": dataset, "use_instance": use_instance, "custom": custom,
                                  "outdoor_list": str(outdoor_list) if outdoor_list else None,
                                  "max_image_pixels": max_image_pixels})
    try:
        report = check_dataset(cfg.data, locate_dataset(dataset, root), repo_root=Path.cwd(), num_workers=num_workers)
    except DatasetProblems as err:  # problems that stop the check early (no training pairs)
        typer.echo(format_problems(err.problems, err.root, err.hints))
        raise typer.Exit(1) from None
    except DataError as err:  # the folder is there but does not hold the dataset's layout
        typer.echo(format_problems([str(err)]))
        raise typer.Exit(1) from None
    typer.echo(format_report(report))
    if not report.ok:
        raise typer.Exit(1)


@command("bench-loader")
def bench_loader_command(
    size: Annotated[int, typer.Option(help="crop size (the store is built at 286/256 of it, as published)")] = 256,
    num_images: Annotated[int, typer.Option(help="training images in the generated store")] = 256,
    batch_size: Annotated[int, typer.Option()] = 32,
    num_workers: Annotated[int, typer.Option()] = 2,
    num_batches: Annotated[int, typer.Option(help="batches timed after the warm-up")] = 100,
    store: Annotated[Path | None, typer.Option(help="benchmark an existing store instead of a generated one")] = None,
    output: Annotated[Path, typer.Option(help="where to write the result")] = Path("reports/bench_loader.json"),
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Measure the training loader's images/s (random crop + flip, workers) from a store."""
    import tempfile

    from gaugan.data.bench import benchmark_loader, build_benchmark_store
    from gaugan.data.io import atomic_write_json

    try:
        with tempfile.TemporaryDirectory(prefix="gaugan-bench-") as work:
            store_dir = store if store is not None else build_benchmark_store(work, size, num_images, seed, num_workers)
            result = benchmark_loader(store_dir, batch_size, num_workers, num_batches, seed=seed)
    except ValueError as err:
        fail(str(err))
    atomic_write_json(output, result)
    typer.echo(f"{result['images_per_s']} images/s ({result['config']['image_shape_chw']}, batch {batch_size}, "
               f"{num_workers} workers, load {result['uptime']['loadavg_before']}) -> {output}")
