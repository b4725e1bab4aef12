"""The training loop: epochs of (G step, D step) per batch, with the learning-rate schedule,
EMA, checkpoints, a divergence guard, a progress bar and periodic sample grids (paper
section 4; docs/SPADE.md section 2).

Logging is kept out of the maths: the loop hands namespaced metrics (``loss/g_gan``,
``lr/g``, ``perf/images_per_s``) to an injected ``report(metrics, step)`` callback and the
paths of sample grids to ``report_image(path, step)``; the train stage connects them to
MLflow, tests to lists. The periodic work (log, sample grid, checkpoint) lives in
:mod:`gaugan.train.jobs`, the divergence guard in :mod:`gaugan.train.guard`, the checkpoint
format in :mod:`gaugan.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from gaugan import losses
from gaugan.callbacks import ImageCallback, MetricsCallback
from gaugan.checkpoint import (
    GENERATOR_CHECKPOINT,
    LAST_CHECKPOINT,
    Progress,
    atomic_torch_save,
    check_resumable,
    claim_checkpoint_dir,
    generator_payload,
    load_checkpoint,
    load_for_resume,
    remove_stale_temporary_files,
    restore_training,
    seed_everything,
)
from gaugan.config import Config, ConfigError, OptimConfig, config_to_dict
from gaugan.data.classes import class_table
from gaugan.data.dataset import StoreDataset, make_loader
from gaugan.data.registry import DatasetSpec
from gaugan.data.store import read_store
from gaugan.models import OASISDiscriminator, build_discriminator, build_encoder, build_generator
from gaugan.selection import check_held_out_unchanged, num_training_samples
from gaugan.train.distributed import (
    DistributedContext,
    GlobalBatchSampler,
    barrier,
    check_sync_batchnorm,
    init_distributed,
    shutdown_distributed,
    wrap_ddp,
)
from gaugan.train.ema import Forward, GeneratorEMA
from gaugan.train.guard import FinitenessGuard
from gaugan.train.jobs import (
    Checkpointer,
    EMAStatistics,
    EpochEndEvaluation,
    MetricsLogger,
    PeriodicJob,
    SampleGrids,
    due_jobs,
)
from gaugan.train.performance import autocast_dtype, configure_device, spectral_norm_in_fp32
from gaugan.train.runner import StepRunner, make_step_runner
from gaugan.train.schedule import adam_betas, learning_rates, set_learning_rate
from gaugan.train.steps import Optimizers, prepare_batch, step_settings

# (generator in its current state, finished epochs, step) -> metrics to report, {} when none
# are due (gaugan.training_evaluation.TrainingEvaluator).
EpochEvaluator = Callable[[nn.Module, int, int], dict[str, float]]

NUM_SAMPLE_ROWS = 4


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
    D = build_discriminator(cfg.discriminator, spec.label_channels, spec.num_label_values)
    if isinstance(D, OASISDiscriminator):  # its depth fits the image size: said before training, not in the first step
        D.check_image_size(*spec.image_size)
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


def _optimizer_maps(optimizers: Optimizers) -> tuple[dict[str, torch.optim.Optimizer],
                                                     dict[str, torch.amp.GradScaler] | None]:
    """The optimisers and (fp16 only) gradient scalers by network name, as checkpoints store them."""
    scalers = None
    if optimizers.scaler_G is not None:
        scalers = {"G": optimizers.scaler_G, "D": optimizers.scaler_D}
    return {"G": optimizers.G, "D": optimizers.D}, scalers


def _training_data(cfg: Config, store_dir: Path, spec: DatasetSpec,
                   context: DistributedContext) -> tuple[StoreDataset, GlobalBatchSampler, torch.utils.data.DataLoader]:
    """The training split, this rank's share of every global batch, and its loader."""
    dataset = StoreDataset(store_dir, "train", spec, train=True, seed=cfg.train.seed, flip=cfg.data.flip)
    # evaluate.selection_split: train_holdout keeps the last images out of training.
    sampler = GlobalBatchSampler(num_training_samples(cfg, len(dataset)), cfg.train.batch_size, context.rank,
                                 context.world_size, cfg.train.seed)
    if sampler.batches_per_epoch == 0:
        raise ConfigError(
            f"{store_dir}: the training split has {len(dataset)} samples, fewer than train.batch_size "
            f"({cfg.train.batch_size}); lower train.batch_size"
        )
    loader = make_loader(
        dataset, sampler.local_batch_size, shuffle=True, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
        sampler=sampler, pin_memory=context.device.type == "cuda",
    )
    return dataset, sampler, loader


