"""The published segmenters of paper section 4, their weight files and how they load.

docs/SPADE.md section 4 names one segmenter per paper dataset. Each entry here says which
network to build, which weight files it needs, where each file comes from (a URL, or the
user for DRN-D-105), which submodule it loads into, and where it lives on disk:
``<evaluate.segmenter_weights_dir>/<segmenter name>/<file>``.

No checksum is published for these files. The weights stage records the size and SHA-256
of each file in ``<file>.pin.json`` at its first verified fetch (:mod:`gaugan.pinned`), and
:func:`ensure_weights` compares the file with that pin before anything reads it: a file
that changed since, or that no pin vouches for yet, is refused with what to do.

Loading is strict: every key and shape of the published file must match the module. The
one tolerance is BatchNorm's ``num_batches_tracked`` counter, which PyTorch added in 0.4.1
and files saved earlier lack; it has no effect in eval mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gaugan.checkpoint import CheckpointError, load_state_dict_exactly, read_torch_file
from gaugan.errors import UserError
from gaugan.pinned import PinFileError, WeightFile, pin_path, pin_problem, read_pin
from gaugan.segmenters.base import Segmenter
from gaugan.segmenters.deeplab import WEIGHTS_URL as DEEPLAB_URL
from gaugan.segmenters.deeplab import DeepLabV2COCOStuff
from gaugan.segmenters.drn import DRND105Cityscapes
from gaugan.segmenters.upernet import WEIGHTS_URL as UPERNET_URL
from gaugan.segmenters.upernet import UperNet101


class SegmenterWeightsError(UserError, FileNotFoundError):
    """A segmenter's weight file is missing, unreadable or does not fit the network."""


@dataclass(frozen=True)
class PublishedSegmenter:
    name: str
    build: Callable[[], Segmenter]
    # The attribute of the Segmenter each state dict loads into -> (file name, URL; None: the user supplies it).
    files: dict[str, tuple[str, str | None]]
    where_to_get: str  # for the error message when a file is missing and cannot be downloaded

    def weight_files(self, weights_dir: str | os.PathLike) -> dict[str, WeightFile]:
        """Submodule -> its file, at ``<weights_dir>/<name>/<file name>``, read as a state dict when first fetched."""
        return {
            submodule: WeightFile(f"segmenter {self.name} ({submodule})", filename, url,
                                  Path(weights_dir) / self.name / filename, first_fetch_check=read_state_dict,
                                  where_to_get=self.where_to_get)
            for submodule, (filename, url) in self.files.items()
        }


PUBLISHED_SEGMENTERS: dict[str, PublishedSegmenter] = {
    "upernet101_ade20k": PublishedSegmenter(
        "upernet101_ade20k",
        UperNet101,
        {
            "encoder": ("encoder_epoch_50.pth", UPERNET_URL.format(part="encoder")),
            "decoder": ("decoder_epoch_50.pth", UPERNET_URL.format(part="decoder")),
        },
        "the CSAIL scene parsing model zoo (ade20k-resnet101-upernet)",
    ),
    "deeplabv2_resnet101_msc_cocostuff164k": PublishedSegmenter(
        "deeplabv2_resnet101_msc_cocostuff164k",
        DeepLabV2COCOStuff,
        {"network": ("deeplabv2_resnet101_msc-cocostuff164k-100000.pth", DEEPLAB_URL)},
        "the kazuto1011/deeplab-pytorch v1.0 release",
    ),
    "drn_d_105_cityscapes": PublishedSegmenter(
        "drn_d_105_cityscapes",
        DRND105Cityscapes,
        {"network": ("drn_d_105_cityscapes.pth", None)},
        "the DRN-D-105 Cityscapes model of fyu/drn (http://go.yf.io/drn-cityscapes-models; no direct URL: "
        "download it yourself and place it there)",
    ),
}

