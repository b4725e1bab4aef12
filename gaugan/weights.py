"""The pretrained files a run needs, fetched, verified and cached once (the weights stage).

Evaluation and training use networks trained by others (docs/SPADE.md section 4):
pytorch-fid's Inception for FID and KID, torchvision's VGG19 for the perceptual loss, and
the published segmenter of each paper dataset (UperNet-101, DeepLabV2-ResNet101,
DRN-D-105). :func:`needed_weights` says which files the configured run needs and where
they live (the torch hub cache ``$TORCH_HOME/hub/checkpoints/`` for Inception and VGG19,
where pytorch-fid and torchvision look; ``<evaluate.segmenter_weights_dir>/<segmenter>/``
for the segmenters). :func:`fetch` makes one present and verified (:mod:`gaugan.pinned`):

- over https only (a plain-http URL, mirror or redirect is refused; only the loopback
  address, whose bytes never leave the machine, may be plain http), with resume and a
  progress bar (:func:`gaugan.data.download.download_file`: into ``<file>.partial``,
  renamed when complete);
- Inception and VGG19 against the published size and full SHA-256; a mismatch is moved
  aside;
- a published segmenter file, which has no published checksum, must read as a state dict
  of tensors (weights-only); its size and SHA-256 are then pinned in ``<file>.pin.json``,
  and from then on compared (a file already in place, placed by hand, is checked and
  pinned the same way when first seen).

Any failure (offline, HTTP error, cut connection, wrong checksum) is returned as
"unavailable" with the reason and how to place the file by hand: the pipeline completes
without it and the metric that needs it says why it is missing. Every reader checks the
file again before reading it (the VGG19 loss, the Inception network, the segmenters), so a
file that failed here is never used.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gaugan import losses
from gaugan.config import Config
from gaugan.data.download import DownloadError, download_file
from gaugan.errors import UserError
from gaugan.losses import VGG19_FILE, VGG19_URL, default_vgg_weights_path
from gaugan.metrics import fid
from gaugan.metrics.fid import FID_WEIGHTS_FILE, FID_WEIGHTS_URL
from gaugan.pinned import Pin, PinFileError, WeightFile, file_sha256, pin_path, pin_problem, read_pin, write_pin
from gaugan.segmenters.loading import resolve_choice
from gaugan.segmenters.published import published_segmenter_for

GROUPS = ("inception", "vgg19", "segmenter")  # one record file each (the stage's outputs)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
FOUND_IN_PLACE = "found in place (placed by hand or fetched before pins were kept)"


@dataclass(frozen=True)
class Needed:
    """One group: its files, or why the run does not need any."""

    files: tuple[WeightFile, ...]
    reason: str = ""  # when files is empty


def needed_weights(cfg: Config, root: Path, hub_dir: Path) -> dict[str, Needed]:
    """What the configured run needs, per group of :data:`GROUPS`.

    ``hub_dir`` is torch hub's directory (``torch.hub.get_dir()``); configured paths
    (``evaluate.fid_weights``, ``loss.vgg_weights``) replace the cache location. The
    Inception file must be the published one wherever it is (FID is defined by it); a file
    that ``loss.vgg_weights`` names is the user's choice and is used as such.
    """
    inception_path = root / cfg.evaluate.fid_weights if cfg.evaluate.fid_weights else hub_dir / "checkpoints" / FID_WEIGHTS_FILE
    inception = WeightFile("Inception (pytorch-fid) for FID and KID", FID_WEIGHTS_FILE, FID_WEIGHTS_URL, inception_path,
                           fid.FID_WEIGHTS_PIN)
    needed = {"inception": Needed((inception,))}
    if cfg.loss.use_vgg_loss:
        vgg_path = root / cfg.loss.vgg_weights if cfg.loss.vgg_weights else default_vgg_weights_path()
        needed["vgg19"] = Needed((WeightFile("VGG19 ImageNet (torchvision) for the perceptual loss", VGG19_FILE,
                                             VGG19_URL, vgg_path, losses.VGG19_PIN,
                                             own_file_setting="loss.vgg_weights" if cfg.loss.vgg_weights else None),))
    else:
        needed["vgg19"] = Needed((), "loss.use_vgg_loss is false")
    resolved = resolve_choice(cfg.evaluate.segmenter, cfg.data.dataset)
    if resolved == "published":
        entry = published_segmenter_for(cfg.data.dataset)
        weights_dir = root / cfg.evaluate.segmenter_weights_dir
        needed["segmenter"] = Needed(tuple(entry.weight_files(weights_dir).values()))
    else:
        needed["segmenter"] = Needed((), f"{cfg.data.dataset!r} is judged by the {resolved!r} segmenter "
                                         f"(evaluate.segmenter={cfg.evaluate.segmenter!r}): no published weights")
    return needed


def how_to_place(file: WeightFile) -> str:
    source = file.url or file.where_to_get or "its publisher"
    return f"download {source} elsewhere and place it at {file.destination}"


def _transport_allowed(url: str) -> bool:
    """https, or plain http to the loopback address (a local mirror: the bytes never leave the machine)."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS)


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to https only: a server must not send the download elsewhere in plain http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        if not _transport_allowed(newurl):
            fp.close()
            raise urllib.error.URLError(f"redirected to {newurl}: refused, weights are fetched over https only")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpsOnlyRedirects)


