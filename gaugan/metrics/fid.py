"""Frechet Inception Distance with pytorch-fid and its standard Inception weights.

Paper section 4 reports FID (Heusel et al. 2017) between synthesised and real validation
images; docs/SPADE.md section 4 fixes the implementation everyone compares against:
pytorch-fid, its port of the TensorFlow Inception (``pt_inception-2015-12-05-6726825d.pth``),
2048-d pool features, images fed in [0, 1] (pytorch-fid resizes them to 299x299 and
rescales them itself).

What this module guarantees:

- The weights are never downloaded here (the weights stage does, :mod:`gaugan.weights`).
  :func:`find_inception_weights` looks for the file (a configured path, else the torch
  hub cache), checks its size and full SHA-256 (:data:`FID_WEIGHTS_PIN`; the file name
  carries only the first 8 hex digits), and otherwise returns the reason and how to
  provide it. A number computed with any other network is never called FID: without the
  file the caller records FID as unavailable.
- pytorch-fid has no weights-path argument, and its loader unpickles with
  ``weights_only=False``. :func:`inception_network` checks the file again, reads it
  weights-only itself (:func:`gaugan.checkpoint.read_torch_file`) and hands that state
  dict to pytorch-fid's network in place of its download, so no pickled code can run and
  the network is never reached for.
- Real-image features depend only on the dataset, the resolution and the weights:
  :func:`load_cached_features` / :func:`store_features` cache them in an ``.npz`` keyed by
  a fingerprint of the exact images, so a changed validation set is never scored against
  stale ones. Features, not only their mean and covariance, so that KID
  (:mod:`gaugan.metrics.kid`) reuses them.

Registers the metric ``fid`` (:mod:`gaugan.metrics.registry`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_fid
import pytorch_fid.inception
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3
from torch import Tensor

from gaugan.checkpoint import CheckpointError, read_torch_file
from gaugan.data.io import atomic_write
from gaugan.errors import UserError
from gaugan.metrics.registry import Metric, register
from gaugan.pinned import Pin, pin_problem

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# The published file: its name carries the first 8 hex digits of this SHA-256 (torch hub's
# convention); the full value and the size are those other projects pin for this URL.
FID_WEIGHTS_PIN = Pin(95_628_359, "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2")
FID_FEATURE_DIMS = 2048

# A feature extractor maps a uint8 (B, 3, H, W) batch to float (B, D) features.
FeatureExtractor = Callable[[Tensor], Tensor]


def pytorch_fid_version() -> str:
    return pytorch_fid.__version__


# --------------------------------------------------------------------------------------
# Finding and checking the weights.


@dataclass(frozen=True)
class WeightsLookup:
    path: Path | None  # the verified file, or None
    reason: str  # why it is unavailable ("" when found)

    @property
    def available(self) -> bool:
        return self.path is not None


def how_to_provide_weights(setting: str = "evaluate.fid_weights") -> str:
    return (
        f"run the weights stage with internet access (dvc repro weights), or download {FID_WEIGHTS_URL} "
        f"({FID_WEIGHTS_PIN.num_bytes:,} bytes) and either put it in $TORCH_HOME/hub/checkpoints/ (default "
        f"~/.cache/torch/hub/checkpoints/) or set {setting} to its path"
    )


def check_weights_file(path: Path) -> str:
    """'' when ``path`` is the published pytorch-fid Inception file, else what is wrong."""
    if not path.is_file():
        return f"{path}: not found"
    problem = pin_problem(path, FID_WEIGHTS_PIN)
    return f"{path}: not the pytorch-fid Inception weights ({problem})" if problem else ""


def find_inception_weights(configured: str | os.PathLike | None = None, setting: str = "evaluate.fid_weights") -> WeightsLookup:
    """Locate the verified Inception file without touching the network.

    ``configured`` (the ``evaluate.fid_weights`` setting) is used when given; otherwise
    the torch hub cache, ``$TORCH_HOME/hub/checkpoints/`` (``torch.hub.get_dir()``).
    """
    if configured is not None:
        candidate = Path(configured).expanduser()
        where = f"{setting} = {str(configured)!r}"
    else:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE
        where = "the torch hub cache ($TORCH_HOME/hub/checkpoints)"
    problem = check_weights_file(candidate)
    if problem:
        return WeightsLookup(None, f"Inception weights for FID unavailable ({where}): {problem}; "
                                   f"to provide them, {how_to_provide_weights(setting)}")
    return WeightsLookup(candidate.resolve(), "")


# --------------------------------------------------------------------------------------
# The pytorch-fid network.


class InceptionWeightsError(UserError, FileNotFoundError):
    """The Inception weights are missing, not the published file, or unreadable."""


# pytorch-fid's module-level loader is swapped while its network is built: one build at a time.
_BUILD_LOCK = threading.Lock()


def inception_network(weights: Path) -> InceptionV3:
    """pytorch-fid's FID Inception (pool3, 2048-d) from a verified local file, read weights-only.

    pytorch-fid builds the network and calls its module's ``load_state_dict_from_url``
    (torch hub's, which unpickles with ``weights_only=False`` and downloads when the file is
    not cached); while the network is built that name returns the state dict read here.
    """
    problem = check_weights_file(Path(weights))
    if problem:
        raise InceptionWeightsError(f"Inception weights for FID: {problem}; {how_to_provide_weights()}")
    try:
        state = read_torch_file(weights)
    except CheckpointError as err:
        raise InceptionWeightsError(f"Inception weights for FID: {err}") from err

    def verified_state(url: str, *args: object, **kwargs: object) -> dict:
        if url != FID_WEIGHTS_URL:  # another file than ours: never fetched here
            raise RuntimeError(f"pytorch-fid asked for {url}, not {FID_WEIGHTS_URL}")
        return state

    with _BUILD_LOCK:
        original = pytorch_fid.inception.load_state_dict_from_url
        pytorch_fid.inception.load_state_dict_from_url = verified_state
        try:
            network = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FID_FEATURE_DIMS]])
        finally:
            pytorch_fid.inception.load_state_dict_from_url = original
    return network.eval()


def inception_feature_extractor(weights: Path, device: torch.device) -> FeatureExtractor:
    """uint8 (B, 3, H, W) -> (B, 2048) float64 CPU features, as pytorch-fid computes them.

    pytorch-fid reads images with ``ToTensor`` (uint8 / 255); the network itself resizes
    to 299x299 (bilinear) and maps [0, 1] to [-1, 1].
    """
    network = inception_network(weights).to(device)

    @torch.no_grad()
    def extract(images: Tensor) -> Tensor:
        batch = images.to(device, non_blocking=True).float().div_(255.0)
        pooled = network(batch)[0]
        return pooled.reshape(pooled.shape[0], -1).double().cpu()

    return extract


# --------------------------------------------------------------------------------------
# Statistics and the distance.


@dataclass(frozen=True)
class FeatureStatistics:
    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    num_images: int


def feature_statistics(features: np.ndarray) -> FeatureStatistics:
    """Mean and covariance (``np.cov``, unbiased, as pytorch-fid) of (N, D) features."""
    if features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images, got {features.shape[0]}")
    return FeatureStatistics(features.mean(axis=0), np.cov(features, rowvar=False), int(features.shape[0]))


def extract_features(batches: Iterable[Tensor], extract: FeatureExtractor) -> np.ndarray:
    """(N, D) float64 features of every image of ``batches``."""
    features = [extract(batch).numpy().astype(np.float64) for batch in batches]
    if not features:
        raise ValueError("no images to compute features from")
    return np.concatenate(features, axis=0)


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, pytorch-fid's own arithmetic."""
    return float(calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma))


