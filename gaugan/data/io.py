"""Reading label maps, instance maps and photos as they are found on disk.

Label maps are class indices, never colours: palette ("P") PNGs are read as their
indices, 8-bit and 16-bit greyscale PNGs as their values. A colour (RGB) label map is an
error, because guessing a colour-to-class mapping silently would corrupt training.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gaugan.data.registry import DatasetSpec
from gaugan.errors import UserError


class DataError(UserError, ValueError):
    """A data file is unreadable or violates the dataset's conventions."""


def _open(path: str | os.PathLike) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: unreadable image ({err})") from err


def read_index_map(path: str | os.PathLike, what: str = "label map") -> np.ndarray:
    """A single-channel index image as int64 (H, W): P, L, I;16, I modes."""
    img = _open(path)
    if img.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        return np.asarray(img, dtype=np.int64) if img.mode != "P" else np.asarray(img).astype(np.int64)
    if img.mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(img)
        channels = arr.reshape(-1, arr.shape[-1])[:, :3] if arr.ndim == 3 else None
        # A greyscale map saved as RGB (all channels equal) is still an index map.
        if channels is not None and channels.shape[1] == 3 and (channels[:, 0] == channels[:, 1]).all() and (
            channels[:, 1] == channels[:, 2]
        ).all():
            return arr[..., 0].astype(np.int64)
        raise DataError(
            f"{path}: the {what} is a colour ({img.mode}) image; {what}s must hold class indices "
            f"(a greyscale or palette PNG), not colours"
        )
    raise DataError(f"{path}: unsupported {what} image mode {img.mode!r}")


def read_image(path: str | os.PathLike) -> Image.Image:
    """A photo as an RGB PIL image."""
    return _open(path).convert("RGB")


def map_labels(raw: np.ndarray, spec: DatasetSpec, source: str | os.PathLike, setting: str | None = None) -> np.ndarray:
    """Raw label values -> stored indices in ``[0, spec.num_label_values)``.

    The don't-care value (255 for COCO-Stuff) becomes index ``label_nc``. Any other value
    outside ``[0, label_nc)`` (or ``label_nc`` itself when the dataset has a don't-care
    channel) is an error naming the file, the value and the setting to change.
    """
    labels = raw.astype(np.int64, copy=True)
    if spec.dontcare_value is not None:
        labels[raw == spec.dontcare_value] = spec.label_nc
    bad = (labels < 0) | (labels >= spec.num_label_values)
    if bad.any():
        values = np.unique(raw[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
        if setting is None:
            setting = (
                "data.custom.num_classes or data.custom.dontcare_label"
                if spec.name == "custom"
                else f"data.dataset (is {spec.name!r} the right dataset for this file?)"
            )
        allowed = f"0..{spec.num_label_values - 1}"
        if spec.dontcare_value is not None:
            allowed += f" or the don't-care value {spec.dontcare_value}"
        raise DataError(
            f"{source}: label value(s) {shown} outside the valid range {allowed} for dataset "
            f"{spec.name!r} (label_nc={spec.label_nc}, contain_dontcare={spec.contain_dontcare}); "
            f"check {setting}"
        )
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


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder ``new`` at ``target``, replacing what was there.

    Outputs are built in a temporary folder beside the target and swapped in by renames,
    so an interrupted stage never leaves a half-written folder where a finished one was.
    """
    new, target = Path(new), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, target)
