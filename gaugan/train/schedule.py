"""Learning rates per epoch: constant, then linear decay to zero (docs/SPADE.md section 2).

The official code keeps ``lr`` for ``niter`` epochs and then, at the end of every later
epoch, subtracts ``lr / niter_decay``; the TTUR split (G at lr/2, D at 2*lr) is re-applied
to the decayed value. Written here as a closed form of the epoch index so that a resumed
run gets the same rates without replaying history.

``optim.lr_g`` / ``optim.lr_d`` set G's and D's rates directly (OASIS trains G at 1e-4 and D
at 4e-4 with Adam betas (0, 0.999), constant); the decay scales them the same way.
"""

from __future__ import annotations

import torch

from gaugan.config import OptimConfig


def base_lr(optim: OptimConfig, epoch: int) -> float:
    """The undivided learning rate during ``epoch`` (0-based).

    Epochs ``0 .. num_epochs_constant`` (inclusive of the first decay epoch, as in the
    official code, which decrements only at the end of an epoch) train at ``lr``; epoch
    ``num_epochs_constant + k`` trains at ``lr * (1 - k / num_epochs_decay)``, so the last
    epoch uses ``lr / num_epochs_decay`` and the rate would reach 0 right after it.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    decayed_epochs = epoch - optim.num_epochs_constant
    if decayed_epochs <= 0 or optim.num_epochs_decay == 0:
        return optim.lr
    return max(0.0, optim.lr * (1.0 - decayed_epochs / optim.num_epochs_decay))


def learning_rates(optim: OptimConfig, epoch: int) -> tuple[float, float]:
    """(G lr, D lr) during ``epoch``: TTUR gives G half and D twice the base rate; ``lr_g`` /
    ``lr_d``, when set, replace those, decayed by the same factor."""
    lr = base_lr(optim, epoch)
    lr_g, lr_d = (lr / 2.0, lr * 2.0) if optim.use_ttur else (lr, lr)
    decay = lr / optim.lr
    if optim.lr_g is not None:
        lr_g = optim.lr_g * decay
    if optim.lr_d is not None:
        lr_d = optim.lr_d * decay
    return lr_g, lr_d


def adam_betas(optim: OptimConfig) -> tuple[float, float]:
    """TTUR uses betas (0, 0.9) as the official code; otherwise the configured ones."""
    if optim.use_ttur:
        return 0.0, 0.9
    return optim.beta1, optim.beta2


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
