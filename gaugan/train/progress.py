"""Where a training stands, and how a run continues from its ``last.pt``.

:class:`Progress` is the position the loop advances step by step and the checkpoint stores
(``"progress"``: the next batch to train is ``batch_in_epoch`` of ``epoch``).
:func:`restore_training` puts a resumable checkpoint's state back into a run: networks,
optimisers, gradient scalers and every process's random states (the file format itself, and
the check that a checkpoint may be continued with a configuration, are
:mod:`gaugan.checkpoint`'s).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gaugan.checkpoint import CheckpointError, load_state_dict_exactly
from gaugan.seeding import restore_rng_state, seed_everything


@dataclass(frozen=True)
class Progress:
    """Where training stands: the next batch to train is ``batch_in_epoch`` of ``epoch``."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0

    def advanced(self) -> Progress:
        """After one more step."""
        return Progress(self.epoch, self.step + 1, self.batch_in_epoch + 1)

    def continuation(self, batches_per_epoch: int) -> Progress:
        """Where to continue from: after an epoch's last batch, the start of the next epoch."""
        if self.batch_in_epoch >= batches_per_epoch:
            return Progress(self.epoch + 1, self.step, 0)
        return self


def restore_training(
    payload: dict[str, Any],
    path: Path,
    models: Mapping[str, Any],
    optimizers: Mapping[str, torch.optim.Optimizer],
    scalers: Mapping[str, torch.amp.GradScaler] | None,
    rank: int,
    world_size: int,
    seed: int,
) -> Progress:
    """Load networks, optimisers, scalers and random states from ``payload``; the progress.

    With another process count than the checkpoint's, the data order is still exact (it
    depends on (seed, epoch) only) but the random streams are reseeded from the step.
    """
    saved_models = payload["models"]
    for name, holder in models.items():
        if name not in saved_models:
            raise CheckpointError(f"{path}: the checkpoint has no models[{name!r}]")
        load_state_dict_exactly(holder, saved_models[name], f"{path} (models[{name!r}])", what=name)
    for name, optimizer in optimizers.items():
        load_optimizer_state(optimizer, payload["optimizers"][name])
    if scalers and payload.get("scaler"):
        for name, scaler in scalers.items():
            scaler.load_state_dict(payload["scaler"][name])
    progress = Progress(**payload["progress"])
    rng = payload["rng"]
    rng_states = rng.get("per_rank") or [rng]  # older single-process files: the state itself
    if len(rng_states) == world_size:
        restore_rng_state(rng_states[rank])
    else:
        seed_everything(seed + rank + progress.step)
    return progress


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping how this run executes the update.

    ``capturable`` (step counts on the device) is set by CUDA-graph runs
    (:func:`gaugan.train.cuda_graphs.make_capturable`) and saved with the state; the CPU refuses
    to step a capturable Adam, and a graph needs the flag whatever the checkpoint says. So each
    group keeps the flag it was built with, and its step counts follow it: on the parameter's
    device when capturable (or fused), on the host otherwise, as a fresh optimiser keeps them.
    """
    capturable = [group.get("capturable", False) for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flag in zip(optimizer.param_groups, capturable):
        group["capturable"] = flag
        for param in group["params"]:
            param_state = optimizer.state.get(param, {})
            step = param_state.get("step")
            if isinstance(step, Tensor) and not (flag or group.get("fused")):
                param_state["step"] = step.to("cpu")


# --------------------------------------------------------------------------------------
# Strict state-dict loading, with one error listing every disagreement.
