"""The training loop: epochs of (G step, D step) per batch, with the learning-rate schedule,
EMA, checkpoints, a divergence guard, a progress bar and periodic sample grids (paper
section 4; REFERENCE.md section 2).

Logging is kept out of the maths: the loop hands namespaced metrics (``loss/g_gan``,
``lr/g``, ``perf/images_per_s``) to an injected ``report(metrics, step)`` callback and the
paths of sample grids to ``report_image(path, step)``; the train stage connects them to
MLflow, tests to lists.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from gaugan import losses
from gaugan.config import Config, config_to_dict
from gaugan.data.io import atomic_save_png
from gaugan.data.registry import DatasetSpec
from gaugan.data.store import StoreDataset, make_loader, read_manifest, spec_from_manifest
from gaugan.errors import UserError
from gaugan.models import build_discriminator, build_encoder, build_generator
from gaugan.selection import num_training_samples
from gaugan.train import checkpoint as ckpt
from gaugan.train.distributed import (
    DistributedContext,
    GlobalBatchSampler,
    all_gather_objects,
    barrier,
    check_sync_batchnorm,
    init_distributed,
    shutdown_distributed,
    wrap_ddp,
)
from gaugan.train.ema import GeneratorEMA
from gaugan.train.performance import autocast_dtype, configure_device, peak_memory_bytes, spectral_norm_in_fp32
from gaugan.train.schedule import adam_betas, learning_rates, set_learning_rate
from gaugan.train.steps import Networks, Optimizers, StepSettings, discriminator_step, generator_step, prepare_batch
from gaugan.visualize import sample_grid, to_uint8

MetricsCallback = Callable[[dict[str, float], int], None]
ImageCallback = Callable[[Path, int], None]
# (generator in its current state, finished epochs, step) -> metrics to report, {} when none
# are due (gaugan.training_evaluation.TrainingEvaluator).
EpochEvaluator = Callable[[nn.Module, int, int], dict[str, float]]

NUM_SAMPLE_ROWS = 4


class TrainingDiverged(UserError, RuntimeError):
    """A loss became NaN or infinite; training stopped without overwriting the last good checkpoint."""


@dataclass(frozen=True)
class TrainResult:
    step: int
    epoch: int
    last_checkpoint: Path
    generator_checkpoint: Path
    metrics: dict[str, float]
    resumed_from_step: int


# ---- construction (shared with the benchmark) ----


def build_training_models(cfg: Config, spec: DatasetSpec) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """G, D and (VAE only) E for ``spec``'s label channels and image size, initialised on the CPU."""
    z_dim = cfg.encoder.z_dim if cfg.encoder.use_vae else None
    G = build_generator(cfg.generator, spec.label_channels, spec.image_size, z_dim)
    D = build_discriminator(cfg.discriminator, spec.label_channels)
    E = build_encoder(cfg.encoder) if cfg.encoder.use_vae else None
    return G, D, E


def make_vgg_loss(cfg: Config, device: torch.device) -> nn.Module:
    """The VGG19 perceptual loss (weights from loss.vgg_weights or the torch hub cache; never downloaded)."""
    return losses.VGGLoss(cfg.loss.vgg_weights).to(device)


def make_optimizers(
    cfg: Config, G: nn.Module, D: nn.Module, E: nn.Module | None, device: torch.device, epoch: int
) -> Optimizers:
    """Adam for G (+E, as the official code) and for D, at the rates of ``epoch``.

    optim.fused: torch's fused Adam (one kernel over all parameters; CUDA and, since torch
    2.4, CPU, where it measured 4x faster than the multi-tensor default for G here). The
    same update rule; rounding may differ in the last bit from the unfused version.
    """
    lr_g, lr_d = learning_rates(cfg.optim, epoch)
    betas = adam_betas(cfg.optim)
    fused = True if (cfg.optim.fused and device.type in ("cuda", "cpu")) else None
    g_params = list(G.parameters()) + (list(E.parameters()) if E is not None else [])
    optimizer_g = torch.optim.Adam(g_params, lr=lr_g, betas=betas, fused=fused)
    optimizer_d = torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas, fused=fused)
    use_scaler = device.type == "cuda" and cfg.train.precision == "fp16"
    scaler_g = torch.amp.GradScaler(device.type) if use_scaler else None
    scaler_d = torch.amp.GradScaler(device.type) if use_scaler else None
    return Optimizers(optimizer_g, optimizer_d, scaler_g, scaler_d)