def _fixed_sample_batch(store_dir: Path, spec: DatasetSpec, count: int) -> dict[str, Tensor]:
    dataset = StoreDataset(store_dir, "train", spec, train=False)
    items = [dataset[index] for index in range(min(count, len(dataset)))]
    return torch.utils.data.default_collate(items)


def _statistics_forwards(cfg: Config, store_dir: Path, spec: DatasetSpec, device: torch.device,
                         dtype: torch.dtype | None) -> Iterator[Forward]:
    """The EMA generator's statistics batches: the first ``train.ema_statistics_batches`` global
    batches of the training split, uncropped and unflipped (the same images every time)."""
    dataset = StoreDataset(store_dir, "train", spec, train=False)
    size = cfg.train.batch_size
    for start in range(0, min(len(dataset), size * cfg.train.ema_statistics_batches) - size + 1, size):
        batch = torch.utils.data.default_collate([dataset[index] for index in range(start, start + size)])
        seg, _ = prepare_batch(batch, spec.num_label_values, device, cfg.train.channels_last)

        def forward(generator: nn.Module, seg: Tensor = seg) -> None:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                generator(seg)

        yield forward


# ---- the loop ----


def check_continuation(payload: dict, cfg: Config, spec: dict, path: Path) -> None:
    """Refuse to continue the training in ``payload`` with ``cfg`` unless the steps compute the
    same maths (:func:`gaugan.checkpoint.check_resumable`) on the same training images
    (:func:`gaugan.selection.check_held_out_unchanged`)."""
    check_resumable(payload, config_to_dict(cfg), spec, path)
    check_held_out_unchanged(payload["config"], cfg, path)


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
    Raises :class:`gaugan.train.guard.TrainingDiverged` on a non-finite loss or weight and
    :class:`gaugan.checkpoint.CheckpointError` for a checkpoint that does not fit.
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
    manifest, spec = read_store(store_dir, cfg.data)  # a store of other data settings is refused
    if main:
        claim_checkpoint_dir(out_dir)  # never a folder of the user's, and writable
    config_dict, spec_dict = config_to_dict(cfg), dataclasses.asdict(spec)
    last_path, generator_path = out_dir / LAST_CHECKPOINT, out_dir / GENERATOR_CHECKPOINT
    check_sync_batchnorm(cfg.generator.param_free_norm, context)
    configure_device(device, cfg.train.cudnn_benchmark)

    # Networks, from the seed (identical on every rank); then each rank gets its own
    # stream for the VAE noise.
    seed_everything(cfg.train.seed)
    z_dim = cfg.encoder.z_dim if cfg.encoder.use_vae else None
    G, D, E = place_models(*build_training_models(cfg, spec), device, cfg.train.channels_last)
    dtype = autocast_dtype(cfg.train.precision, device)
    if dtype is not None:
        for network in (G, D, E):
            if network is not None:
                spectral_norm_in_fp32(network)
    ema = GeneratorEMA(G, cfg.train.ema_decay) if cfg.train.use_ema else None
    vgg = make_vgg_loss(cfg, device) if cfg.loss.use_vgg_loss else None
    seed_everything(cfg.train.seed + context.rank)
    models = {"G": G, "D": D} | ({"E": E} if E is not None else {})  # what checkpoints hold: the bare networks
    if ema is not None:
        models["G_ema"] = ema.module

    # Data: every rank's share of the same global batches, in an order fixed by (seed, epoch).
    dataset, sampler, loader = _training_data(cfg, store_dir, spec, context)
    total_steps = planned_steps(cfg, len(dataset))

    # Optimisers, at the first epoch's rates (each epoch sets its own).
    optimizers = make_optimizers(cfg, G, D, E, device, epoch=0)
    optimizer_map, scaler_map = _optimizer_maps(optimizers)

    # Resume.
    progress, resumed = Progress(), False
    if main:
        remove_stale_temporary_files(out_dir)  # the remains of a save killed mid-write
    if cfg.train.resume and last_path.is_file():
        payload = load_for_resume(last_path)
        check_continuation(payload, cfg, spec_dict, last_path)
        progress = restore_training(payload, last_path, models, optimizer_map, scaler_map, context.rank,
                                    context.world_size, cfg.train.seed)
        resumed = True
        if main:
            tqdm.write(f"resuming from {last_path} at step {progress.step} (epoch {progress.epoch}, "
                       f"batch {progress.batch_in_epoch})")
    resumed_from_step = progress.step

    # One training step, on the wrapped networks, executed as train.label_conv, train.compile
    # and train.cuda_graph say (gaugan.train.runner; the benchmark runs the same).
    settings = step_settings(cfg, spec, dtype, vgg)
    run_step = make_step_runner(cfg, spec, device, (G, D, E), optimizers, settings,
                                wrap=lambda module: wrap_ddp(module, context), num_processes=context.world_size)
    train_step = functools.partial(_train_step, run_step=run_step, ema=ema, generator=G)

    # Periodic jobs, in this order, each every N steps and after the last step. The
    # evaluation's interval is one epoch (sampler.batches_per_epoch steps); the evaluator
    # decides at which epoch ends it scores.
    bar = tqdm(total=total_steps, initial=progress.step, unit="step", dynamic_ncols=True,
               disable=not (main and show_progress))
    guard = FinitenessGuard(context, last_path, progress.step if resumed else None)
    logger = MetricsLogger(cfg.optim, cfg.train.batch_size, context, guard, report, bar)
    jobs = [PeriodicJob("log", cfg.train.log_every, logger)]
    # The EMA generator's batch-norm statistics are recomputed before it is sampled, scored or saved.
    ema_ready = None
    if ema is not None and cfg.train.ema_statistics_batches:
        ema_ready = EMAStatistics(ema, functools.partial(_statistics_forwards, cfg, store_dir, spec, device, dtype),
                                  cfg.train.seed)
    if main:
        sample_batch = _fixed_sample_batch(store_dir, spec, NUM_SAMPLE_ROWS)
        palette = class_table(spec, manifest)[1]  # a custom dataset's classes file colours the grids too
        samples = SampleGrids(ema.module if ema is not None else G, sample_batch, spec, palette, device, dtype, z_dim,
                              cfg.train.seed, out_dir / "samples", report_image, cfg.generator.noise_channels,
                              ema_ready)
        jobs.append(PeriodicJob("sample", cfg.train.sample_every, samples))
    if main and evaluate_during_training is not None:
        jobs.append(PeriodicJob("evaluate", sampler.batches_per_epoch,
                                EpochEndEvaluation(evaluate_during_training, ema.module if ema is not None else G,
                                                   sampler.batches_per_epoch, report, ema_ready)))
    checkpointer = Checkpointer(last_path, generator_path, config_dict, spec_dict, models, optimizer_map, scaler_map,
                                context, guard, sampler.batches_per_epoch, total_steps, ema_ready)
    jobs.append(PeriodicJob("checkpoint", cfg.train.checkpoint_every, checkpointer))

    # Train.
    logger.start(progress.step)
    try:
        progress = _train_epochs(cfg.optim, progress, total_steps, dataset, sampler, loader, optimizers, train_step,
                                 guard, jobs, bar)
    finally:
        bar.close()  # ends the bar's line, also before an error's message

    # A rerun of a finished run writes nothing new, but the final file must exist.
    if main and not generator_path.is_file():
        atomic_torch_save(generator_payload(load_checkpoint(last_path)), generator_path)
    barrier(context)
    return TrainResult(progress.step, progress.epoch, last_path, generator_path, logger.metrics, resumed_from_step)


