"""Reading label maps, instance maps and photos as they are found on disk.

Label maps are class indices, never colours: palette ("P") PNGs are read as their
indices, 8-bit and 16-bit greyscale PNGs as their values. A colour (RGB) label map is an
error, because guessing a colour-to-class mapping silently would corrupt training.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gaugan.data.registry import DatasetSpec
from gaugan.errors import UserError


class Problem(str):
    """One problem of one file: its line (the string itself), the file, and the cause.

    ``cause`` is the line without what is particular to the file (its name, its size), the
    same for every file with this problem: reports give all of them one line
    (:func:`gaugan.data.check.format_problems`). A plain string is a problem of its own.
    """

    path: str
    cause: str

    def __new__(cls, line: str, path: str | os.PathLike, cause: str) -> Problem:
        problem = super().__new__(cls, line)
        problem.path, problem.cause = str(path), cause
        return problem

    @classmethod
    def of(cls, path: str | os.PathLike, cause: str) -> Problem:
        """The problem whose line is ``<path>: <cause>``."""
        return cls(f"{path}: {cause}", path, cause)

    def __reduce__(self) -> tuple:  # to and from worker processes with its attributes
        return (Problem, (str(self), self.path, self.cause))


class DataError(UserError, ValueError):
    """A data file is unreadable or violates the dataset's conventions.

    ``problem`` is the message, or the :class:`Problem` it was raised with (an error about
    one file, which check-data groups with the same error of other files).
    """

    def __init__(self, message: str, problem: Problem | None = None) -> None:
        super().__init__(message)
        self.problem: str = problem if problem is not None else message

    @classmethod
    def about(cls, path: str | os.PathLike, cause: str) -> DataError:
        """The error ``<path>: <cause>`` about one file."""
        problem = Problem.of(path, cause)
        return cls(problem, problem)


class LabelValueError(DataError):
    """A label map holds values outside the dataset's range (``values``, for check-data's void hint)."""

    def __init__(self, message: str, problem: Problem | None = None, values: tuple[int, ...] = ()) -> None:
        super().__init__(message, problem)
        self.values = values


@contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """With our own limit, PIL's (a warning, then an error at twice its size) stands aside.

    PIL keeps the limit in a module global; the data is read in worker processes, one
    file at a time, so setting it around one open is safe.
    """
    saved = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _open(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open and decode an image; ``max_pixels`` (data.max_image_pixels) is checked from the
    header, before anything is decompressed."""
    try:
        with _pixel_limit(max_pixels):
            img = Image.open(path)
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                limit = (f"data.max_image_pixels ({max_pixels:,}); a file this large is likely corrupt or a "
                         f"decompression bomb (raise data.max_image_pixels if the image is genuine)")
                line = f"{path}: {width}x{height} = {width * height:,} pixels, more than {limit}"
                raise DataError(line, Problem(line, path, f"more pixels than {limit}"))
            img.load()
        return img
    except FileNotFoundError as err:
        raise DataError.about(path, "file not found") from err
    except Image.DecompressionBombError as err:
        line = f"{path}: refused as a possible decompression bomb ({err})"
        raise DataError(line, Problem(line, path, "refused as a possible decompression bomb")) from err
    except UnidentifiedImageError as err:
        line = f"{path}: unreadable image ({err})"
        raise DataError(line, Problem(line, path, "unreadable image (not a format PIL can identify)")) from err
    except (OSError, SyntaxError) as err:
        raise DataError.about(path, f"unreadable image ({err})") from err


def read_index_map(
    path: str | os.PathLike, what: str = "label map", max_pixels: int | None = None, compact: bool = False
) -> np.ndarray:
    """A single-channel index image (H, W): P, L, I;16, I modes.

    As int64, or with ``compact`` in the file's own width (uint8 for 8-bit and palette maps,
    uint16 for 16-bit, int32 for 32-bit): an eighth of the memory for the usual 8-bit map.
    """
    img = _open(path, max_pixels)
    if img.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        arr = np.asarray(img)
        if compact:
            return arr.astype(np.uint8) if img.mode == "1" else arr.astype(arr.dtype.newbyteorder("="), copy=False)
        return arr.astype(np.int64)
    if img.mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(img)
        channels = arr.reshape(-1, arr.shape[-1])[:, :3] if arr.ndim == 3 else None
        # A greyscale map saved as RGB (all channels equal) is still an index map.
        if channels is not None and channels.shape[1] == 3 and (channels[:, 0] == channels[:, 1]).all() and (
            channels[:, 1] == channels[:, 2]
        ).all():
            return arr[..., 0].copy() if compact else arr[..., 0].astype(np.int64)
        raise DataError.about(path, f"the {what} is a colour ({img.mode}) image; {what}s must hold class indices "
                                    f"(a greyscale or palette PNG), not colours")
    raise DataError.about(path, f"unsupported {what} image mode {img.mode!r}")


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file's header without decoding it; None when unreadable
    (the check that reads every file reports why)."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any failure is reported by the full check, with its reason
        return None


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """A photo as an RGB PIL image."""
    return _open(path, max_pixels).convert("RGB")


