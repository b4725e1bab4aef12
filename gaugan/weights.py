"""The pretrained files a run needs, fetched, verified and cached once (the weights stage).

Evaluation and training use networks trained by others (docs/SPADE.md section 4):
pytorch-fid's Inception for FID and KID, torchvision's VGG19 for the perceptual loss, and
the published segmenter of each paper dataset (UperNet-101, DeepLabV2-ResNet101,
DRN-D-105). :func:`needed_weights` says which files the configured run needs and where
they live (the torch hub cache ``$TORCH_HOME/hub/checkpoints/`` for Inception and VGG19,
where pytorch-fid and torchvision look; ``<evaluate.segmenter_weights_dir>/<segmenter>/``
for the segmenters). :func:`fetch` makes one present: a file already there is verified;
a missing one is downloaded with resume and a progress bar
(:func:`gaugan.data.download.download_file`: into ``<file>.partial``, renamed when
complete) and verified against its published checksum (size and the SHA-256 prefix in the
torch hub file name, or an md5); a mismatch is moved aside. Any failure (offline, HTTP
error, cut connection, wrong checksum) is returned as "unavailable" with the reason and how
to place the file by hand: the pipeline completes without it and the metric that needs it
says why it is missing. (Every reader verifies again: pytorch-fid's file by size and hash,
the others by strict loading.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gaugan.config import Config
from gaugan.data.download import DownloadError, download_file, md5_of
from gaugan.data.io import file_digest
from gaugan.losses import VGG19_FILE, VGG19_URL, default_vgg_weights_path
from gaugan.metrics.fid import (
    FID_WEIGHTS_BYTES,
    FID_WEIGHTS_FILE,
    FID_WEIGHTS_SHA256_PREFIX,
    FID_WEIGHTS_URL,
)
from gaugan.segmenters.loading import resolve_choice
from gaugan.segmenters.published import published_segmenter_for, weight_path

GROUPS = ("inception", "vgg19", "segmenter")  # one record file each (the stage's outputs)


@dataclass(frozen=True)
class WeightFile:
    what: str  # what it is for, in words
    filename: str
    url: str | None  # None: no public URL, the user supplies it
    destination: Path
    num_bytes: int | None = None  # published size, when known
    sha256_prefix: str | None = None  # torch hub convention: the hash prefix in the file name
    md5: str | None = None
    where_to_get: str = ""  # for files without a URL

    @property
    def checksum(self) -> str:
        if self.sha256_prefix:
            return f"sha256 starts with {self.sha256_prefix} (published in the file name)"
        if self.md5:
            return f"md5 {self.md5}"
        return "none published (the sha256 is recorded)"


@dataclass(frozen=True)
class Needed:
    """One group: its files, or why the run does not need any."""

    files: tuple[WeightFile, ...]
    reason: str = ""  # when files is empty


def needed_weights(cfg: Config, root: Path, hub_dir: Path) -> dict[str, Needed]:
    """What the configured run needs, per group of :data:`GROUPS`.

    ``hub_dir`` is torch hub's directory (``torch.hub.get_dir()``); configured paths
    (``evaluate.fid_weights``, ``loss.vgg_weights``) replace the cache location.
    """
    inception_path = root / cfg.evaluate.fid_weights if cfg.evaluate.fid_weights else hub_dir / "checkpoints" / FID_WEIGHTS_FILE
    inception = WeightFile("Inception (pytorch-fid) for FID and KID", FID_WEIGHTS_FILE, FID_WEIGHTS_URL, inception_path,
                           FID_WEIGHTS_BYTES, FID_WEIGHTS_SHA256_PREFIX)
    needed = {"inception": Needed((inception,))}
    if cfg.loss.use_vgg_loss:
        vgg_path = root / cfg.loss.vgg_weights if cfg.loss.vgg_weights else default_vgg_weights_path()
        needed["vgg19"] = Needed((WeightFile("VGG19 ImageNet (torchvision) for the perceptual loss", VGG19_FILE,
                                             VGG19_URL, vgg_path, None, VGG19_FILE.split("-")[1].split(".")[0]),))
    else:
        needed["vgg19"] = Needed((), "loss.use_vgg_loss is false")
    resolved = resolve_choice(cfg.evaluate.segmenter, cfg.data.dataset)
    if resolved == "published":
        entry = published_segmenter_for(cfg.data.dataset)
        weights_dir = root / cfg.evaluate.segmenter_weights_dir
        needed["segmenter"] = Needed(tuple(
            WeightFile(f"segmenter {entry.name} ({file.submodule})", file.name, file.url,
                       weight_path(entry, file, weights_dir), where_to_get=entry.where_to_get)
            for file in entry.files))
    else:
        needed["segmenter"] = Needed((), f"{cfg.data.dataset!r} is judged by the {resolved!r} segmenter "
                                         f"(evaluate.segmenter={cfg.evaluate.segmenter!r}): no published weights")
    return needed


def verify(file: WeightFile, path: Path) -> tuple[str, str]:
    """(sha256, problem): the problem is '' when ``path`` matches the published size and checksum."""
    size = path.stat().st_size
    if file.num_bytes is not None and size != file.num_bytes:
        return "", f"{size:,} bytes, expected {file.num_bytes:,}"
    digest = file_digest(path)
    if file.sha256_prefix and not digest.startswith(file.sha256_prefix):
        return digest, f"sha256 {digest[:16]}... does not start with {file.sha256_prefix}"
    if file.md5 and (md5 := md5_of(path)) != file.md5:
        return digest, f"md5 {md5} differs from the published {file.md5}"
    return digest, ""


def how_to_place(file: WeightFile) -> str:
    source = file.url or file.where_to_get or "its publisher"
    return f"download {source} elsewhere and place it at {file.destination}"


def fetch(file: WeightFile, download: bool = True, mirror: str | None = None, progress: bool = True,
          timeout: float = 30.0) -> dict[str, Any]:
    """Make ``file`` present and verified; the record of what, where, checksum, source and status."""
    url = f"{mirror.rstrip('/')}/{file.filename}" if mirror else file.url
    record: dict[str, Any] = {"what": file.what, "file": file.filename, "path": str(file.destination),
                              "source": url or file.where_to_get, "checksum": file.checksum}
    if file.destination.is_file():
        digest, problem = verify(file, file.destination)
        if not problem:
            return {**record, "status": "ok", "sha256": digest, "bytes": file.destination.stat().st_size}
        return {**record, "status": "unavailable",
                "reason": f"{file.destination} is not the published file ({problem}); delete it and run the weights "
                          f"stage again, or {how_to_place(file)}"}
    if not download:
        return {**record, "status": "unavailable",
                "reason": f"{file.destination} not found and weights.download is false; {how_to_place(file)}"}
    if url is None:
        return {**record, "status": "unavailable",
                "reason": f"{file.destination} not found; it has no public URL: {how_to_place(file)}"}
    try:
        download_file(url, file.destination, md5=file.md5, progress=progress, timeout=timeout)
    except DownloadError as err:
        return {**record, "status": "unavailable", "reason": str(err)}
    digest, problem = verify(file, file.destination)
    if problem:
        aside = file.destination.with_name(f"{file.filename}.checksum-mismatch")
        os.replace(file.destination, aside)
        return {**record, "status": "unavailable",
                "reason": f"{url}: the downloaded file is not the published one ({problem}); moved aside to {aside}"}
    return {**record, "status": "ok", "sha256": digest, "bytes": file.destination.stat().st_size}


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
