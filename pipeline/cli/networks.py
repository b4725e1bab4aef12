"""Commands about networks and checkpoints: synthesize, params, import-checkpoint, classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import check_dataset_name, command, fail


@command("synthesize")
def synthesize_command(
    checkpoint: Annotated[Path, typer.Option(help="one of our checkpoints or an official latest_net_G.pth")],
    dataset: Annotated[str, typer.Option(help="the dataset whose label conventions the label map follows")],
    label: Annotated[Path, typer.Option(help="label map PNG (class indices, any size)")],
    output: Annotated[Path, typer.Option(help="where to write the image: .png, .jpg/.jpeg or .webp")],
    instance: Annotated[Path | None, typer.Option(help="instance map PNG (datasets with instance edges)")] = None,
    style: Annotated[Path | None, typer.Option(help="style photo (VAE generators only)")] = None,
    seed: Annotated[int, typer.Option(help="seed of z (VAE generators) or of the 3D noise (OASIS)")] = 0,
    region: Annotated[list[str] | None, typer.Option(
        help="CLASS=SEED: re-draw the 3D noise of that class's region (repeatable; the studio's 'Regions')")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "auto",
    use_ema: Annotated[bool, typer.Option("--ema/--no-ema", help="use the EMA weights when the checkpoint has them")] = True,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for torch (default: OMP_NUM_THREADS, else all available cores)")] = None,
) -> None:
    """Generate one image from one label map (PNG, JPEG or WebP, as --output's suffix says)."""
    from gaugan.synthesize import synthesize_file
    from gaugan.threads import configure_threads

    check_dataset_name(dataset)
    configure_threads(threads, setting="--threads")
    class_seeds = {}
    for item in region or []:
        index, _, value = item.partition("=")
        if not (index.strip().isdigit() and value.strip().isdigit()):
            fail(f"--region: got {item!r}, expected CLASS=SEED with a class index and a seed, e.g. --region 6=17")
        class_seeds[int(index)] = int(value)
    try:
        written = synthesize_file(checkpoint, dataset, label, output, instance, style, seed, device, use_ema,
                                  class_seeds)
    except OSError as err:
        fail(f"{err.filename or output}: cannot write the output ({err.strerror})")
    typer.echo(f"wrote {written}")


@command("params")
def params_command(
    dataset: Annotated[str, typer.Option(help="a dataset with a published configuration")],
    model: Annotated[str, typer.Option(help="spade (G, D, E) or oasis (G, D), at its authors' configuration")] = "spade",
    as_json: Annotated[bool, typer.Option("--json", help='print {"G": n, "D": n[, "E": n]}')] = False,
) -> None:
    """Parameter counts of the networks of a method at its published configuration for a dataset."""
    from gaugan.config import ConfigError
    from gaugan.data.registry import published_spec
    from gaugan.models import METHODS, published_parameter_counts

    if model not in METHODS:
        fail(f"--model: got {model!r}, expected one of {', '.join(METHODS)}")
    try:
        spec = published_spec(dataset)
    except ConfigError as err:
        fail(f"--dataset: {err}")
    counts = published_parameter_counts(spec, model)
    if as_json:
        typer.echo(json.dumps(counts))
        return
    channels = spec.label_channels if model == "spade" else spec.num_label_values
    typer.echo(f"{dataset} ({model}): {channels} label channels, {spec.image_size[0]}x{spec.image_size[1]} (HxW)")
    for name, count in counts.items():
        typer.echo(f"{name}  {count:>12,}  ({count / 1e6:.2f} M)")


@command("import-checkpoint")
def import_checkpoint_command(
    source: Annotated[Path, typer.Argument(help="the authors' latest_net_G.pth (latest_net_E.pth beside it for VAE models)")],
    dataset: Annotated[str, typer.Option(help="the dataset it was trained on: ade20k, coco, cityscapes, ...")],
    output: Annotated[Path, typer.Option(help="where to write our checkpoint, e.g. checkpoints/official/ade20k.pt")],
) -> None:
    """Convert an official pretrained generator into our checkpoint format (synthesize, evaluate)."""
    from gaugan.config import ConfigError
    from gaugan.data.registry import published_spec
    from gaugan.importing import import_official_generator

    try:
        spec = published_spec(dataset)
    except ConfigError as err:
        fail(f"--dataset: {err}")
    try:
        summary = import_official_generator(source, output, spec)
    except OSError as err:
        fail(f"{err.filename or output}: {err.strerror}")
    generator = summary["generator"]
    typer.echo(f"wrote {summary['destination']}: {dataset}, {generator['arch']} ngf {generator['ngf']}, "
               f"{generator['num_upsampling_layers']} upsampling, {generator['param_free_norm']} norm, "
               f"{'VAE' if summary['vae'] else 'no VAE'}, {summary['parameters']:,} parameters")


@command("classes")
def classes_command(
    dataset: Annotated[str, typer.Option(help="landscapes, ade20k, ade20k_outdoor, coco, cityscapes, facades or custom")],
    num_classes: Annotated[int | None, typer.Option(help="custom datasets: the number of classes")] = None,
    root: Annotated[Path | None, typer.Option(
        help="custom datasets: what data.root names or the dataset folder; its classes.txt / classes.csv gives "
             "the names, colours and (without --num-classes) the class count")] = None,
) -> None:
    """Print a dataset's class table: stored label index, colour in sample grids, name."""
    from gaugan.config import Config, ConfigError, replace
    from gaugan.data.classes import class_colours, class_names, named_class_count, read_class_file
    from gaugan.data.registry import resolve_dataset
    from gaugan.data.sources import locate_dataset

    classes = None
    if root is not None and dataset != "custom":
        fail(f"--root is for custom datasets (their classes file); {dataset} has published classes")
    if root is not None:
        folder = locate_dataset(dataset, root)
        classes = read_class_file(folder)
        if classes is None:
            fail(f"--root {root}: no classes.txt or classes.csv in {folder}")
        if num_classes is None:
            num_classes = named_class_count(classes, Config().data.custom.dontcare_label)
    if dataset == "custom" and num_classes is None:
        fail("--dataset custom needs --num-classes N or --root with a classes.txt (the preprocess stage infers the "
             "count from the training labels and records it in <data.processed_dir>/manifest.json)")
    try:
        cfg = replace(Config(), data={"dataset": dataset, "custom": {"num_classes": num_classes}})
        spec = resolve_dataset(cfg.data)
    except ConfigError as err:
        fail(f"--dataset {dataset}: {err}")
    names = class_names(spec, classes)
    palette = class_colours(spec, classes)
    typer.echo(f"{spec.name}: {spec.label_nc} classes"
               + (f", index {spec.label_nc} = don't care" if spec.contain_dontcare else "")
               + (", + 1 instance edge channel" if spec.use_instance else "")
               + f" -> {spec.label_channels} label channels")
    for index, (name, colour) in enumerate(zip(names, palette)):
        typer.echo(f"{index:4d}  #{colour[0]:02x}{colour[1]:02x}{colour[2]:02x}  {name}")
