"""A user's own segmenter as a TorchScript file: bring your own judge.

Paper section 4 scores generated images with a segmenter trained on the dataset's real
photos. Users of their own data often have one already; ``evaluate.segmenter:
torchscript`` with ``evaluate.segmenter_path`` scores with it instead of the pipeline's.

The contract (docs/EVALUATION.md "Your own segmenter"):

- the file is a TorchScript module (``torch.jit.script(model)`` or ``torch.jit.trace``,
  then ``torch.jit.save``), or, since torch deprecates TorchScript, an exported program
  (``torch.export.export(model.eval(), ...)`` with a dynamic batch dimension, then
  ``torch.export.save``); it is loaded on the evaluation device and must be in eval mode;
- it is called as ``module(images)`` with ``images`` float32 (B, 3, H, W), RGB, values in
  [0, 1], at the model's resolution (any normalisation happens inside the module);
- it returns either class scores (B, C, h, w) (upsampled bilinearly to H x W, then
  argmax, like the published segmenters) or class ids (B, H, W) (integer);
- class ids are the dataset's stored label indices ``0 .. label_nc - 1`` (what ``gaugan
  classes --dataset ...`` lists; a custom dataset's indices after its mapping); so C must
  equal ``label_nc``. The don't-care index is not scored. A module trained with other
  ids is wrapped to output these.
- scores are finite: a NaN or infinite score is an error (an argmax over NaN would quietly
  pick class 0 and yield a meaningless mIoU).

Whatever breaks (a file that is not such a module, a module that fails on a batch or breaks
the contract) is one :class:`TorchScriptSegmenterError` line naming the file, the setting
and the reason; torch's own log lines and deprecation warnings about loading are kept off
the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gaugan.checkpoint import torch_error_reason, why_not_a_zip_archive
from gaugan.data.registry import DatasetSpec
from gaugan.errors import UserError
from gaugan.segmenters.base import IGNORE_INDEX, Segmenter, stored_target_table

SETTING = "evaluate.segmenter_path"


class TorchScriptSegmenterError(UserError, ValueError):
    """The TorchScript segmenter is missing, unreadable or breaks the input/output contract."""


class TorchScriptSegmenter(Segmenter):
    """A scripted module under the contract of the module docstring."""

    name = "torchscript"

    def __init__(self, module: torch.nn.Module, spec: DatasetSpec, path: Path,
                 class_names: list[str] | None = None) -> None:
        super().__init__(stored_target_table(spec))
        self.module = module
        self.path = path
        self.num_classes = spec.label_nc
        self.names = list(class_names) if class_names is not None else [str(k) for k in range(spec.label_nc)]

    def preprocess(self, images: Tensor) -> Tensor:
        return images.to(self.target_table.device, non_blocking=True).float().div(255.0)

    def logits(self, inputs: Tensor) -> Tensor:
        return self.module(inputs)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """uint8 RGB (B, 3, H, W) -> (B, H, W) class ids, from scores or ids, checked against the contract."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        batch, _, height, width = images.shape
        try:
            with quiet_torch():
                output = self.logits(self.preprocess(images))
        except Exception as err:  # noqa: BLE001 - whatever the user's module raises, it is its failure
            raise self._broken(f"failed on a batch of shape {tuple(images.shape)} ({type(err).__name__}: "
                               f"{torch_error_reason(err)})") from err
        if not isinstance(output, Tensor):
            raise self._broken(f"returned a {type(output).__name__}, not a tensor")
        if output.dim() == 4 and output.is_floating_point():
            if output.shape[0] != batch or output.shape[1] != self.num_classes:
                raise self._broken(f"returned scores of shape {tuple(output.shape)}; expected ({batch}, "
                                   f"{self.num_classes}, h, w): one channel per class of the dataset")
            finite = torch.isfinite(output)
            if not bool(finite.all()):
                bad = int(finite.numel() - finite.sum())
                raise self._broken(f"returned non-finite scores (NaN or infinity) in {bad:,} of {finite.numel():,} "
                                   "values; every score must be a finite number")
            if output.shape[-2:] != (height, width):
                output = F.interpolate(output.float(), size=(height, width), mode="bilinear", align_corners=False)
            return output.argmax(dim=1)
        if output.dim() == 3 and not output.is_floating_point():
            if tuple(output.shape) != (batch, height, width):
                raise self._broken(f"returned class ids of shape {tuple(output.shape)}; expected "
                                   f"({batch}, {height}, {width})")
            ids = output.long()
            if bool(((ids < 0) | (ids >= self.num_classes)).any()):
                raise self._broken(f"returned class ids outside 0..{self.num_classes - 1}")
            return ids
        raise self._broken(f"returned a {output.dtype} tensor of shape {tuple(output.shape)}; expected float scores "
                           "(B, C, h, w) or integer class ids (B, H, W)")

    def _broken(self, problem: str) -> TorchScriptSegmenterError:
        return TorchScriptSegmenterError(f"{self.path} ({SETTING}): the segmenter {problem} (see docs/EVALUATION.md "
                                         "'Your own segmenter' for the input/output contract)")

    def protocol(self) -> dict[str, Any]:
        return {
            "segmenter": f"user-supplied TorchScript module {self.path.name}",
            "weights": str(self.path),
            "preprocessing": "RGB/255 (float32 in [0, 1]) at the model's resolution; the module normalises itself",
            "class_mapping": f"stored index k in 0..{self.num_classes - 1} -> class k; don't-care ignored",
            "num_classes": self.num_classes,
            "ignore_index": IGNORE_INDEX,
        }


