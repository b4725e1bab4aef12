"""How one training step runs on a loader batch: the label input, compiled regions, CUDA graphs.

The maths is :mod:`gaugan.train.steps` (a G step, then a D step on the same batch). This
module decides how it executes, from three settings that change speed, not results (up to
float rounding), so that a run may switch them when it resumes:

- ``train.label_conv``: G gets the class indices and computes its convolutions over the
  one-hot label map as exact lookups (``lookup``, :mod:`gaugan.models.onehot_conv`), or gets
  the one-hot map (``dense``, as published). ``auto`` picks what was measured faster: see
  :func:`use_label_lookup`.
- ``train.compile``: ``blocks`` / ``full`` (:mod:`gaugan.train.compiled`).
- ``train.cuda_graph``: the whole step replayed from a CUDA graph (:mod:`gaugan.train.cuda_graphs`).

The training loop and the speed benchmark both build their runner through
:meth:`gaugan.train.setup.Training.step`, so the benchmark measures what training runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gaugan.config import Config, ConfigError
from gaugan.data.registry import DatasetSpec
from gaugan.train.compiled import compile_blocks, compile_whole
from gaugan.train.cuda_graphs import GraphedStep
from gaugan.train.steps import Networks, Optimizers, StepSettings, check_batch_labels, prepare_batch, train_step

# ``label_conv: auto`` uses the lookup on the CPU from this many label channels (classes +
# dontcare + edge) on. Measured on the project's 2-core CPU (README "Speed"): at 9 channels
# the dense convolution is faster (a GEMM with 81-long rows is cheap, and embedding_bag's
# CPU backward is a scatter), at ADE20K's 151 the lookup's layer is about 3x faster.
# On CUDA ``auto`` keeps the dense map until a GPU measurement (scripts/gpu_bench.sh)
# shows the lookup faster there.
LOOKUP_MIN_LABEL_CHANNELS = 64


def use_label_lookup(label_conv: str, label_channels: int, device: torch.device) -> bool:
    """Whether G gets labels (lookup) rather than the one-hot map, for ``train.label_conv``."""
    if label_conv == "lookup":
        return True
    if label_conv == "dense":
        return False
    if label_conv != "auto":
        raise ConfigError(f"train.label_conv: got {label_conv!r}, expected auto, lookup or dense")
    return device.type == "cpu" and label_channels >= LOOKUP_MIN_LABEL_CHANNELS


@dataclass
class StepRunner:
    """``runner(batch) -> loss tensors``: one G step + D step on a loader batch, however configured."""

    networks: Networks
    optimizers: Optimizers
    settings: StepSettings
    num_label_values: int
    device: torch.device
    channels_last: bool
    label_lookup: bool
    graphed: GraphedStep | None = None

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.graphed is not None:
            # A recorded step reads its batch from device buffers: checked here, on the host.
            check_batch_labels(batch, self.num_label_values)
            return self.graphed(batch)
        return self.eager_step(batch)

    def eager_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # D's one-hot map in the autocast dtype: 0 and 1 are exact in it, and its first
        # convolution would cast to it anyway.
        seg, real = prepare_batch(
            batch, self.num_label_values, self.device, self.channels_last, self.label_lookup,
            self.settings.autocast_dtype or torch.float32,
        )
        return train_step(self.networks, self.optimizers, seg, real, self.settings)


def make_step_runner(
    cfg: Config,
    spec: DatasetSpec,
    device: torch.device,
    models: tuple[nn.Module, nn.Module, nn.Module | None],
    optimizers: Optimizers,
    settings: StepSettings,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    num_processes: int = 1,
) -> StepRunner:
    """The runner for ``cfg.train``'s execution settings; ``wrap`` wraps each network (DDP).

    ``models`` are the bare (G, D, E) on ``device``; "blocks" compiles inside them in place
    (state-dict keys unchanged), "full" compiles the wrapped networks.
    """
    G, D, E = models
    wrap = wrap or (lambda module: module)
    if cfg.train.compile == "blocks":
        for network in (G, D, E):
            if network is not None:
                compile_blocks(network)
    G_run, D_run = wrap(G), wrap(D)
    E_run = wrap(E) if E is not None else None
    D_local = D  # the G step needs D's function only, not DDP's gradient all-reduce
    if cfg.train.compile == "full":
        G_run, D_run, D_local = compile_whole(G_run), compile_whole(D_run), compile_whole(D)
        E_run = compile_whole(E_run) if E_run is not None else None
    runner = StepRunner(
        networks=Networks(G=G_run, D=D_run, D_module=D_local, E=E_run),
        optimizers=optimizers,
        settings=settings,
        num_label_values=spec.num_label_values,
        device=device,
        channels_last=cfg.train.channels_last,
        label_lookup=_label_lookup(cfg, spec, device),
    )
    if cfg.train.cuda_graph:
        check_cuda_graph(cfg, device, num_processes)
        runner.graphed = GraphedStep(runner.eager_step, [optimizers.G, optimizers.D], device)
    return runner


def _label_lookup(cfg: Config, spec: DatasetSpec, device: torch.device) -> bool:
    """``use_label_lookup`` for the generator of ``cfg``: one with 3D noise convolves the noise
    with the labels, so it takes the one-hot map (``auto``), and ``lookup`` is an error."""
    if cfg.generator.noise_channels:
        if cfg.train.label_conv == "lookup":
            raise ConfigError(
                "train.label_conv: 'lookup' needs a generator without 3D noise (its SPADE convolutions see the "
                "noise and the labels together); set train.label_conv=auto or generator.noise_channels=0"
            )
        return False
    return use_label_lookup(cfg.train.label_conv, spec.label_channels, device)


def check_cuda_graph(cfg: Config, device: torch.device, num_processes: int) -> None:
    """``train.cuda_graph`` needs one CUDA process and no fp16 gradient scaler (clear errors otherwise)."""
    problems = []
    if device.type != "cuda":
        problems.append(f"a CUDA device (this run uses {device})")
    if num_processes != 1:
        problems.append(f"one process (this run has {num_processes}; DDP's all-reduce is not recorded)")
    if cfg.train.precision == "fp16":
        problems.append("train.precision bf16 or fp32 (fp16's gradient scaler skips steps from the host)")
    if problems:
        raise ConfigError("train.cuda_graph: true needs " + ", ".join(problems) + "; set train.cuda_graph=false")
