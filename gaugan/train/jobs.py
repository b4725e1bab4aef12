"""The training loop's periodic work: which jobs are due after a step, and the jobs.

A job is a :class:`PeriodicJob`: a name, an interval in steps and a callable
``run(progress, losses)`` that gets the position after the step and the step's loss
tensors (on the device). Every job also runs after the last step. The loop runs, in order:
log (the divergence check, mean losses, learning rates, speed, through the injected
``report`` callback), sample grid (rank 0), metrics at epoch ends (rank 0, when an
evaluator is given), checkpoint (the divergence and weight checks, then ``last.pt``;
``generator.pt`` too after the last step).

An epoch is ``batches_per_epoch`` steps, so a job every N epochs is a job every
N * batches_per_epoch steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from gaugan.callbacks import ImageCallback, MetricsCallback
from gaugan.checkpoint import atomic_torch_save, build_checkpoint, generator_payload
from gaugan.config import OptimConfig
from gaugan.data.io import atomic_save_png
from gaugan.data.registry import DatasetSpec
from gaugan.models.noise import noise_for_images
from gaugan.seeding import capture_rng_state
from gaugan.train.distributed import DistributedContext, all_gather_objects, barrier
from gaugan.train.ema import Forward, GeneratorEMA
from gaugan.train.guard import FinitenessGuard
from gaugan.train.performance import peak_memory_bytes
from gaugan.train.progress import Progress
from gaugan.train.schedule import learning_rates
from gaugan.train.steps import prepare_batch
from gaugan.visualize import sample_grid, to_uint8

JobCallable = Callable[[Progress, Mapping[str, Tensor]], None]


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    every: int  # steps
    run: JobCallable


def due_jobs(jobs: Sequence[PeriodicJob], step: int, total_steps: int) -> list[PeriodicJob]:
    """The jobs due after ``step``, in their order: each at its interval, all after the last step."""
    return [job for job in jobs if step % job.every == 0 or step == total_steps]


class EpochEndEvaluation:
    """At an epoch's end, the evaluator's metrics of the generator, reported at that step.

    ``evaluate(generator, finished epochs, step)`` returns ``{}`` when no evaluation is due
    (:class:`gaugan.train.evaluator.TrainingEvaluator` decides). Runs on rank 0 only;
    the other ranks wait at their next collective. A run that stops mid-epoch (``max_steps``)
    is not scored there.
    """

    def __init__(self, evaluate: Callable[[nn.Module, int, int], dict[str, float]], generator: nn.Module,
                 batches_per_epoch: int, report: MetricsCallback | None,
                 before: Callable[[int], None] | None = None) -> None:
        self.evaluate, self.generator, self.batches_per_epoch, self.report = (
            evaluate, generator, batches_per_epoch, report)
        self.before = before  # readies the generator (the EMA's statistics) when an evaluation is due

    def __call__(self, progress: Progress, losses: Mapping[str, Tensor]) -> None:
        if progress.batch_in_epoch < self.batches_per_epoch:
            return
        due = getattr(self.evaluate, "due", None)  # an evaluator that says when it scores
        if self.before is not None and (due is None or due(progress.epoch + 1)):
            self.before(progress.step)
        scores = self.evaluate(self.generator, progress.epoch + 1, progress.step)
        if scores and self.report is not None:
            self.report(scores, progress.step)


# --------------------------------------------------------------------------------------
# Log.


class MetricsLogger:
    """Reports mean losses over the processes, learning rates, speed and memory.

    ``perf/images_per_s`` is this invocation's average so far: images trained since the loop
    started (setup excluded) over the wall time since then; after the last step, the whole
    run's average, the headline of reports/train.json. ``perf/images_per_s_window`` and
    ``perf/step_s`` cover only the steps since the previous log.
    """

    def __init__(self, optim: OptimConfig, batch_size: int, context: DistributedContext, guard: FinitenessGuard,
                 report: MetricsCallback | None, bar: tqdm) -> None:
        self.optim, self.batch_size, self.context, self.guard = optim, batch_size, context, guard
        self.report, self.bar = report, bar
        self.metrics: dict[str, float] = {}
        self.start(0)

    def start(self, step: int) -> None:
        """The loop starts at ``step`` now."""
        self.run_start = self.window_start = time.perf_counter()
        self.run_first_step = self.window_first_step = step

    def __call__(self, progress: Progress, losses: Mapping[str, Tensor]) -> None:
        self.guard.check_losses()
        names = list(losses)
        values = torch.stack([losses[name] for name in names])
        if self.context.is_distributed:
            torch.distributed.all_reduce(values)
            values = values / self.context.world_size
        now = time.perf_counter()
        window_steps, window_seconds = progress.step - self.window_first_step, now - self.window_start
        run_steps, run_seconds = progress.step - self.run_first_step, now - self.run_start
        lr_g, lr_d = learning_rates(self.optim, progress.epoch)
        metrics = dict(zip(names, values.tolist()))
        metrics.update({
            "lr/g": lr_g,
            "lr/d": lr_d,
            "perf/images_per_s": run_steps * self.batch_size / run_seconds,
            "perf/images_per_s_window": window_steps * self.batch_size / window_seconds,
            "perf/step_s": window_seconds / window_steps,
            "perf/peak_memory_bytes": float(peak_memory_bytes(self.context.device)),
            "progress/epoch": float(progress.epoch),
        })
        if self.context.is_main and self.report is not None:
            self.report(metrics, progress.step)
        self.bar.set_postfix(G=f"{metrics['loss/g_total']:.3f}", D=f"{metrics['loss/d_total']:.3f}")
        self.metrics = metrics
        self.window_start, self.window_first_step = time.perf_counter(), progress.step


# --------------------------------------------------------------------------------------
# Sample grid.


@torch.no_grad()
def render_samples(
    generator: nn.Module, batch: dict[str, Tensor], spec: DatasetSpec, device: torch.device,
    dtype: torch.dtype | None, z_dim: int | None, seed: int, palette: np.ndarray, noise_channels: int = 0,
) -> Image.Image:
    """Generate for a fixed batch in eval mode (as generation does), changing no state.

    z (VAE) and 3D noise come from private generators, so sampling never shifts the training
    random stream (sample_every may differ between an interrupted run and its continuation).
    """
    seg, real = prepare_batch(batch, spec.num_label_values, device)
    z = None
    if z_dim is not None:
        z = torch.randn(seg.shape[0], z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    elif noise_channels:
        z = noise_for_images(batch["index"], noise_channels, spec.image_size, seed, device)
    was_training = generator.training
    generator.eval()
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            fake = generator(seg, z)
    finally:
        generator.train(was_training)
    return sample_grid(batch["label"], to_uint8(fake), to_uint8(real), palette)


@dataclass
class SampleGrids:
    """Writes ``<folder>/step_<step>.png`` (label | generated | real rows) and reports its path."""

    generator: nn.Module  # the EMA copy when there is one
    batch: dict[str, Tensor]
    spec: DatasetSpec
    palette: np.ndarray  # colour of every stored index (gaugan.data.classes.class_table)
    device: torch.device
    dtype: torch.dtype | None
    z_dim: int | None
    seed: int
    folder: Path
    report_image: ImageCallback | None
    noise_channels: int = 0
    before: Callable[[int], None] | None = None  # readies the generator (the EMA's statistics)

    def __call__(self, progress: Progress, losses: Mapping[str, Tensor]) -> None:
        if self.before is not None:
            self.before(progress.step)
        grid = render_samples(self.generator, self.batch, self.spec, self.device, self.dtype, self.z_dim, self.seed,
                              self.palette, self.noise_channels)
        path = self.folder / f"step_{progress.step:07d}.png"
        atomic_save_png(grid, path)
        if self.report_image is not None:
            self.report_image(path, progress.step)


# --------------------------------------------------------------------------------------
# Checkpoint.


@dataclass
class Checkpointer:
    """Writes ``last.pt`` from the bare networks (and ``generator.pt`` after the last step).

    Nothing is written when a loss since the last check or a network's weights are not
    finite: the previous checkpoint stays the good one.
    """

    last_path: Path
    generator_path: Path
    config: dict[str, Any]
    spec: dict[str, Any]
    models: dict[str, nn.Module]  # G, D, E?, G_ema?
    optimizers: dict[str, torch.optim.Optimizer]
    scalers: dict[str, torch.amp.GradScaler] | None
    context: DistributedContext
    guard: FinitenessGuard
    batches_per_epoch: int
    total_steps: int
    before: Callable[[int], None] | None = None  # readies the saved networks (the EMA's statistics), rank 0

    def __call__(self, progress: Progress, losses: Mapping[str, Tensor]) -> None:
        self.guard.check_losses()
        self.guard.check_weights(progress.step, self.models)
        rng = all_gather_objects(capture_rng_state(), self.context)
        if self.context.is_main:
            if self.before is not None:
                self.before(progress.step)
            payload = build_checkpoint(self.config, self.spec, self.models, self.optimizers, self.scalers,
                                       progress.continuation(self.batches_per_epoch), rng)
            atomic_torch_save(payload, self.last_path)
            if progress.step >= self.total_steps:
                atomic_torch_save(generator_payload(payload), self.generator_path)
        barrier(self.context)
        self.guard.checkpoint_written(progress.step)


# --------------------------------------------------------------------------------------
# The EMA generator's statistics.


class EMAStatistics:
    """``before(step)`` for the jobs that use the EMA generator: its batch-norm statistics
    recomputed on ``forwards()`` (:meth:`GeneratorEMA.refresh_statistics`), at most once per step."""

    def __init__(self, ema: GeneratorEMA, forwards: Callable[[], Iterable[Forward]], seed: int) -> None:
        self.ema, self.forwards, self.seed = ema, forwards, seed
        self.step: int | None = None

    def __call__(self, step: int) -> None:
        if step != self.step:
            self.ema.refresh_statistics(self.forwards(), self.seed)
            self.step = step
