"""Training-speed benchmark: images/s, step time, peak memory and (on GPU) model FLOPs
utilisation of the G step + D step of :mod:`gaugan.train.steps`, on synthetic batches.

Synthetic label maps (blocky random classes and instances) cost the same per step as real
data once on the device, so the benchmark needs no dataset. ``reference_schedule=True``
runs the same maths the way the official code runs it, so that a speed-up is measured on
the same machine, not assumed: SPADE layers in the official order of operations
(:attr:`gaugan.models.spade.SPADE.official_order`); D weight gradients computed in the G step and thrown away;
in the D step a gradient w.r.t. the regenerated fake (the official code sets
``requires_grad`` on it); fp32; contiguous NCHW tensors; torch's default (unfused) Adam;
glibc's default allocator behaviour. It is an emulation inside our code, not the official
code itself (which also loads data in the training process and differs in overheads).

Note that the allocator setting (:func:`gaugan.train.performance.keep_freed_memory`) is
process-wide and cannot be undone: measure the reference schedule in its own process
(``gaugan bench --reference-schedule``) or before ours.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from typing import Any

import torch
from torch import Tensor

from gaugan.config import Config, replace
from gaugan.data.registry import DatasetSpec
from gaugan.models.spade import SPADE
from gaugan.train.loop import build_training_models, make_optimizers, make_vgg_loss, place_models
from gaugan.train.performance import autocast_dtype, configure_device, peak_memory_bytes, spectral_norm_in_fp32
from gaugan.train.steps import Networks, StepSettings, discriminator_step, generator_step, prepare_batch

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched by substring
# of torch.cuda.get_device_name(); MFU is reported only for devices listed here.
PEAK_BF16_FLOPS = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,  # SXM
    "A100": 312.0e12,
    "L40S": 362.05e12,
    "L4": 121.0e12,
    "A10G": 70.0e12,
    "RTX 4090": 165.2e12,
}


@dataclass(frozen=True)
class BenchSettings:
    steps: int = 20
    warmup: int = 3
    reference_schedule: bool = False
    count_flops: bool = True


def synthetic_batch(spec: DatasetSpec, batch_size: int, seed: int = 0) -> dict[str, Tensor]:
    """Random blocky label maps with several classes and instances, uint8 images (loader format)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = spec.image_size
    cells = torch.randint(0, spec.num_label_values, (batch_size, 1, 4, 4), generator=generator).float()
    label = torch.nn.functional.interpolate(cells, size=(height, width), mode="nearest")[:, 0].to(torch.uint8)
    batch = {
        "label": label,
        "image": torch.randint(0, 256, (batch_size, 3, height, width), generator=generator, dtype=torch.uint8),
        "index": torch.arange(batch_size),
    }
    if spec.use_instance:
        blocks = torch.randint(0, 1000, (batch_size, 1, 8, 8), generator=generator).float()
        instance = torch.nn.functional.interpolate(blocks, size=(height, width), mode="nearest")[:, 0]
        batch["instance"] = (label.int() * 1000 + instance.int()).to(torch.int32)
    return batch


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():  # insertion order: specific names first
        if key in name:
            return flops
    return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_benchmark(cfg: Config, spec: DatasetSpec, device: torch.device, settings: BenchSettings) -> dict[str, Any]:
    """Time ``settings.steps`` G+D steps after ``settings.warmup`` untimed ones."""
    if settings.steps < 1 or settings.warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={settings.steps}, warmup={settings.warmup}")
    torch.manual_seed(cfg.train.seed)
    reference = settings.reference_schedule
    if not reference:
        configure_device(device, cfg.train.cudnn_benchmark)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the official training script turns it on too
    channels_last = cfg.train.channels_last and not reference
    G, D, E = place_models(*build_training_models(cfg, spec), device, channels_last)
    if reference:
        for module in G.modules():
            if isinstance(module, SPADE):
                module.official_order = True
    bench_cfg = cfg
    if reference:
        bench_cfg = replace(cfg, optim={"fused": False}, train={"precision": "fp32", "compile": False})
    dtype = autocast_dtype(bench_cfg.train.precision, device)
    if dtype is not None:
        for network in (G, D, E):
            if network is not None:
                spectral_norm_in_fp32(network)
    optimizers = make_optimizers(bench_cfg, G, D, E, device, epoch=0)
    G_run, D_run, E_run = G, D, E
    if bench_cfg.train.compile:
        G_run, D_run = torch.compile(G), torch.compile(D)
        E_run = torch.compile(E) if E is not None else None
    networks = Networks(G=G_run, D=D_run, D_module=D_run, E=E_run)
    vgg = make_vgg_loss(cfg, device) if cfg.loss.use_vgg_loss else None
    step_settings = StepSettings(
        cfg.loss, cfg.discriminator.num_discriminators, dtype,
        skip_d_weight_grads_in_g_step=not reference, fake_requires_grad_in_d_step=reference, vgg=vgg,
    )
    batch = synthetic_batch(spec, cfg.train.batch_size, cfg.train.seed)
    if device.type == "cuda":
        batch = {key: value.pin_memory() for key, value in batch.items()}

    def one_step() -> dict[str, Tensor]:
        seg, real = prepare_batch(batch, spec.num_label_values, device, channels_last)
        losses = generator_step(networks, optimizers, seg, real, step_settings)
        losses.update(discriminator_step(networks, optimizers, seg, real, step_settings))
        return losses

    for _ in range(settings.warmup):
        one_step()
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    load_before = list(os.getloadavg())
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(settings.steps):
        losses = one_step()
    _synchronize(device)
    elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
    finite = bool(torch.isfinite(torch.stack(list(losses.values()))).all())

    step_s = elapsed / settings.steps
    result: dict[str, Any] = {
        "images_per_s": cfg.train.batch_size / step_s,
        "step_s": step_s,
        # CPU time of this process per step (all its threads): on a machine shared with other
        # work, wall time varies with the load while this varies much less.
        "process_cpu_s_per_step": cpu_elapsed / settings.steps,
        "peak_memory_bytes": peak_memory_bytes(device),
        "peak_memory_kind": (
            "torch.cuda.max_memory_allocated" if device.type == "cuda"
            else "process peak resident set size (getrusage ru_maxrss), includes the Python runtime"
        ),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "schedule": "reference" if reference else "ours",
        "precision": bench_cfg.train.precision if device.type == "cuda" else "fp32",
        "channels_last": channels_last,
        "batch_size": cfg.train.batch_size,
        "image_size": list(spec.image_size),
        "label_channels": spec.label_channels,
        "steps": settings.steps,
        "warmup": settings.warmup,
        "losses_finite": finite,
        "load_average_before": load_before,
        "load_average": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
    }
    if settings.count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            one_step()
        flops = counter.get_total_flops()
        result["flops_per_step"] = flops
        result["achieved_flops_per_s"] = flops / step_s
        peak = device_peak_flops(device)
        result["peak_bf16_flops_per_s"] = peak
        result["mfu"] = flops / step_s / peak if peak else None
    return result