class _TorchLog(logging.Handler):
    """Holds what torch logs inside :func:`quiet_torch` instead of printing it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def logged_error(self) -> BaseException | None:
        """The last exception torch logged (``torch.export.load`` logs the reason, then raises
        an error that only says to look at the log)."""
        for record in reversed(self.records):
            if record.exc_info and record.exc_info[1] is not None:
                return record.exc_info[1]
        return None


@contextlib.contextmanager
def quiet_torch() -> Iterator[_TorchLog]:
    """Keeps torch's log lines (``torch.export`` logs a traceback for a file it cannot read)
    and its TorchScript deprecation warnings off the terminal: the records are held for the
    reason they carry, and failures become our one line."""
    held = _TorchLog()
    names = ["torch", *(name for name in list(logging.Logger.manager.loggerDict) if name.startswith("torch."))]
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger, logger.handlers, logger.propagate) for logger in loggers if logger.name == "torch" or logger.handlers]
    for logger, _, _ in saved:
        logger.handlers, logger.propagate = [held], False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield held
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


def archive_kind(path: Path) -> str:
    """'torchscript', 'torch.save' or (any other zip archive, for torch.export to judge)
    'exported', from the archive's entries; a ValueError saying what the file is when it is
    not a complete zip archive."""
    not_an_archive = why_not_a_zip_archive(path)
    if not_an_archive is not None:
        raise ValueError(not_an_archive)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.endswith("/constants.pkl") for name in names):
        return "torchscript"
    if any(name.endswith("/data.pkl") for name in names) and not any(name.endswith(".json") for name in names):
        return "torch.save"
    return "exported"


def load_torchscript_segmenter(path: str | os.PathLike | None, spec: DatasetSpec, device: torch.device,
                               class_names: list[str] | None = None) -> TorchScriptSegmenter:
    """The scripted or exported module at ``path`` (``evaluate.segmenter_path``), on ``device``.

    The wrapper is not switched to eval mode with ``.eval()``: an exported program refuses
    it; both formats are saved in the mode they run in.
    """
    if path is None:
        raise TorchScriptSegmenterError(f"evaluate.segmenter is 'torchscript' but {SETTING} is null; set it to the "
                                        "file written by torch.jit.save")
    path = Path(path)
    if not path.is_file():
        raise TorchScriptSegmenterError(f"{path} ({SETTING}): no such file")
    how_to = "save one with torch.jit.save(torch.jit.script(model), path) or torch.export.save(program, path)"
    try:
        kind = archive_kind(path)
    except ValueError as err:
        raise TorchScriptSegmenterError(f"{path} ({SETTING}): not a TorchScript module or exported program ({err}); "
                                        f"{how_to}") from err
    if kind == "torch.save":
        raise TorchScriptSegmenterError(
            f"{path} ({SETTING}): not a TorchScript module or exported program (written by torch.save (weights or a "
            f"pickled object), not a module); {how_to}")
    with quiet_torch() as torch_log:
        try:
            if kind == "torchscript":
                module = torch.jit.load(str(path), map_location=device).eval()
            else:  # exported programs are in eval mode as saved
                module = torch.export.load(str(path)).module().to(device)
        except Exception as err:  # noqa: BLE001 - the loaders raise many types; all mean "not loadable"
            reason = torch_error_reason(torch_log.logged_error() or err)
            raise TorchScriptSegmenterError(f"{path} ({SETTING}): not a TorchScript module or exported program "
                                            f"({kind} archive, unreadable: {reason}); {how_to}") from err
    segmenter = TorchScriptSegmenter(module, spec, path, class_names)
    segmenter.target_table = segmenter.target_table.to(device)
    return segmenter
