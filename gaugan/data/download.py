"""Resumable, checksummed downloads of the paper's datasets, and extraction.

The archives and their md5 sums are those of docs/SPADE.md section 3. A download goes to
``<file>.partial`` and resumes from there with an HTTP Range request; only a complete
file whose md5 matches is renamed to its final name. A file whose md5 does not match is
moved aside to ``<file>.md5-mismatch`` (never used, never resumed) and the download
fails with an error naming the URL, both sums and where the file was put. Offline, the
error says which URL failed and where to place the archive by hand. A marker JSON
(``download.json``) records what was downloaded and verified; it is written last, so a
failed run never reports anything as downloaded.

Extraction never deletes the user's files: an archive entry replaces only what an earlier
extraction put at its name (a folder carrying :data:`EXTRACTED_FOLDER`, a file recorded in
:data:`EXTRACTED_FILES` with its sha256); an entry that would overwrite anything else (the
``archives/`` folder, the user's other archive) refuses the archive before anything is
extracted, naming the archive, the entry and the path.

Cityscapes needs a login and is never downloaded: :func:`locate_cityscapes` checks for
the user's archives and says exactly what is missing and where to get it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gaugan.data.io import DataError, OutputMarker, atomic_write_json, file_digest, replace_dir, require_writable

CHUNK = 1 << 20


class DownloadError(DataError):
    """A download failed (offline, server error, checksum mismatch); nothing was reported as done."""


@dataclass(frozen=True)
class Resource:
    """One archive: where it comes from, what it must hash to, where it is extracted."""

    filename: str
    url: str
    md5: str | None  # None: no checksum is published (size and zip integrity are still checked)
    extract_to: str = "."  # folder (relative to the dataset folder) the archive is extracted into


# The official archives (docs/SPADE.md section 3). Tests pass their own table pointing at a
# local server instead of changing these.
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "ade20k": (
        Resource("ADEChallengeData2016.zip", "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                 "7328b3957e407ddae1d3cbf487f149ef"),
    ),
    "coco": (
        Resource("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
        Resource("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
        Resource("stuffthingmaps_trainval2017.zip",
                 "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
                 None, extract_to="stuffthingmaps_trainval2017"),
        Resource("annotations_trainval2017.zip", "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                 "f4bbac642086de4f52a3fdda2de5fa2c"),
    ),
    "facades": (
        Resource("CMP_facade_DB_base.zip", "http://cmp.felk.cvut.cz/~tylecr1/facade/CMP_facade_DB_base.zip", None),
    ),
}
RESOURCES["ade20k_outdoor"] = RESOURCES["ade20k"]  # the same archive, filtered when listed

CITYSCAPES_ARCHIVES = ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip")
CITYSCAPES_URL = "https://www.cityscapes-dataset.com/downloads/"

MARKER = "download.json"


def md5_of(path: Path) -> str:
    return file_digest(path, "md5")


def download_file(url: str, dest: str | os.PathLike, md5: str | None = None, progress: bool = True,
                  timeout: float = 60.0, opener: Callable | None = None) -> Path:
    """Download ``url`` to ``dest`` with resume, progress bar and md5 check.

    Bytes go to ``dest.partial``; an existing partial file is resumed with a Range
    request (a server that ignores Range restarts it). On success the file is renamed to
    ``dest``. Raises :class:`DownloadError` on any failure, keeping the partial file for
    the next attempt, or moving a complete file with the wrong md5 to
    ``dest.md5-mismatch``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    open_url = opener or urllib.request.urlopen
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "gaugan-download/1"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = open_url(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is already complete
            response = None
        else:
            raise DownloadError(_failure(url, dest, partial, f"HTTP {err.code} {err.reason}")) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(_failure(url, dest, partial, f"cannot connect ({reason})")) from err
    if response is not None:
        with response:
            status = getattr(response, "status", 200)
            if have and status != 206:
                have = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name)
            try:
                with open(partial, "ab" if have else "wb") as handle:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        handle.write(block)
                        if bar is not None:
                            bar.update(len(block))
            except (urllib.error.URLError, OSError) as err:
                raise DownloadError(_failure(url, dest, partial, f"connection lost ({err})")) from err
            finally:
                if bar is not None:
                    bar.close()
            if total is not None and partial.stat().st_size < total:
                raise DownloadError(_failure(url, dest, partial,
                                             f"connection closed after {partial.stat().st_size} of {total} bytes"))
    verify_md5(partial, md5, url, dest)
    os.replace(partial, dest)
    return dest


def verify_md5(path: Path, md5: str | None, url: str, dest: Path) -> None:
    """Raise (moving the file aside to ``dest.md5-mismatch``) when ``path`` does not hash to ``md5``."""
    if md5 is None:
        return
    actual = md5_of(path)
    if actual != md5:
        aside = dest.with_name(dest.name + ".md5-mismatch")
        os.replace(path, aside)
        raise DownloadError(
            f"{url}: md5 of the downloaded file is {actual}, expected {md5}; the file was moved aside to {aside} "
            f"and nothing was reported as downloaded (delete it and run the download stage again)"
        )