def _run_in_child(args: tuple[Config, DatasetSpec, str, BenchSettings]) -> dict[str, Any]:
    cfg, spec, device, settings = args
    return run_benchmark(cfg, spec, torch.device(device), settings)


def run_benchmark_isolated(cfg: Config, spec: DatasetSpec, device: torch.device, settings: BenchSettings) -> dict[str, Any]:
    """:func:`run_benchmark` in a fresh process: its own peak memory, allocator and CUDA state.

    Needed to compare schedules fairly in one command: process-wide settings (the CPU
    allocator, cuDNN autotuning, the peak resident set) would otherwise leak from one
    measurement into the next.
    """
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.map(_run_in_child, [(cfg, spec, str(device), settings)])[0]


def compare_schedules(
    cfg: Config, spec: DatasetSpec, device: torch.device, settings: BenchSettings, repeats: int = 1
) -> dict[str, Any]:
    """Ours and the reference schedule, each run in its own process, and the speed-up between them.

    With ``repeats`` > 1 the two alternate (reference, ours, then ours, reference, ...), so
    that a slow spell of a shared machine falls on both, and the medians are compared:
    ``ours`` / ``reference`` are the median runs in full, ``runs_images_per_s`` holds every
    run and ``paired_speedups`` each pair's ratio.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "reference": []}
    for index in range(repeats):
        order = ("reference", "ours") if index % 2 == 0 else ("ours", "reference")
        for schedule in order:
            schedule_settings = dataclass_replace(settings, reference_schedule=schedule == "reference")
            runs[schedule].append(run_benchmark_isolated(cfg, spec, device, schedule_settings))
    ours, reference = _median_run(runs["ours"]), _median_run(runs["reference"])
    return {
        "ours": ours,
        "reference": reference,
        "speedup_images_per_s": ours["images_per_s"] / reference["images_per_s"],
        "repeats": repeats,
        "runs_images_per_s": {name: [run["images_per_s"] for run in results] for name, results in runs.items()},
        "paired_speedups": [o["images_per_s"] / r["images_per_s"] for o, r in zip(runs["ours"], runs["reference"])],
    }


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median images/s (the lower middle one for an even count)."""
    ranked = sorted(results, key=lambda run: run["images_per_s"])
    return ranked[(len(ranked) - 1) // 2]
