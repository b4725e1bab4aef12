"""Training-speed benchmark: images/s, step time, peak memory and (on GPU) model FLOPs
utilisation of the training step, on synthetic batches. The step is the one training runs:
built by :func:`gaugan.train.setup.build_training` and :meth:`~gaugan.train.setup.Training.step`
as the loop builds it (G step + D step of :mod:`gaugan.train.steps`, executed by a
:class:`~gaugan.train.runner.StepRunner`, then the EMA update when ``train.use_ema``).

Synthetic label maps (blocky random classes and instances) cost the same per step as real
data once on the device, so the benchmark needs no dataset. ``reference_schedule=True``
runs the same maths the way the official code runs it, so that a speed-up is measured on
the same machine, not assumed: SPADE layers in the official order of operations
(:attr:`gaugan.models.spade.SPADE.official_order`); D weight gradients computed in the G step and thrown away;
in the D step a gradient w.r.t. the regenerated fake (the official code sets
``requires_grad`` on it); fp32; contiguous NCHW tensors; the dense one-hot map; torch's
default (unfused) Adam; no compilation or CUDA graph; glibc's default allocator behaviour; no
EMA generator unless the generator is OASIS's (the official SPADE code keeps none, the official
OASIS code does). It is an emulation inside our code, not the official code itself (which also
loads data in the training process and differs in overheads).

Note that the allocator setting (:func:`gaugan.train.performance.keep_freed_memory`) is
process-wide and cannot be undone: measure the reference schedule in its own process
(``gaugan bench --reference-schedule``) or before ours.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from gaugan.config import Config, replace
from gaugan.data.registry import DatasetSpec
from gaugan.threads import cpu_model
from gaugan.train.performance import configure_device, peak_memory_bytes
from gaugan.train.setup import Training, build_training, single_process

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
    """Time ``settings.steps`` G+D steps after ``settings.warmup`` untimed ones (more for a CUDA graph)."""
    if settings.steps < 1 or settings.warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={settings.steps}, warmup={settings.warmup}")
    reference = settings.reference_schedule
    bench_cfg = reference_config(cfg) if reference else cfg
    if not reference:
        configure_device(device, cfg.train.cudnn_benchmark)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the official training script turns it on too
    training, batch = training_setup(cfg, spec, device, reference)
    channels_last = bench_cfg.train.channels_last
    flops = measure_flops(bench_cfg, training, batch) if settings.count_flops else {}  # eager, before compiling
    step = training.step(bench_cfg)
    runner = step.runner
    warmup = settings.warmup
    if runner.graphed is not None:  # the warm-up covers the eager steps and the recording
        warmup = max(warmup, runner.graphed.warmup_steps + 2)
    warmup_step_s = []
    for _ in range(warmup):
        started = time.perf_counter()
        step(batch)
        _synchronize(device)
        warmup_step_s.append(time.perf_counter() - started)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    load_before = list(os.getloadavg())
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(settings.steps):
        losses = step(batch)
    _synchronize(device)
    elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
    finite = bool(torch.isfinite(torch.stack(list(losses.values()))).all())

    step_s = elapsed / settings.steps
    result: dict[str, Any] = {
        "images_per_s": cfg.train.batch_size / step_s,
        "steps_per_s": 1.0 / step_s,
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
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "schedule": "reference" if reference else "ours",
        "precision": bench_cfg.train.precision if device.type == "cuda" else "fp32",
        "channels_last": channels_last,
        "label_conv": "lookup" if runner.label_lookup else "dense",
        "compile": bench_cfg.train.compile,
        "cuda_graph": runner.graphed is not None,
        "ema": step.ema is not None,
        "batch_size": cfg.train.batch_size,
        "image_size": list(spec.image_size),
        "label_channels": spec.label_channels,
        "steps": settings.steps,
        "warmup": warmup,
        # Compilation, CUDA-graph recording and cuDNN autotuning happen in these steps.
        "warmup_step_s": warmup_step_s,
        "losses_finite": finite,
        "load_average_before": load_before,
        "load_average": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
    }
    if flops:
        result.update(flops)
        peak = device_peak_flops(device)
        result["achieved_flops_per_s"] = flops["flops_per_step"] / step_s
        result["peak_bf16_flops_per_s"] = peak
        result["mfu"] = flops["flops_per_step"] / step_s / peak if peak else None
        result["mfu_onehot_equivalent"] = flops["onehot_equivalent_flops_per_step"] / step_s / peak if peak else None
    return result


def training_setup(
    cfg: Config, spec: DatasetSpec, device: torch.device, reference: bool
) -> tuple[Training, dict[str, Tensor]]:
    """The training as ``stages.train`` builds it (:func:`gaugan.train.setup.build_training`;
    or as the official code, with ``reference``), in this one process, and the synthetic
    batch. ``training.step(cfg)`` is its step, executed as ``cfg.train`` says."""
    run_cfg = reference_config(cfg) if reference else cfg
    training = build_training(run_cfg, spec, single_process(device), reference_schedule=reference)
    batch = synthetic_batch(spec, cfg.train.batch_size, cfg.train.seed)
    if device.type == "cuda":
        batch = {key: value.pin_memory() for key, value in batch.items()}
    return training, batch


def compare_step_by_step(cfg: Config, other: Config, spec: DatasetSpec, device: torch.device, steps: int) -> dict[str, Any]:
    """``steps`` steps as ``cfg`` and as ``other`` runs them, from the same weights on the same
    batch: the largest relative difference of any loss at any step (a check that an execution
    setting -- CUDA graph, lookup, compilation -- leaves the training maths alone)."""
    runs = []
    for run_cfg in (cfg, other):
        training, batch = training_setup(run_cfg, spec, device, reference=False)
        step = training.step()
        losses = []
        for index in range(steps):
            torch.manual_seed(index)  # the VAE's noise
            losses.append({name: float(value) for name, value in step(batch).items()})
        runs.append(losses)
    differences = [
        abs(got[name] - expected[name]) / max(abs(expected[name]), 1e-3)
        for expected, got in zip(*runs) for name in expected
    ]
    return {"steps": steps, "losses": runs[0], "other_losses": runs[1], "max_relative_difference": max(differences)}


def reference_config(cfg: Config) -> Config:
    """``cfg`` as the official code runs it: fp32, NCHW, unfused Adam, the one-hot map, no
    compilation; no EMA generator unless it is OASIS's (SPADE's official code keeps none)."""
    return replace(
        cfg,
        optim={"fused": False},
        train={"precision": "fp32", "channels_last": False, "compile": "none", "cuda_graph": False, "label_conv": "dense",
               "use_ema": cfg.train.use_ema and cfg.generator.arch == "oasis"},
    )


def measure_flops(cfg: Config, training: Training, batch: dict[str, Tensor]) -> dict[str, float]:
    """FLOPs of one eager step as configured, and of the same step with the one-hot map (dense).

    ``flops_per_step`` is the work done: convolutions and matrix products (torch's flop
    counter) plus one add per lookup entry and channel (:data:`LOOKUP_FLOP_FORMULAS`).
    ``onehot_equivalent_flops_per_step`` counts the label convolutions as the dense
    convolutions the reference computes, so that FLOP rates stay comparable across schedules.
    """
    eager_cfg = replace(cfg, train={"compile": "none", "cuda_graph": False})
    step = training.step(eager_cfg)
    flops = step_flops(lambda: step(batch))
    dense = flops
    if step.runner.label_lookup:
        dense_step = training.step(replace(eager_cfg, train={"label_conv": "dense"}))
        dense = step_flops(lambda: dense_step(batch))
    return {"flops_per_step": flops, "onehot_equivalent_flops_per_step": dense}


def step_flops(step: Callable[[], object]) -> int:
    """FLOPs of running ``step`` once (multiply-add = 2), lookups counted as their adds."""
    counter = FlopCounterMode(display=False, custom_mapping=LOOKUP_FLOP_FORMULAS)
    with counter:
        step()
    return int(counter.get_total_flops())


def _lookup_flops(weight_shape, indices_shape, *args, **kwargs) -> int:
    return int(indices_shape[0]) * int(weight_shape[1])  # one add per entry and channel


def _lookup_backward_flops(grad_shape, indices_shape, *args, **kwargs) -> int:
    return int(indices_shape[0]) * int(grad_shape[1])  # one add into the table per entry and channel


# torch's flop counter knows no embedding_bag: the lookup of gaugan.models.onehot_conv is
# counted as the additions it does (forward: a sum of its entries; backward: a scatter-add).
LOOKUP_FLOP_FORMULAS = {
    torch.ops.aten._embedding_bag: _lookup_flops,
    torch.ops.aten._embedding_bag_forward_only: _lookup_flops,
    torch.ops.aten._embedding_bag_backward: _lookup_backward_flops,
}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (lscpu's "Model name") where it can be read."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


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