def fingerprint_images(batches: Iterable[Tensor]) -> str:
    """SHA-256 over the exact uint8 pixels and shapes, in order (the real-features cache key)."""
    digest = hashlib.sha256()
    count = 0
    for batch in batches:
        array = np.ascontiguousarray(batch.cpu().numpy())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
        count += array.shape[0]
    return f"{digest.hexdigest()}-{count}"


def load_cached_features(path: str | os.PathLike, key: dict[str, object]) -> np.ndarray | None:
    """The real-image features cached at ``path`` when stored with exactly ``key``, else None.

    ``key`` names everything the features depend on (image fingerprint, resolution,
    weights, pytorch-fid version); an unreadable file or another key is a miss.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) == json.dumps(key, sort_keys=True):
                return stored["features"]
    except (OSError, KeyError, ValueError):
        pass  # unreadable or from another version of this code: a miss
    return None


def store_features(path: str | os.PathLike, key: dict[str, object], features: np.ndarray) -> None:
    """Write features with their key, atomically (a temporary file renamed over ``path``)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file handle: np.savez would add ".npz" to a path
            np.savez(handle, features=features, key=np.str_(json.dumps(key, sort_keys=True)))

    atomic_write(path, write)


# --------------------------------------------------------------------------------------
# The metric.


def _fid(inputs) -> float:
    generated, real = inputs.features("generated"), inputs.features("real")
    return frechet_distance(feature_statistics(generated), feature_statistics(real))


register(Metric(
    name="fid",
    compute=_fid,
    needs=frozenset({"generated", "real", "inception"}),
    tracking_key="fid/val",
    label="FID",
    description="Frechet Inception distance between generated and real images (pytorch-fid); "
                "biased upwards for small sets: compare at equal numbers of images",
    higher_is_better=False,
    rank=10,
    protocol={"implementation": f"pytorch-fid {pytorch_fid_version()}", "pytorch_fid_version": pytorch_fid_version(),
              "weights_file": FID_WEIGHTS_FILE, "feature_dims": FID_FEATURE_DIMS},
))
