"""The divergence guard: stop training when a loss or a network's weights become NaN or infinite.

Loss values stay on the device: each step's ``isfinite`` flags are kept there, and read in
one host sync on log and checkpoint steps (no per-step sync). Before a checkpoint is
written, every network's parameters and buffers are checked as well (one fused reduction
per network): an update can make weights non-finite while the losses that produced it were
finite, and such weights must not overwrite the last good checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from gaugan.errors import UserError
from gaugan.train.distributed import DistributedContext


class TrainingDiverged(UserError, RuntimeError):
    """A loss or a network's weights became NaN or infinite; training stopped without
    overwriting the last good checkpoint."""


def all_finite(module: nn.Module) -> Tensor:
    """A 0-d bool tensor on the module's device: every floating parameter and buffer is finite.

    The infinity norm (largest magnitude) of each tensor, computed for all of them in one
    fused call; it is NaN or infinite exactly when the tensor holds a NaN or an infinity,
    and it cannot overflow.
    """
    tensors = [t.detach() for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if not tensors:
        return torch.tensor(True)
    return torch.stack(torch._foreach_norm(tensors, ord=float("inf"))).isfinite().all()


class FinitenessGuard:
    """Collects each step's loss flags on the device and checks them, all at once, when asked.

    ``checkpoint_path`` and ``checkpoint_step`` (the step of the checkpoint this run resumed
    from, None for a fresh run; updated by :meth:`checkpoint_written`) let the error say
    what a rerun will do.
    """

    def __init__(self, context: DistributedContext, checkpoint_path: Path, checkpoint_step: int | None) -> None:
        self.context = context
        self.checkpoint_path = checkpoint_path
        self.checkpoint_step = checkpoint_step
        self._pending: list[tuple[int, list[str], Tensor]] = []

    def record(self, step: int, losses: Mapping[str, Tensor]) -> None:
        """Keep the step's flags (on the device; no host sync)."""
        names = list(losses)
        self._pending.append((step, names, torch.isfinite(torch.stack([losses[name] for name in names]))))

    def check_losses(self) -> None:
        """One host sync over every step recorded since the last check; raises on the first bad one."""
        if not self._pending:
            return
        flags = self._on_every_process(torch.stack([flags for _, _, flags in self._pending]))
        pending, self._pending = self._pending, []
        for (step, names, _), row in zip(pending, flags.tolist()):
            if not all(row):
                bad = ", ".join(name for name, ok in zip(names, row) if not ok)
                raise self._diverged(f"{bad} became non-finite at step {step}")

    def check_weights(self, step: int, networks: Mapping[str, nn.Module]) -> None:
        """Raise if any network holds a non-finite parameter or buffer (before a checkpoint is written)."""
        names = list(networks)
        flags = self._on_every_process(torch.stack([all_finite(networks[name]).to(self.context.device)
                                                    for name in names]))
        bad = [name for name, ok in zip(names, flags.tolist()) if not ok]
        if bad:
            raise self._diverged(
                f"the weights of {', '.join(bad)} became non-finite at step {step} (the losses were still finite)"
            )

    def checkpoint_written(self, step: int) -> None:
        self.checkpoint_step = step

    def _on_every_process(self, flags: Tensor) -> Tensor:
        """``flags`` (bool) AND-ed over the processes, on the host: every rank raises together."""
        flags = flags.to(torch.int32)
        if self.context.is_distributed:
            flags = flags.to(self.context.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        return flags.cpu().bool()

    def _diverged(self, what: str) -> TrainingDiverged:
        if self.checkpoint_step is None:
            kept = "no checkpoint of this run had been written yet"
            rerun = "then rerun: it starts afresh"
        else:
            kept = f"the last good checkpoint {self.checkpoint_path} (step {self.checkpoint_step}) is kept"
            rerun = "then rerun: it resumes from that checkpoint"
        return TrainingDiverged(
            f"training diverged: {what}; stopped, {kept}. Lower optim.lr or use train.precision=fp32, {rerun}."
        )
