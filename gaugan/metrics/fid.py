"""Frechet Inception Distance with pytorch-fid and its standard Inception weights.

Paper section 4 reports FID (Heusel et al. 2017) between synthesised and real validation
images; docs/SPADE.md section 4 fixes the implementation everyone compares against:
pytorch-fid, its port of the TensorFlow Inception (``pt_inception-2015-12-05-6726825d.pth``),
2048-d pool features, images fed in [0, 1] (pytorch-fid resizes them to 299x299 and
rescales them itself).

What this module guarantees:

- The weights are never downloaded here (the weights stage does, :mod:`gaugan.weights`).
  :func:`find_inception_weights` looks for the file (a configured path, else the torch
  hub cache), checks its size and the SHA-256 prefix in its name, and otherwise returns
  the reason and how to provide it. A number computed with any other network is never
  called FID: without the file the caller records FID as unavailable.
- pytorch-fid has no weights-path argument; :func:`inception_feature_extractor` builds
  its network inside a temporary torch hub directory holding a link to the verified
  file, so pytorch-fid finds it "cached" and never reaches for the network.
- Real-image features depend only on the dataset, the resolution and the weights:
  :func:`load_cached_features` / :func:`store_features` cache them in an ``.npz`` keyed by
  a fingerprint of the exact images, so a changed validation set is never scored against
  stale ones. Features, not only their mean and covariance, so that KID
  (:mod:`gaugan.metrics.kid`) reuses them.

Registers the metric ``fid`` (:mod:`gaugan.metrics.registry`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_fid
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3
from torch import Tensor

from gaugan.data.io import atomic_write, file_digest
from gaugan.metrics.registry import Metric, register

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_BYTES = 95_628_359
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch hub convention: the hash prefix in the file name
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
        f"({FID_WEIGHTS_BYTES:,} bytes) and either put it in $TORCH_HOME/hub/checkpoints/ (default "
        f"~/.cache/torch/hub/checkpoints/) or set {setting} to its path"
    )


def check_weights_file(path: Path) -> str:
    """'' when ``path`` is the published pytorch-fid Inception file, else what is wrong."""
    if not path.is_file():
        return f"{path}: not found"
    size = path.stat().st_size
    if size != FID_WEIGHTS_BYTES:
        return f"{path}: {size:,} bytes, expected {FID_WEIGHTS_BYTES:,} (not the pytorch-fid Inception weights)"
    digest = file_digest(path)
    if not digest.startswith(FID_WEIGHTS_SHA256_PREFIX):
        return f"{path}: SHA-256 {digest[:16]}... does not start with {FID_WEIGHTS_SHA256_PREFIX}"
    return ""


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


@contextlib.contextmanager
def _hub_dir_holding(weights: Path) -> Iterator[Path]:
    """A temporary torch hub directory whose checkpoints/ holds ``weights`` under its hub name.

    pytorch-fid calls ``load_state_dict_from_url`` with no path argument; that function
    loads ``<hub dir>/checkpoints/<file name>`` when it exists and downloads otherwise.
    The hub directory comes from ``$TORCH_HOME`` unless someone called
    ``torch.hub.set_dir``; whichever way it was set is the way it is restored, so later
    changes of ``$TORCH_HOME`` (tests, users) keep working.
    """
    previous_dir = torch.hub.get_dir()
    previous_env = os.environ.get("TORCH_HOME")
    with tempfile.TemporaryDirectory(prefix="gaugan-fid-hub-") as tmp:
        hub = Path(tmp) / "hub"
        (hub / "checkpoints").mkdir(parents=True)
        link = hub / "checkpoints" / FID_WEIGHTS_FILE
        try:
            link.symlink_to(weights)
        except OSError:  # file systems without symlinks: a copy is slower but equivalent
            shutil.copyfile(weights, link)
        os.environ["TORCH_HOME"] = tmp
        set_explicitly = Path(torch.hub.get_dir()) != hub
        if set_explicitly:
            torch.hub.set_dir(str(hub))
        try:
            if Path(torch.hub.get_dir()) != hub:  # never let pytorch-fid fall through to a download
                raise RuntimeError(f"could not point the torch hub directory at {hub}")
            yield link
        finally:
            if previous_env is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = previous_env
            if set_explicitly:
                torch.hub.set_dir(previous_dir)


def inception_network(weights: Path) -> InceptionV3:
    """pytorch-fid's FID Inception (pool3, 2048-d) loaded from a verified local file."""
    problem = check_weights_file(Path(weights))
    if problem:
        raise FileNotFoundError(f"Inception weights for FID: {problem}; {how_to_provide_weights()}")
    with _hub_dir_holding(Path(weights).resolve()):
        network = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FID_FEATURE_DIMS]])
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
