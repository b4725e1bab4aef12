"""Commands about the studio: studio (serve it), bench-studio (its generation latency)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import check_dataset_name, command, fail

DEFAULT_CHECKPOINT = Path("checkpoints/train/generator.pt")


def prefer_passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spinning, unless the user chose (OMP_WAIT_POLICY).

    Must run before torch is first imported in the process. A studio serves short bursts on
    a machine that is doing other work; with spinning threads a 64x64 generation on this
    project's 2-core CPU under a load average of 10 took 1.3-1.5 s instead of 30-150 ms
    (measured alternately with and without this setting).
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@command("studio")
def studio_command(
    checkpoint: Annotated[Path, typer.Option(
        help="one of our checkpoints, or an official latest_net_G.pth (with --dataset)")] = DEFAULT_CHECKPOINT,
    dataset: Annotated[str | None, typer.Option(
        help="the dataset the model was trained on (needed for official files; ours carry it)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on; anything but loopback opens it to the network "
                                           "and needs --allowed-host")] = "127.0.0.1",
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="a name or address browsers on the network will use to reach the studio (repeat "
                               "for more); needed to serve beyond loopback, and the only names answered besides "
                               "the loopback ones")] = None,
    port: Annotated[int, typer.Option(help="port to listen on")] = 7860,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "auto",
    segmenter_weights_dir: Annotated[Path, typer.Option(
        help="the published segmenters' weights (photo -> label map), as evaluate.segmenter_weights_dir")]
        = Path("data/weights"),
    segmenter_checkpoint: Annotated[Path, typer.Option(
        help="the pipeline-trained segmenter, used where no published one is available")]
        = Path("checkpoints/segmenter/segmenter.pt"),
    use_ema: Annotated[bool, typer.Option("--ema/--no-ema", help="use the EMA weights when the checkpoint has them")]
        = True,
    store: Annotated[Path, typer.Option(
        help="the preprocessed store (data.processed_dir) whose class names and colours to show, when it was "
             "written for the model's dataset (a custom dataset's classes file)")] = Path("data/processed"),
) -> None:
    """Paint a label map in the browser and watch the photo appear (GauGAN), served locally until Ctrl-C."""
    prefer_passive_openmp()
    from gaugan.data.store import MANIFEST, read_manifest
    from gaugan.studio.app import studio_for_checkpoint
    from gaugan.studio.server import is_loopback, make_server, open_socket, served_names, url_of
    from gaugan.train.distributed import resolve_device

    if dataset is not None:
        check_dataset_name(dataset)
    if checkpoint == DEFAULT_CHECKPOINT and not checkpoint.is_file():
        fail(f"{checkpoint}: no trained generator yet; run the pipeline first (dvc repro), or pass --checkpoint "
             f"(one of ours, or an official latest_net_G.pth with --dataset)")
    names = served_names(host, allowed_host or [])  # before anything is loaded: beyond loopback only on purpose
    manifest = read_manifest(store) if (store / MANIFEST).is_file() else None
    listener = open_socket(host, port)
    app = studio_for_checkpoint(
        checkpoint, dataset, resolve_device(device, setting="--device"), segmenter_weights_dir, segmenter_checkpoint, use_ema,
        allowed_hosts=names,  # keeps out web pages that make their own name resolve to this computer
        manifest=manifest,
    )
    shown = None
    if not is_loopback(host):
        typer.echo(f"warning: --host {host} serves the studio beyond this computer: anyone who can reach "
                   f"port {listener.getsockname()[1]} on that network can use it (there is no login); it answers "
                   f"to {', '.join(names)}", err=True)
        shown = allowed_host[0]  # a name it answers to, which a wildcard address is not
    typer.echo(f"GauGAN studio: {url_of(listener, shown)}  (Ctrl-C to stop)")
    make_server(app).run(sockets=[listener])


@command("bench-studio")
def bench_studio_command(
    requests: Annotated[int, typer.Option(help="timed requests per run at 64x64")] = 30,
    large_requests: Annotated[int, typer.Option(help="timed requests per run at the ADE20K size")] = 5,
    warmup: Annotated[int, typer.Option(help="untimed requests before each run")] = 3,
    repeats: Annotated[int, typer.Option(help="runs per configuration (the median run is reported)")] = 3,
    ade20k: Annotated[bool, typer.Option("--ade20k/--no-ade20k",
                                         help="also time the ADE20K size (256x256, ngf 64, 151 channels)")] = True,
    checkpoint: Annotated[Path, typer.Option(
        help="the built-in model's trained generator; params.yaml's configuration with random weights if absent")]
        = DEFAULT_CHECKPOINT,
    params: Annotated[Path, typer.Option(help="the parameters file (the built-in configuration)")] = Path("params.yaml"),
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "cpu",
    output: Annotated[Path, typer.Option(help="where to write the result")] = Path("reports/bench_studio.json"),
) -> None:
    """Studio latency per generation request through the real app: built-in 64x64 model and ADE20K size."""
    prefer_passive_openmp()  # measure what `gaugan studio` serves with
    import os

    from gaugan.data.io import atomic_write_json
    from gaugan.data.registry import published_spec, resolve_dataset
    from gaugan.models import published_generator_config
    from gaugan.models.loading import load_generator
    from gaugan.studio.bench import benchmark_studio, blocky_labels, landscape_labels, machine, random_generator
    from gaugan.train.distributed import resolve_device
    from pipeline.params import load_config

    torch_device = resolve_device(device, setting="--device")
    if checkpoint.is_file():
        builtin = load_generator(checkpoint, device=torch_device)
        weights = f"trained ({checkpoint}, {builtin.weights})"
    else:
        cfg = load_config(params)
        builtin = random_generator(cfg.generator, resolve_dataset(cfg.data), torch_device)
        weights = f"random initialisation ({params} configuration; no {checkpoint})"
    if builtin.spec.name != "landscapes":
        fail(f"{checkpoint}: the built-in configuration is the landscapes model; this one is {builtin.spec.name!r}")
    try:
        configurations = {"builtin_64": {**benchmark_studio(builtin, torch_device, landscape_labels(builtin.spec),
                                                           requests, warmup, repeats), "weights": weights}}
        if ade20k:
            spec = published_spec("ade20k")
            large = random_generator(published_generator_config("ade20k"), spec, torch_device)
            configurations["ade20k_256"] = {
                **benchmark_studio(large, torch_device, blocky_labels(spec), large_requests, min(warmup, 1), repeats),
                "weights": "random initialisation (latency does not depend on the weights)",
            }
    except ValueError as err:
        fail(str(err))
    result = {
        "machine": {**machine(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "configurations": configurations,
        "note": "latency per POST /api/generate through the app in process (upload, checks, generator, PNG "
                "encoding), timed one after another; a shared machine slows it: see the load averages",
    }
    if torch_device.type == "cpu":
        result["gpu"] = "not measured: this run used the CPU"
    atomic_write_json(output, result)
    for name, measured in configurations.items():
        typer.echo(f"{name}: median {measured['median_ms']:.1f} ms, p90 {measured['p90_ms']:.1f} ms per request "
                   f"(run medians {measured['run_medians_ms']} ms; {measured['device']}; {measured['weights']})")
    typer.echo(f"-> {output}")