def _failure(url: str, dest: Path, partial: Path, reason: str) -> str:
    kept = f"; {partial.stat().st_size} bytes kept in {partial}, resumed on the next run" if partial.exists() else ""
    return (f"{url}: download failed: {reason}{kept}. Without internet access, download the file elsewhere "
            f"and place it at {dest}")


# What extraction leaves behind, so that a later extraction replaces only its own work: every
# top-level folder it extracted carries EXTRACTED_FOLDER; the top-level files it extracted are
# listed, with their sha256, in EXTRACTED_FILES in the folder they were extracted into.
EXTRACTED_FOLDER = OutputMarker(".gaugan-extracted.json", "gaugan-extracted-folder-v1", "an archive entry")
EXTRACTED_FILES = ".gaugan-extracted-files.json"
EXTRACTED_FILES_FORMAT = "gaugan-extracted-files-v1"


def extract(archive: Path, out_dir: Path) -> list[str]:
    """Extract a zip into ``out_dir`` (via a temporary folder) and return its top-level names.

    Refuses entries that would land outside ``out_dir``; a corrupt archive is a clear error.
    An entry whose top-level name already exists in ``out_dir`` replaces only what an earlier
    extraction put there (:data:`EXTRACTED_FOLDER`, :data:`EXTRACTED_FILES`) or an empty
    folder; anything else there (the user's folder, file or link: the archives folder,
    another archive) is never touched, and the archive is refused before anything is extracted.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".extract-{archive.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.namelist()
            for member in members:
                if not (tmp / member).resolve().is_relative_to(tmp.resolve()):
                    raise DownloadError(f"{archive}: unsafe path {member!r} in the archive; refusing to extract")
            _refuse_foreign(archive, out_dir, members)
            bundle.extractall(tmp)
    except zipfile.BadZipFile as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(f"{archive}: not a valid zip archive ({err}); delete it and download again") from err
    names = sorted(p.name for p in tmp.iterdir())
    try:
        _refuse_foreign(archive, out_dir, names)  # what was extracted, in case a name escaped the first check
    except DownloadError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = _extracted_files(out_dir)
    for name in names:
        if (tmp / name).is_dir():
            EXTRACTED_FOLDER.write(tmp / name, archive=archive.name)
        else:
            files[name] = {"archive": archive.name, "sha256": file_digest(tmp / name)}
    # recorded before the files are moved in: an interrupted run never leaves a file of ours unrecorded
    atomic_write_json(out_dir / EXTRACTED_FILES, {"format": EXTRACTED_FILES_FORMAT, "files": files})
    for name in names:
        _move_in(tmp / name, out_dir / name)
    tmp.rmdir()
    return names


def _top_level_name(member: str) -> str | None:
    """The name a zip entry creates in the extraction folder (as ``ZipFile.extractall`` cleans it)."""
    parts = [part for part in member.split("/") if part not in ("", ".", "..")]
    return parts[0] if parts else None


def _refuse_foreign(archive: Path, out_dir: Path, members: list[str]) -> None:
    """Raise naming the first entry whose top-level name holds something that no extraction put there."""
    files = _extracted_files(out_dir)
    for member in members:
        name = _top_level_name(member)
        if name is None:
            continue
        target = out_dir / name
        if not target.exists() and not target.is_symlink():
            continue
        if target.is_symlink():
            what = "a link"
        elif target.is_dir():
            if EXTRACTED_FOLDER.found_in(target) or not any(target.iterdir()):
                continue
            what = "a folder"
        else:
            recorded = files.get(name, {}).get("sha256")
            if recorded is not None and file_digest(target) == recorded:
                continue
            what = "a file"
        raise DownloadError(
            f"{archive}: the entry {member!r} would overwrite {target}, {what} that this project did not extract; "
            f"refusing to extract the archive. Move {target} elsewhere (or extract the archive yourself)")


def _extracted_files(out_dir: Path) -> dict[str, dict]:
    """The top-level files that extraction put into ``out_dir`` (name -> archive and sha256)."""
    try:
        record = json.loads((out_dir / EXTRACTED_FILES).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("format") != EXTRACTED_FILES_FORMAT:
        return {}
    return dict(record.get("files") or {})


def _move_in(new: Path, target: Path) -> None:
    """Put the extracted entry ``new`` at ``target``, replacing what an earlier extraction put there."""
    if new.is_dir() and not target.is_file():
        replace_dir(new, target, EXTRACTED_FOLDER)  # swapped by renames: never half an old folder
        return
    if target.is_dir():
        shutil.rmtree(target)  # an earlier extraction's folder where the archive now holds a file
    elif new.is_dir() and target.exists():
        target.unlink()  # an earlier extraction's file where the archive now holds a folder
    os.replace(new, target)


def download_dataset(dataset: str, dataset_dir: str | os.PathLike, resources: dict[str, tuple[Resource, ...]] | None = None,
                     progress: bool = True, timeout: float = 60.0,
                     after_extract: Callable[[Path], dict] | None = None) -> dict:
    """Download, verify and extract every archive of ``dataset`` into ``dataset_dir``.

    An archive already present with the right md5 is not downloaded again (also one the
    user placed there by hand). ``after_extract`` (COCO: building the instance maps)
    runs once everything is extracted; its result goes into the marker. Returns the
    marker written to ``dataset_dir/download.json``.
    """
    table = RESOURCES if resources is None else resources
    if dataset not in table:
        raise DownloadError(f"no downloadable archives for dataset {dataset!r}; known: {', '.join(sorted(table))}")
    dataset_dir = Path(dataset_dir)
    require_writable(dataset_dir, "data.root", "the downloaded dataset")
    archive_dir = dataset_dir / "archives"
    files = []
    for resource in table[dataset]:
        archive = archive_dir / resource.filename
        marker = _read_marker(dataset_dir)
        done = {f["filename"]: f for f in marker.get("files", [])} if marker else {}
        if archive.exists():
            verify_md5(archive, resource.md5, resource.url, archive)  # a file placed by hand must match too
        else:
            download_file(resource.url, archive, resource.md5, progress=progress, timeout=timeout)
        entry = {
            "filename": resource.filename,
            "url": resource.url,
            "bytes": archive.stat().st_size,
            "md5_expected": resource.md5,
            "md5": resource.md5 if resource.md5 is not None else md5_of(archive),
            "md5_verified": resource.md5 is not None,
        }
        if done.get(resource.filename, {}).get("md5") == entry["md5"] and done[resource.filename].get("extracted"):
            entry["extracted"] = done[resource.filename]["extracted"]  # unchanged archive, already extracted
        else:
            entry["extracted"] = extract(archive, dataset_dir / resource.extract_to)
        files.append(entry)
    result = {"dataset": dataset, "files": files}
    if after_extract is not None:
        result["built"] = after_extract(dataset_dir)
    _write_marker(dataset_dir, result)
    return result


def _read_marker(dataset_dir: Path) -> dict | None:
    try:
        return json.loads((dataset_dir / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_marker(dataset_dir: Path, marker: dict) -> None:
    atomic_write_json(dataset_dir / MARKER, marker)


def locate_cityscapes(dataset_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Extract the user's Cityscapes archives from ``dataset_dir``, or say what is missing.

    Already-extracted ``gtFine/`` and ``leftImg8bit/`` folders are accepted as they are.
    """
    dataset_dir = Path(dataset_dir)
    if (dataset_dir / "gtFine").is_dir() and (dataset_dir / "leftImg8bit").is_dir():
        # nothing is written: an extracted Cityscapes may be a read-only shared folder
        return {"dataset": "cityscapes", "files": [], "note": "gtFine/ and leftImg8bit/ found already extracted"}
    missing = [name for name in CITYSCAPES_ARCHIVES if not (dataset_dir / name).is_file()]
    if missing:
        raise DownloadError(
            f"Cityscapes needs a login and cannot be downloaded automatically. Missing: "
            f"{', '.join(str(dataset_dir / name) for name in missing)}. Register and download "
            f"{' and '.join(missing)} from {CITYSCAPES_URL} (packages 'gtFine_trainvaltest.zip (241MB)' and "
            f"'leftImg8bit_trainvaltest.zip (11GB)'), put them in {dataset_dir}/ and run the download stage again"
        )
    require_writable(dataset_dir, "data.root", "the extracted dataset")
    files = []
    for name in CITYSCAPES_ARCHIVES:
        archive = dataset_dir / name
        files.append({"filename": name, "bytes": archive.stat().st_size, "md5": md5_of(archive),
                      "md5_verified": False, "extracted": extract(archive, dataset_dir)})
    marker = {"dataset": "cityscapes", "files": files, "note": "supplied by the user; no published checksum"}
    _write_marker(dataset_dir, marker)
    return marker


def resources_with_base_url(dataset: str, base_url: str, md5: dict[str, str | None] | None = None) -> dict[str, tuple[Resource, ...]]:
    """A copy of the table for ``dataset`` with every URL moved under ``base_url`` (mirrors, tests)."""
    base = base_url.rstrip("/")
    return {
        dataset: tuple(
            dataclasses.replace(r, url=f"{base}/{r.filename}", md5=(md5 or {}).get(r.filename, r.md5))
            for r in RESOURCES[dataset]
        )
    }