def _train_step(batch: dict[str, Tensor], run_step: StepRunner, ema: GeneratorEMA | None,
                generator: nn.Module) -> dict[str, Tensor]:
    """One G step, then one D step on the same batch, then the EMA update; the losses, on the device."""
    step_losses = run_step(batch)
    if ema is not None:
        ema.update(generator)
    return step_losses


def _train_epochs(
    optim: OptimConfig,
    progress: Progress,
    total_steps: int,
    dataset: StoreDataset,
    sampler: GlobalBatchSampler,
    loader: torch.utils.data.DataLoader,
    optimizers: Optimizers,
    train_step: functools.partial,
    guard: FinitenessGuard,
    jobs: list[PeriodicJob],
    bar: tqdm,
) -> Progress:
    """Steps from ``progress`` to ``total_steps``, epoch by epoch, and the jobs due after each."""
    while progress.step < total_steps:
        lr_g, lr_d = learning_rates(optim, progress.epoch)
        set_learning_rate(optimizers.G, lr_g)
        set_learning_rate(optimizers.D, lr_d)
        dataset.set_epoch(progress.epoch)
        loader.sampler.resume_from(progress.batch_in_epoch * sampler.local_batch_size)
        # Starting an epoch's iterator draws a worker seed from the global RNG; restore it so
        # that a run resumed mid-epoch sees the same random stream as an uninterrupted one.
        rng_state = torch.get_rng_state()
        batches = iter(loader)
        torch.set_rng_state(rng_state)
        for batch in batches:
            step_losses = train_step(batch)
            progress = progress.advanced()
            bar.update(1)
            guard.record(progress.step, step_losses)
            for job in due_jobs(jobs, progress.step, total_steps):
                job.run(progress, step_losses)
            if progress.step >= total_steps:
                break
        progress = progress.continuation(sampler.batches_per_epoch)
    return progress
