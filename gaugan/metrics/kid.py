"""Kernel Inception Distance (Binkowski et al., ICLR 2018) from the same Inception features as FID.

FID is biased upwards for small sets (its value depends on the number of images; the
built-in validation split has 100), which makes FIDs of different set sizes incomparable.
KID is the unbiased estimate of the squared maximum mean discrepancy between the
generated and real features under the polynomial kernel ``k(x, y) = (x.y / d + 1)^3``,
averaged over random subsets, as stylegan3 and clean-fid compute it (100 subsets of at
most 1000 images, drawn with a fixed seed). It costs nothing extra: the features are the
ones FID already computed (:mod:`gaugan.metrics.fid`). Lower is better; 0 for identical
distributions (an unbiased estimate can be slightly negative).
"""

from __future__ import annotations

import numpy as np

from gaugan.metrics.fid import FID_WEIGHTS_FILE, pytorch_fid_version
from gaugan.metrics.registry import Metric, register

KID_NUM_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000


def kernel_inception_distance(generated: np.ndarray, real: np.ndarray, num_subsets: int = KID_NUM_SUBSETS,
                              max_subset_size: int = KID_MAX_SUBSET_SIZE, seed: int = 0) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over ``num_subsets`` subsets.

    Each subset draws ``m = min(len(generated), len(real), max_subset_size)`` rows of each
    without replacement. Per subset: the mean of ``k`` over distinct pairs within each set,
    minus twice its mean over all cross pairs.
    """
    dims = generated.shape[1]
    m = min(len(generated), len(real), max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(generated)} generated and {len(real)} real")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = generated[rng.choice(len(generated), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        within = (x @ x.T / dims + 1) ** 3 + (y @ y.T / dims + 1) ** 3
        across = (x @ y.T / dims + 1) ** 3
        total += (within.sum() - np.diag(within).sum()) / (m - 1) - across.sum() * 2 / m
    return float(total / num_subsets / m)


def _kid(inputs) -> float:
    return kernel_inception_distance(inputs.features("generated"), inputs.features("real"))


register(Metric(
    name="kid",
    compute=_kid,
    needs=frozenset({"generated", "real", "inception"}),
    tracking_key="kid/val",
    label="KID",
    description="Kernel Inception distance (unbiased MMD^2, cubic polynomial kernel) on the FID features; "
                "unlike FID, comparable across set sizes",
    higher_is_better=False,
    digits=4,
    rank=60,
    protocol={"features": f"pytorch-fid {pytorch_fid_version()} Inception pool ({FID_WEIGHTS_FILE})",
              "kernel": "(x.y / d + 1)^3", "num_subsets": KID_NUM_SUBSETS,
              "subset_size": f"min(number of images, {KID_MAX_SUBSET_SIZE})", "subset_seed": 0},
))
