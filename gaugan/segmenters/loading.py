"""Which segmenter judges a dataset, and loading it: one entry point for evaluation and tools.

Paper section 4 scores generated images with a segmenter. ``evaluate.segmenter`` chooses:

- ``auto``: the published segmenter for the paper's datasets (docs/SPADE.md section 4),
  the pipeline's own (:mod:`gaugan.segmenters.trained`) for the others;
- ``published`` / ``trained``: that one; ``torchscript``: the user's own module
  (:mod:`gaugan.segmenters.torchscript`, path in ``evaluate.segmenter_path``);
- ``none``: no segmentation scores.

:func:`load_segmenter_for` returns a ready :class:`~gaugan.segmenters.base.Segmenter`
(``predict(uint8 (B, 3, H, W)) -> (B, H, W)`` class ids, ``class_names()``), e.g. to turn a
photo into a label map. :func:`judge_for` is what evaluation uses: it also says why there
is no segmenter (``auto`` without the published weights records the reason; asking for
``published`` explicitly makes it an error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from gaugan.data.classes import CLASS_NAMES, class_names
from gaugan.data.registry import DatasetSpec
from gaugan.errors import UserError
from gaugan.segmenters.base import IGNORE_INDEX, Segmenter
from gaugan.segmenters.published import (
    SEGMENTER_FOR_DATASET,
    SegmenterWeightsError,
    load_published_segmenter,
)
from gaugan.segmenters.torchscript import load_torchscript_segmenter
from gaugan.segmenters.trained import load_trained_segmenter

CHOICES = ("auto", "published", "trained", "torchscript", "none")


def resolve_choice(choice: str, dataset: str) -> str:
    """``auto`` -> ``published`` for the paper's datasets, ``trained`` otherwise; others as they are."""
    if choice not in CHOICES:
        raise UserError(f"evaluate.segmenter: got {choice!r}, expected one of {', '.join(CHOICES)}")
    if choice == "auto":
        return "published" if dataset in SEGMENTER_FOR_DATASET else "trained"
    if choice == "published" and dataset not in SEGMENTER_FOR_DATASET:
        raise UserError(f"evaluate.segmenter is 'published' but no published segmenter exists for dataset "
                        f"{dataset!r} (only for {', '.join(sorted(SEGMENTER_FOR_DATASET))}); use 'trained', "
                        "'torchscript' or 'auto'")
    return choice


def load_segmenter_for(
    spec: DatasetSpec,
    choice: str = "auto",
    device: torch.device | str = "cpu",
    *,
    weights_dir: str | os.PathLike = "data/weights",
    trained_path: str | os.PathLike = "checkpoints/segmenter/segmenter.pt",
    torchscript_path: str | os.PathLike | None = None,
) -> Segmenter:
    """The segmenter ``choice`` names for ``spec``'s dataset, in eval mode on ``device``.

    Raises a :class:`~gaugan.errors.UserError` saying what is missing (weights, the trained
    file) and how to get it. Never touches the network (the weights stage downloads).
    """
    device = torch.device(device)
    resolved = resolve_choice(choice, spec.name)
    if resolved == "none":
        raise UserError("evaluate.segmenter is 'none': no segmenter to load")
    if resolved == "published":
        segmenter = load_published_segmenter(spec.name, weights_dir, device)
        segmenter.names = published_class_names(segmenter, spec)
        return segmenter
    if resolved == "torchscript":
        return load_torchscript_segmenter(torchscript_path, spec, device, class_names(spec)[: spec.label_nc])
    return load_trained_segmenter(trained_path, spec, device)


@dataclass(frozen=True)
class Judge:
    """The segmenter evaluation uses, or why there is none."""

    segmenter: Segmenter | None
    status: str  # "ok", "unavailable" or "disabled"
    reason: str
    protocol: dict[str, Any]


def judge_for(
    spec: DatasetSpec,
    choice: str,
    device: torch.device,
    *,
    weights_dir: str | os.PathLike,
    trained_path: str | os.PathLike,
    torchscript_path: str | os.PathLike | None = None,
) -> Judge:
    """:func:`load_segmenter_for` for evaluation: ``none`` is disabled, and a
    missing published weight file under ``auto`` is unavailable with the reason."""
    resolved = resolve_choice(choice, spec.name)
    if resolved == "none":
        return Judge(None, "disabled", "evaluate.segmenter is 'none'", {"segmenter": "none", "choice": choice})
    try:
        segmenter = load_segmenter_for(spec, choice, device, weights_dir=weights_dir, trained_path=trained_path,
                                       torchscript_path=torchscript_path)
    except SegmenterWeightsError as err:
        if choice == "published":
            raise
        return Judge(None, "unavailable", str(err), {"segmenter": f"published for {spec.name}", "choice": choice,
                                                     "resolved": resolved})
    return Judge(segmenter, "ok", "", {**segmenter.protocol(), "choice": choice, "resolved": resolved})


def published_class_names(segmenter: Segmenter, spec: DatasetSpec) -> list[str]:
    """Names in the segmenter's class space, from the names of the stored indices that map to them.

    The dataset's full name list is used (ADE20K index 150 is "flag": with ADE20K's
    convention index 0 is "other" and there is no separate don't-care index).
    """
    known = CLASS_NAMES.get(spec.name, ())
    stored = class_names(spec)
    names = segmenter.class_names()
    for index, target in enumerate(segmenter.target_table.cpu().tolist()):
        if target != IGNORE_INDEX and target < len(names):
            names[target] = known[index] if index < len(known) else stored[index]
    return names