def _problem(file: WeightFile, path: Path) -> str:
    """'' when ``path`` is usable as ``file``, else what is wrong, in a phrase."""
    if file.pin is not None:
        problem = pin_problem(path, file.pin)
        return f"not the published file ({problem})" if problem else ""
    try:
        pin = read_pin(path)
    except PinFileError as err:
        return str(err)
    if pin is not None:
        problem = pin_problem(path, pin)
        return f"changed since its first verified fetch ({problem})" if problem else ""
    if file.first_fetch_check is not None:
        try:
            file.first_fetch_check(path)
        except UserError as err:
            return f"unusable, so not pinned ({str(err).replace(f'{path}: ', '')})"
    return ""


def _what_to_do(file: WeightFile) -> str:
    also = "" if file.pin is not None else (
        f"; if you replaced it on purpose with a file you trust, delete {pin_path(file.destination)} too so that "
        "the file is pinned anew")
    return f"delete it and run the weights stage again, or {how_to_place(file)}{also}"


def _present(file: WeightFile, record: dict[str, Any], source: str, note: str = "") -> dict[str, Any]:
    """The record of a file that passed :func:`_problem`; one without a published checksum is
    pinned when first seen."""
    path = file.destination
    if note:  # the user's own file: its own hash
        pin = Pin(path.stat().st_size, file_sha256(path))
    elif file.pin is not None:
        pin = file.pin  # just compared, byte for byte
    elif (pin := read_pin(path)) is None:
        try:
            pin = write_pin(path, source)
        except OSError as err:  # a read-only weights folder: unpinned, the loaders would refuse the file
            return {**record, "status": "unavailable",
                    "reason": f"{path}: verified, but its pin {pin_path(path)} cannot be written "
                              f"({err.strerror or err}); make the folder writable and run the weights stage again"}
    return {**record, "status": "ok", "sha256": pin.sha256, "bytes": pin.num_bytes, **({"note": note} if note else {})}


def fetch(file: WeightFile, download: bool = True, mirror: str | None = None, progress: bool = True,
          timeout: float = 30.0) -> dict[str, Any]:
    """Make ``file`` present and verified; the record of what, where, checksum, source and status."""
    url = f"{mirror.rstrip('/')}/{file.filename}" if mirror else file.url
    record: dict[str, Any] = {"what": file.what, "file": file.filename, "path": str(file.destination),
                              "source": url or file.where_to_get, "checksum": file.checksum}
    if file.destination.is_file():
        problem = _problem(file, file.destination)
        if not problem:
            return _present(file, record, FOUND_IN_PLACE)
        if file.own_file_setting is not None:
            return _present(file, record, FOUND_IN_PLACE,
                            note=f"your own file ({file.own_file_setting}), {problem}: used as that setting says")
        return {**record, "status": "unavailable", "reason": f"{file.destination}: {problem}; {_what_to_do(file)}"}
    if not download:
        return {**record, "status": "unavailable",
                "reason": f"{file.destination} not found and weights.download is false; {how_to_place(file)}"}
    if url is None:
        return {**record, "status": "unavailable",
                "reason": f"{file.destination} not found; it has no public URL: {how_to_place(file)}"}
    if not _transport_allowed(url):
        return {**record, "status": "unavailable",
                "reason": f"refused {url}: weights are fetched over https only (plain http can be altered on the "
                          f"way); use an https mirror (weights.mirror), or {how_to_place(file)}"}
    try:
        download_file(url, file.destination, progress=progress, timeout=timeout, opener=_OPENER.open)
    except DownloadError as err:
        return {**record, "status": "unavailable", "reason": str(err)}
    problem = _problem(file, file.destination)
    if problem:
        aside = file.destination.with_name(f"{file.filename}.checksum-mismatch")
        os.replace(file.destination, aside)
        return {**record, "status": "unavailable",
                "reason": f"{url}: the downloaded file failed verification ({problem}); moved aside to {aside}"}
    return _present(file, record, url)


def fetch_needed(needed: dict[str, Needed], download: bool = True, mirror: str | None = None,
                 progress: bool = True) -> dict[str, dict[str, Any]]:
    """Every group's record: ``{"needed": bool, "status": "ok" | "unavailable" | "not needed", "files": [...]}``."""
    records = {}
    for group, need in needed.items():
        if not need.files:
            records[group] = {"needed": False, "status": "not needed", "reason": need.reason, "files": []}
            continue
        files = [fetch(file, download, mirror, progress) for file in need.files]
        problems = [f"{f['file']}: {f['reason']}" for f in files if f["status"] != "ok"]
        records[group] = {"needed": True, "status": "unavailable" if problems else "ok",
                          "reason": "; ".join(problems), "files": files}
    return records