def place_models(
    G: nn.Module, D: nn.Module, E: nn.Module | None, device: torch.device, channels_last: bool
) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """Move to ``device``; channels_last (NHWC) is faster for these convolutions on GPU and CPU alike."""
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    E = E.to(device, memory_format=memory_format) if E is not None else None
    return G, D, E


# ---- sample grids ----


@torch.no_grad()
def render_samples(
    generator: nn.Module, batch: dict[str, Tensor], spec: DatasetSpec, device: torch.device,
    dtype: torch.dtype | None, z_dim: int | None, seed: int,
) -> Image.Image:
    """Generate for a fixed batch in eval mode (as generation does), changing no state.

    z (VAE) comes from a private generator, so sampling never shifts the training random
    stream (sample_every may differ between an interrupted run and its continuation).
    """
    seg, real = prepare_batch(batch, spec.num_label_values, device)
    z = None
    if z_dim is not None:
        z = torch.randn(seg.shape[0], z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    was_training = generator.training
    generator.eval()
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            fake = generator(seg, z)
    finally:
        generator.train(was_training)
    return sample_grid(batch["label"], to_uint8(fake), to_uint8(real), spec.num_label_values, spec.name)


def _fixed_sample_batch(store_dir: Path, spec: DatasetSpec, count: int) -> dict[str, Tensor]:
    dataset = StoreDataset(store_dir, "train", spec, train=False)
    items = [dataset[index] for index in range(min(count, len(dataset)))]
    return torch.utils.data.default_collate(items)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- the loop ----


def planned_steps(cfg: Config, num_train_samples: int) -> int:
    """G+D steps of a whole training: every epoch's full global batches, capped by max_steps."""
    num_epochs = cfg.optim.num_epochs_constant + cfg.optim.num_epochs_decay
    total = num_epochs * (num_training_samples(cfg, num_train_samples) // cfg.train.batch_size)
    return total if cfg.train.max_steps is None else min(total, cfg.train.max_steps)


def train(
    cfg: Config,
    store_dir: str | Path,
    out_dir: str | Path,
    report: MetricsCallback | None = None,
    report_image: ImageCallback | None = None,
    show_progress: bool = True,
    evaluate_during_training: EpochEvaluator | None = None,
) -> TrainResult:
    """Train G, D (and E) on the store at ``store_dir``; checkpoints go to ``out_dir``.

    Under ``torchrun`` every process calls this; only rank 0 reports and writes files.
    ``evaluate_during_training`` is called on rank 0 at every epoch end with the generator
    (the EMA one when kept); what it returns is reported at that step.
    Continues from ``out_dir/last.pt`` when ``train.resume`` is true and the file exists.
    Raises :class:`TrainingDiverged` on a non-finite loss and
    :class:`gaugan.train.checkpoint.CheckpointError` for a checkpoint that does not fit.
    """
    joined_here = not torch.distributed.is_initialized()
    context = init_distributed(cfg.train.device)
    try:
        return _train(cfg, Path(store_dir), Path(out_dir), context, report, report_image, show_progress,
                      evaluate_during_training)
    finally:
        if joined_here:
            shutdown_distributed()


def _train(
    cfg: Config,
    store_dir: Path,
    out_dir: Path,
    context: DistributedContext,
    report: MetricsCallback | None,
    report_image: ImageCallback | None,
    show_progress: bool,
    evaluate_during_training: EpochEvaluator | None,
) -> TrainResult:
    device, main = context.device, context.is_main
    spec = spec_from_manifest(read_manifest(store_dir))
    spec_dict, config_dict = dataclasses.asdict(spec), config_to_dict(cfg)
    last_path, generator_path = out_dir / ckpt.LAST_CHECKPOINT, out_dir / ckpt.GENERATOR_CHECKPOINT
    check_sync_batchnorm(cfg.generator.param_free_norm, context)
    configure_device(device, cfg.train.cudnn_benchmark)

    # Networks from the seed (identical on every rank); then each rank gets its own stream
    # for the VAE noise.
    _seed_everything(cfg.train.seed)
    z_dim = cfg.encoder.z_dim if cfg.encoder.use_vae else None
    channels_last = cfg.train.channels_last
    G, D, E = place_models(*build_training_models(cfg, spec), device, channels_last)
    dtype = autocast_dtype(cfg.train.precision, device)
    if dtype is not None:
        for network in (G, D, E):
            if network is not None:
                spectral_norm_in_fp32(network)
    ema = GeneratorEMA(G, cfg.train.ema_decay) if cfg.train.use_ema else None
    vgg = make_vgg_loss(cfg, device) if cfg.loss.use_vgg_loss else None
    _seed_everything(cfg.train.seed + context.rank)

    # Data: every rank's share of the same global batches, in an order fixed by (seed, epoch).
    dataset = StoreDataset(store_dir, "train", spec, train=True, seed=cfg.train.seed, flip=cfg.data.flip)
    sampler = GlobalBatchSampler(num_training_samples(cfg, len(dataset)), cfg.train.batch_size, context.rank,
                                 context.world_size, cfg.train.seed)
    if sampler.batches_per_epoch == 0:
        raise ValueError(
            f"{store_dir}: the training split has {len(dataset)} samples, fewer than train.batch_size "
            f"({cfg.train.batch_size}); lower train.batch_size"
        )
    loader = make_loader(
        dataset, sampler.local_batch_size, shuffle=True, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
        sampler=sampler, pin_memory=device.type == "cuda",
    )
    total_steps = planned_steps(cfg, len(dataset))

    optimizers = make_optimizers(cfg, G, D, E, device, epoch=0)
    step, epoch, batch_in_epoch = 0, 0, 0

    # Resume.
    if main:
        for stale in out_dir.glob(".*.pt.*.tmp"):
            stale.unlink(missing_ok=True)  # the remains of a save killed mid-write
    if cfg.train.resume and last_path.is_file():
        payload = ckpt.load_checkpoint(last_path)
        ckpt.check_resumable(payload, config_dict, spec_dict, last_path)
        G.load_state_dict(payload["models"]["G"])
        D.load_state_dict(payload["models"]["D"])
        if E is not None:
            E.load_state_dict(payload["models"]["E"])
        if ema is not None:
            ema.load_state_dict(payload["models"]["G_ema"])
        optimizers.G.load_state_dict(payload["optimizers"]["G"])
        optimizers.D.load_state_dict(payload["optimizers"]["D"])
        if optimizers.scaler_G is not None and payload.get("scaler"):
            optimizers.scaler_G.load_state_dict(payload["scaler"]["G"])
            optimizers.scaler_D.load_state_dict(payload["scaler"]["D"])
        progress = payload["progress"]
        step, epoch, batch_in_epoch = progress["step"], progress["epoch"], progress["batch_in_epoch"]
        rng_states = payload["rng"].get("per_rank") or [payload["rng"]]
        if len(rng_states) == context.world_size:
            ckpt.restore_rng_state(rng_states[context.rank])
        else:
            # Another process count: the data order is still exact, the VAE noise is reseeded.
            _seed_everything(cfg.train.seed + context.rank + step)
        if main:
            tqdm.write(f"resuming from {last_path} at step {step} (epoch {epoch}, batch {batch_in_epoch})")
    resumed_from_step = step

    # Wrap for multi-process and compiled execution; checkpoints keep the bare modules.
    G_run, D_run = wrap_ddp(G, context), wrap_ddp(D, context)
    E_run = wrap_ddp(E, context) if E is not None else None
    D_local = D
    if cfg.train.compile:
        G_run, D_run, D_local = torch.compile(G_run), torch.compile(D_run), torch.compile(D)
        E_run = torch.compile(E_run) if E_run is not None else None
    networks = Networks(G=G_run, D=D_run, D_module=D_local, E=E_run)
    settings = StepSettings(cfg.loss, cfg.discriminator.num_discriminators, dtype, vgg=vgg)
    sample_batch = _fixed_sample_batch(store_dir, spec, NUM_SAMPLE_ROWS) if main else None

    def save_checkpoint() -> None:
        at_epoch_end = batch_in_epoch >= sampler.batches_per_epoch
        progress = {
            "epoch": epoch + 1 if at_epoch_end else epoch,
            "step": step,
            "batch_in_epoch": 0 if at_epoch_end else batch_in_epoch,
        }
        rng = all_gather_objects(ckpt.capture_rng_state(), context)
        if main:
            models = {"G": G.state_dict(), "D": D.state_dict()}
            if E is not None:
                models["E"] = E.state_dict()
            if ema is not None:
                models["G_ema"] = ema.state_dict()
            payload = {
                "format": ckpt.CHECKPOINT_FORMAT,
                "config": config_dict,
                "spec": spec_dict,
                "models": models,
                "optimizers": {"G": optimizers.G.state_dict(), "D": optimizers.D.state_dict()},
                "scaler": (
                    {"G": optimizers.scaler_G.state_dict(), "D": optimizers.scaler_D.state_dict()}
                    if optimizers.scaler_G is not None else None
                ),
                "progress": progress,
                "rng": {**rng[0], "per_rank": rng} if context.is_distributed else rng[0],
            }
            ckpt.atomic_torch_save(payload, last_path)
            if step >= total_steps:
                ckpt.atomic_torch_save(ckpt.generator_payload(payload), generator_path)
        barrier(context)

    # Loss values stay on the device; finiteness is checked (one host sync) on log and
    # checkpoint steps, naming the first bad loss and its step.
    pending_checks: list[tuple[int, list[str], Tensor]] = []

    def check_finite() -> None:
        if not pending_checks:
            return
        flags = torch.stack([flags for _, _, flags in pending_checks]).to(torch.int32)
        if context.is_distributed:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        for (bad_step, names, _), row in zip(pending_checks, flags.cpu().tolist()):
            if not all(row):
                bad = ", ".join(name for name, ok in zip(names, row) if not ok)
                kept = (f"the last good checkpoint {last_path} is kept" if last_path.is_file()
                        else "no checkpoint had been written yet")
                raise TrainingDiverged(
                    f"training diverged: {bad} became non-finite at step {bad_step}; stopped, {kept}. "
                    "Lower optim.lr or use train.precision=fp32, then rerun (it resumes from that checkpoint)."
                )
        pending_checks.clear()

    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, disable=not (main and show_progress))
    metrics: dict[str, float] = {}
    interval_start, interval_steps = time.perf_counter(), 0
    while step < total_steps:
        lr_g, lr_d = learning_rates(cfg.optim, epoch)
        set_learning_rate(optimizers.G, lr_g)
        set_learning_rate(optimizers.D, lr_d)
        dataset.set_epoch(epoch)
        loader.sampler.resume_from(batch_in_epoch * sampler.local_batch_size)
        # Starting an epoch's iterator draws a worker seed from the global RNG; restore it so
        # that a run resumed mid-epoch sees the same random stream as an uninterrupted one.
        rng_state = torch.get_rng_state()
        batches = iter(loader)
        torch.set_rng_state(rng_state)
        for batch in batches:
            seg, real = prepare_batch(batch, spec.num_label_values, device, channels_last)

            # One G step, then one D step on the same batch.
            step_losses = generator_step(networks, optimizers, seg, real, settings)
            step_losses.update(discriminator_step(networks, optimizers, seg, real, settings))

            # Update EMA.
            if ema is not None:
                ema.update(G)

            step, batch_in_epoch, interval_steps = step + 1, batch_in_epoch + 1, interval_steps + 1
            bar.update(1)
            names = list(step_losses)
            values = torch.stack([step_losses[name] for name in names])
            pending_checks.append((step, names, torch.isfinite(values)))

            # Report (the only place loss values reach the host).
            if step % cfg.train.log_every == 0 or step == total_steps:
                check_finite()
                if context.is_distributed:
                    torch.distributed.all_reduce(values)
                    values = values / context.world_size
                elapsed = time.perf_counter() - interval_start
                metrics = dict(zip(names, values.tolist()))
                metrics.update({
                    "lr/g": lr_g,
                    "lr/d": lr_d,
                    "perf/images_per_s": interval_steps * cfg.train.batch_size / elapsed,
                    "perf/step_s": elapsed / interval_steps,
                    "perf/peak_memory_bytes": float(peak_memory_bytes(device)),
                    "progress/epoch": float(epoch),
                })
                if main and report is not None:
                    report(metrics, step)
                bar.set_postfix(G=f"{metrics['loss/g_total']:.3f}", D=f"{metrics['loss/d_total']:.3f}")
                interval_start, interval_steps = time.perf_counter(), 0

            # Sample grid.
            if main and (step % cfg.train.sample_every == 0 or step == total_steps):
                generator = ema.module if ema is not None else G
                grid = render_samples(generator, sample_batch, spec, device, dtype, z_dim, cfg.train.seed)
                path = out_dir / "samples" / f"step_{step:07d}.png"
                atomic_save_png(grid, path)
                if report_image is not None:
                    report_image(path, step)

            # Checkpoint.
            if step % cfg.train.checkpoint_every == 0 or step == total_steps:
                check_finite()
                save_checkpoint()
            if step >= total_steps:
                break
        if batch_in_epoch >= sampler.batches_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0

            # Evaluate metrics (rank 0 only; the others wait at their next collective).
            if main and evaluate_during_training is not None:
                scores = evaluate_during_training(ema.module if ema is not None else G, epoch, step)
                if scores and report is not None:
                    report(scores, step)
    bar.close()

    # A rerun of a finished run writes nothing new, but the final file must exist.
    if main and not generator_path.is_file():
        ckpt.atomic_torch_save(ckpt.generator_payload(ckpt.load_checkpoint(last_path)), generator_path)
    barrier(context)
    return TrainResult(step, epoch, last_path, generator_path, metrics, resumed_from_step)