# The segmenter each paper dataset is scored with (docs/SPADE.md section 4).
SEGMENTER_FOR_DATASET = {
    "ade20k": "upernet101_ade20k",
    "ade20k_outdoor": "upernet101_ade20k",
    "coco": "deeplabv2_resnet101_msc_cocostuff164k",
    "cityscapes": "drn_d_105_cityscapes",
}


class NoPublishedSegmenter(UserError, KeyError):
    """``evaluate.segmenter: published`` for a dataset that has none (a setting to change)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def published_segmenter_for(dataset: str) -> PublishedSegmenter:
    if dataset not in SEGMENTER_FOR_DATASET:
        raise NoPublishedSegmenter(
            f"no published segmenter for dataset {dataset!r}; published ones exist for "
            f"{', '.join(sorted(SEGMENTER_FOR_DATASET))}. Use evaluate.segmenter: trained (the pipeline's own) "
            "or auto"
        )
    return PUBLISHED_SEGMENTERS[SEGMENTER_FOR_DATASET[dataset]]


def ensure_weights(entry: PublishedSegmenter, weights_dir: str | os.PathLike) -> dict[str, Path]:
    """The local path of every weight file of ``entry``, each one checked against its pin.

    A missing file, one without a pin, or one that differs from its pin is an error saying
    what to do. Nothing is downloaded or pinned here: the weights stage fetches, checks and
    pins the files (:mod:`gaugan.weights`).
    """
    paths = {}
    for file in entry.weight_files(weights_dir).values():
        path = file.destination
        if not path.is_file():
            source = file.url or entry.where_to_get
            how = ("run the weights stage with internet access (dvc repro weights), or get it from "
                   f"{source} and place it there" if file.url else f"get it from {source} and place it there")
            raise SegmenterWeightsError(
                f"{path}: weight file of segmenter {entry.name!r} not found; {how} (the folder is "
                f"evaluate.segmenter_weights_dir = {str(weights_dir)!r}), or set evaluate.segmenter to 'trained', "
                "'torchscript' or 'none'"
            )
        check_pin(path)
        paths[file.filename] = path
    return paths


def check_pin(path: Path) -> None:
    """Raise :class:`SegmenterWeightsError` unless ``path`` matches the pin of its first verified fetch."""
    try:
        pin = read_pin(path)
    except PinFileError as err:
        raise SegmenterWeightsError(f"{err}; delete it and {path} and run the weights stage again "
                                    "(dvc repro weights)") from err
    if pin is None:
        raise SegmenterWeightsError(
            f"{path}: not verified yet (no {pin_path(path).name} beside it); run the weights stage (dvc repro "
            "weights), which checks the file and records its size and sha256 before anything loads it")
    problem = pin_problem(path, pin)
    if problem:
        raise SegmenterWeightsError(
            f"{path}: changed since its first verified fetch ({problem}); delete it and run the weights stage again "
            f"(dvc repro weights), or, if you replaced it on purpose with a file you trust, delete {pin_path(path)} "
            "too so that the weights stage pins the new file")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a published file: unwraps ``{"state_dict": ...}``, strips ``module.``."""
    try:
        payload = read_torch_file(path)
    except CheckpointError as err:
        raise SegmenterWeightsError(f"cannot read the weight file: {err}") from err
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise SegmenterWeightsError(f"{path}: expected a state dict of tensors, got {type(payload).__name__}")
    if payload and all(key.startswith("module.") for key in payload):  # saved from nn.DataParallel
        payload = {key[len("module."):]: value for key, value in payload.items()}
    return payload


def load_published_segmenter(dataset: str, weights_dir: str | os.PathLike, device: torch.device) -> Segmenter:
    """The published segmenter for ``dataset`` with its weights, in eval mode on ``device``."""
    entry = published_segmenter_for(dataset)
    paths = ensure_weights(entry, weights_dir)
    segmenter = entry.build()
    for submodule, (filename, _) in entry.files.items():
        load_state_dict_exactly(getattr(segmenter, submodule), read_state_dict(paths[filename]), paths[filename],
                                what=f"segmenter's {submodule}", error=SegmenterWeightsError)
    return segmenter.to(device).eval()