def map_labels(raw: np.ndarray, spec: DatasetSpec, source: str | os.PathLike, setting: str | None = None,
               dontcare_index: bool = False) -> np.ndarray:
    """Raw label values -> stored indices in ``[0, spec.num_label_values)``.

    The don't-care value (255 for COCO-Stuff) becomes index ``label_nc``. Any other value
    outside ``[0, label_nc)`` (``label_nc`` itself included: it would silently merge into
    the don't-care class) is a :class:`LabelValueError` naming the file, the value and the setting to change,
    unless ``dontcare_index``: maps of stored indices (the studio's) hold ``label_nc`` itself
    for don't care. Datasets with a don't-care channel but no don't-care value (ADE20K) keep
    every value in ``[0, num_label_values)`` as it is.
    """
    labels = raw.astype(np.int64, copy=True)
    if spec.dontcare_value is not None:
        dontcare = raw == spec.dontcare_value
        allowed = f"0..{spec.label_nc - 1} or the don't-care value {spec.dontcare_value}"
        if dontcare_index and spec.dontcare_value != spec.label_nc:
            dontcare |= raw == spec.label_nc
            allowed = f"0..{spec.label_nc - 1}, the don't-care value {spec.dontcare_value} or its index {spec.label_nc}"
        labels[dontcare] = spec.label_nc
        bad = ~dontcare & ((raw < 0) | (raw >= spec.label_nc))
    else:
        bad = (labels < 0) | (labels >= spec.num_label_values)
        allowed = f"0..{spec.num_label_values - 1}"
    if bad.any():
        values = np.unique(raw[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
        if setting is None:
            setting = (
                "data.custom.num_classes, data.custom.dontcare_label or the dataset's classes.txt / classes.csv"
                if spec.name == "custom"
                else f"data.dataset (is {spec.name!r} the right dataset for this file?)"
            )
        problem = Problem.of(source, f"label value(s) {shown} outside the valid range {allowed} for dataset "
                                     f"{spec.name!r} (label_nc={spec.label_nc}, "
                                     f"contain_dontcare={spec.contain_dontcare}); check {setting}")
        raise LabelValueError(problem, problem, tuple(int(v) for v in values))
    return labels


def check_same_size(label: np.ndarray, other: np.ndarray, label_path: str | os.PathLike, other_path: str | os.PathLike,
                    what: str) -> None:
    if label.shape[:2] != other.shape[:2]:
        raise DataError(
            f"{other_path}: {what} is {other.shape[1]}x{other.shape[0]} (WxH) but its label map "
            f"{label_path} is {label.shape[1]}x{label.shape[0]}; they must be the same size"
        )


# Image formats an output file may be written in, by suffix (PIL writes each).
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in chunks (every checksum of the project)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Create ``path`` by ``write(temporary path)`` and a rename: never a half-written file.

    The temporary file lies beside ``path`` (the same file system, so the rename is atomic)
    and is removed on every failure. Errors name ``path``, never the temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; name a file (inside it, for example)", str(path))
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(folder))
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err  # the same subclass (PermissionError, ...)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike, data: object) -> None:
    """``data`` as indented JSON, written atomically (:func:`atomic_write`)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def image_format(path: str | os.PathLike) -> str:
    """The PIL format that ``path``'s suffix names; a ValueError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"{path}: cannot tell the image format from the suffix {suffix or '(none)'!r}; "
                         f"use one of {', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


def atomic_save_image(img: Image.Image, path: str | os.PathLike) -> None:
    """Write an image in the format its suffix names (PNG, JPEG, WebP), atomically."""
    format_name = image_format(path)
    atomic_write(path, lambda tmp: img.save(tmp, format=format_name))


def atomic_save_png(img: Image.Image, path: str | os.PathLike) -> None:
    """Write a PNG atomically, whatever the suffix (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


class OutputNotWritable(UserError):
    """A folder the project writes into cannot be written (read-only, a file in its place, a
    folder of the user's)."""


def require_writable(folder: str | os.PathLike, setting: str | None, what: str, replaced: bool = False) -> None:
    """Refuse, before any work, a ``folder`` that ``what`` cannot be written into, in one line
    naming it and ``setting`` (what chose it; None for a fixed folder).

    The folder (its parent when it is ``replaced`` by a folder built beside it), or the
    nearest folder above that exists (where it would be created), must be a folder this
    process may create files in: ``os.access`` says so, and a probe file is created and
    removed (which also finds a read-only file system, where root is refused too).
    """
    folder = Path(folder).absolute()
    start = folder.parent if replaced else folder
    existing = next(path for path in (start, *start.parents) if path.exists() or path.is_symlink())
    into = "" if existing == folder else f" (for {folder})"
    if not existing.is_dir():
        reason = "it is a file, not a folder" if existing.exists() else "it is a broken link"
        remedy = "Move it away"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason, remedy = "permission denied", "Make it writable"
    else:
        try:
            _probe_write(existing)
        except OSError as err:
            reason, remedy = err.strerror or str(err), "Make it writable"
        else:
            return
    other = f", or set {setting} to a folder you can write to" if setting else " (the folder is not a setting)"
    raise OutputNotWritable(f"{existing}: {what} cannot be written here{into}: {reason}. {remedy}{other}")


def _probe_write(folder: Path) -> None:
    handle, name = tempfile.mkstemp(prefix=".gaugan-write-probe-", dir=folder)
    os.close(handle)
    os.unlink(name)


def out_of_room(err: OSError, folder: str | os.PathLike, setting: str | None,
                outcome: str = "nothing was written") -> DataError | None:
    """The one line for a write into ``folder`` that failed for lack of room (a full disk, a
    quota, a file-size limit), saying the ``outcome`` and naming ``setting`` (what chose the
    folder; None for a fixed folder); None for any other error."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        other = f", or set {setting} to a folder on a disk with room" if setting else ""
        return DataError(f"{folder}: no room left on the disk to write here ({err.strerror}); {outcome}. Free space "
                         f"on that disk{other}")
    if err.errno == errno.EFBIG:
        remedy = (f"Set {setting} to a folder on another file system (FAT32 stops at 4 GB), or raise the limit"
                  if setting else "Raise the limit")
        return DataError(f"{folder}: a file is larger than this file system or `ulimit -f` allows ({err.strerror}); "
                         f"{outcome}. {remedy}")
    return None


@dataclass(frozen=True)
class OutputMarker:
    """The file by which the project recognises a folder it wrote itself, and so may replace.

    ``file`` is a JSON file at the top of the folder whose ``key`` (``"format"`` unless
    said otherwise) is ``format``; ``setting`` names the setting that chose the folder, for
    messages.
    """

    file: str
    format: str
    setting: str
    key: str = "format"

    def found_in(self, folder: str | os.PathLike) -> bool:
        try:
            content = json.loads((Path(folder) / self.file).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(content, dict) and content.get(self.key) == self.format

    def write(self, folder: str | os.PathLike, **info: object) -> None:
        atomic_write_json(Path(folder) / self.file, {self.key: self.format, **info})


def check_replaceable(target: str | os.PathLike, marker: OutputMarker) -> None:
    """Refuse to replace ``target`` unless it is absent, an empty folder, or carries ``marker``.

    A setting that names an existing folder of the user's (a typo of ``/datasets`` for
    ``/datasets/store``) must never have its contents deleted.
    """
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and (marker.found_in(target) or not any(target.iterdir())):
        return
    what = "folder" if target.is_dir() else "file"
    raise DataError(
        f"{target}: {marker.setting} names an existing {what} that this project did not write (it has no "
        f"{marker.file} with {marker.key} {marker.format!r}); refusing to replace it, which would delete its contents. "
        f"Set {marker.setting} to a new or empty folder (or remove {target} yourself if it is an old output)"
    )


def replace_dir(new: str | os.PathLike, target: str | os.PathLike, marker: OutputMarker) -> None:
    """Put the finished folder ``new`` at ``target``, replacing an earlier output of the project.

    Outputs are built in a temporary folder beside the target and swapped in by renames,
    so an interrupted stage never leaves a half-written folder where a finished one was.
    Only a folder carrying ``marker`` (or an empty one) is ever replaced
    (:func:`check_replaceable`); ``new`` must carry the marker itself.
    """
    new, target = Path(new), Path(target)
    if not marker.found_in(new):
        raise ValueError(f"{new}: the new folder has no {marker.file} with {marker.key} {marker.format!r}")
    check_replaceable(target, marker)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, target)


# --------------------------------------------------------------------------------------
# Output folders written in place, and whether a folder can be written at all.


def claim_output_dir(folder: str | os.PathLike, marker: OutputMarker, contents: str,
                     written_earlier: Callable[[Path], bool] | None = None) -> None:
    """Make ``folder`` an output folder that the project writes into in place, carrying ``marker``.

    Checkpoint folders are not swapped in whole like the others (:func:`replace_dir`): a rerun
    continues from what they hold. So before anything is written, ``folder`` must be absent or
    empty (it is created), carry ``marker``, or be what an earlier version of the project wrote
    there before it marked its folders (``written_earlier(folder)``); it is marked then. Anything
    else, a folder of the user's or a file, is refused, naming it and ``marker.setting``: writing
    into it would overwrite the user's files. An unwritable folder is refused too
    (:func:`require_writable`; ``contents`` says what the folder is for).
    """
    folder = Path(folder)
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        what = "a file" if folder.exists() else "a broken link"
        raise OutputNotWritable(f"{folder}: {marker.setting} names {what}, not a folder; set {marker.setting} to a "
                                "new or empty folder")
    if folder.is_dir() and not marker.found_in(folder):
        entries = sorted(entry.name for entry in folder.iterdir())
        if entries and not (written_earlier is not None and written_earlier(folder)):
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise OutputNotWritable(
                f"{folder}: {marker.setting} names an existing folder that this project did not write (it has no "
                f"{marker.file}; it holds {shown}); refusing to write into it, which could overwrite or delete its "
                f"files. Set {marker.setting} to a new or empty folder"
            )
    require_writable(folder, marker.setting, contents)
    if not marker.found_in(folder):
        folder.mkdir(parents=True, exist_ok=True)
        marker.write(folder)
