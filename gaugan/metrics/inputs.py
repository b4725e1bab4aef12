"""What metrics are computed from: image batches, the judges, and what both produce once.

Paper section 4 measures generated images with two networks: an Inception (FID, KID) and
a segmenter (mIoU, accuracy). :class:`MetricInputs` reads the batches once and computes
only what the requested metrics need: Inception features of the generated and real
images, and the segmenter's confusion matrices on both. Metrics then read those shared
products (:mod:`gaugan.metrics.registry`), so FID and KID cost one Inception pass, and
mIoU, accuracy and the real-image ceiling one segmentation pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gaugan.metrics.fid import FeatureExtractor
from gaugan.metrics.segmentation import ConfusionMatrix, SegmentationScores
from gaugan.segmenters.base import IGNORE_INDEX, Segmenter


@dataclass(frozen=True)
class Judges:
    """The networks images are judged with; a missing one comes with the reason."""

    segmenter: Segmenter | None = None
    segmenter_reason: str = "no segmenter was given"
    extract: FeatureExtractor | None = None  # Inception pool features (gaugan.metrics.fid)
    inception_reason: str = "no Inception weights were given"
    segmenter_protocol: dict[str, Any] = field(default_factory=dict)  # how the segmenter was chosen and feeds


def missing_judge(judges: Judges, needs: Iterable[str]) -> str | None:
    """Why a judge in ``needs`` is unavailable, or None."""
    needs = set(needs)
    if "inception" in needs and judges.extract is None:
        return judges.inception_reason
    if "segmenter" in needs and judges.segmenter is None:
        return judges.segmenter_reason
    return None


@dataclass(frozen=True)
class SegmentationPair:
    generated: SegmentationScores  # the segmenter on the generated images vs their label maps
    real: SegmentationScores  # the same segmenter on the real photos: the ceiling


class MetricInputs:
    """One split's batches ``{"generated", "real", "label"}`` and the judges, read once, lazily.

    ``batches()`` yields uint8 (B, 3, H, W) ``generated`` and ``real`` images and (B, H, W)
    ``label`` indices, in the same order every time. ``needs`` names what the metrics to
    be computed need (:data:`gaugan.metrics.registry.NEEDS`): only that is computed.
    ``real_features``, when known already (a cache), spares Inception on the real images;
    otherwise they are computed and handed to ``on_real_features`` (to cache them).
    """

    def __init__(
        self,
        batches: Callable[[], Iterable[dict[str, Tensor]]],
        judges: Judges,
        device: torch.device,
        needs: Iterable[str],
        real_features: np.ndarray | None = None,
        on_real_features: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self.batches = batches
        self.judges = judges
        self.device = device
        self.needs = set(needs)
        self.real_features_given = real_features is not None
        self._real_features = real_features
        self._on_real_features = on_real_features
        self._generated_features: np.ndarray | None = None
        self._segmentation: SegmentationPair | None = None
        self._num_images: int | None = None

    def missing(self, needs: Iterable[str]) -> str | None:
        """Why something in ``needs`` is unavailable, or None."""
        return missing_judge(self.judges, needs)

    @property
    def num_images(self) -> int:
        self._read()
        return self._num_images

    def features(self, which: str) -> np.ndarray:
        """Inception features (N, D) float64 of the ``"generated"`` or ``"real"`` images."""
        self._read()
        features = {"generated": self._generated_features, "real": self._real_features}[which]
        if features is None:
            raise RuntimeError("Inception features were not computed: 'inception' is not among the needs")
        return features

    def segmentation(self) -> SegmentationPair:
        self._read()
        if self._segmentation is None:
            raise RuntimeError("segmentation was not computed: 'segmenter' is not among the needs")
        return self._segmentation

    # One pass over the batches for everything needed.
    def _read(self) -> None:
        if self._num_images is not None:
            return
        extract = self.judges.extract if "inception" in self.needs else None
        segmenter = self.judges.segmenter if "segmenter" in self.needs else None
        compute_real = extract is not None and self._real_features is None
        generated_features: list[np.ndarray] = []
        real_features: list[np.ndarray] = []
        confusion = None
        if segmenter is not None:
            confusion = {key: ConfusionMatrix(segmenter.num_classes, IGNORE_INDEX) for key in ("generated", "real")}
        count = 0
        for batch in self.batches():
            count += batch["generated"].shape[0]
            if extract is not None:
                generated_features.append(extract(batch["generated"]).numpy().astype(np.float64))
                if compute_real:
                    real_features.append(extract(batch["real"]).numpy().astype(np.float64))
            if confusion is not None:
                target = segmenter.map_target(batch["label"].to(self.device, non_blocking=True))
                for key in ("generated", "real"):
                    confusion[key].update(segmenter.predict(batch[key].to(self.device, non_blocking=True)), target)
        if count == 0:
            raise ValueError("no images to evaluate (empty split)")
        if extract is not None:
            self._generated_features = np.concatenate(generated_features)
            if compute_real:
                self._real_features = np.concatenate(real_features)
                if self._on_real_features is not None:
                    self._on_real_features(self._real_features)
            if len(self._real_features) != len(self._generated_features):
                raise ValueError(f"{len(self._generated_features)} generated images for {len(self._real_features)} "
                                 "real ones")
        if confusion is not None:
            self._segmentation = SegmentationPair(confusion["generated"].scores(), confusion["real"].scores())
        self._num_images = count
