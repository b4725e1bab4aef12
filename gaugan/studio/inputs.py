"""What the studio accepts from a browser or a script, checked before anything reaches the model.

Every problem becomes a :class:`StudioInputError` with an HTTP status and a message that
names the form field, the file and the value: a file over the size limit or a map far
larger than the model (413), a label or instance map that is not a PNG (415), a value
outside the model's classes or an unreadable file (422), a missing field or a bad seed
(400). Sizes are read from the file's header, so an oversized image is refused before it
is decoded; maps are decoded in their own width (one byte a pixel for 8-bit maps). The
label conventions themselves (don't-care value or index, valid range, nearest-neighbour
resize to the network size) are :func:`gaugan.synthesize.read_label_map`'s, as for
``gaugan synthesize``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from gaugan.data.io import read_index_map
from gaugan.data.registry import DatasetSpec
from gaugan.errors import UserError
from gaugan.synthesize import read_instance_map, read_label_map, resize_nearest

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per file
MAX_PIXELS = 4096 * 4096  # decoded size of one upload: a small PNG can hold a huge image
# Label and instance maps: at most this many times the model's longer side, on each side
# (a Cityscapes 2048x1024 map fits its 512x256 model four times over). A 16 KB PNG can
# hold 4096x4096 pixels, which cost a 64x64 model 400 MB to decode before this limit.
MAX_MAP_SCALE = 8
MAX_SEED = 2**31 - 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class StudioInputError(UserError, ValueError):
    """A request the studio cannot serve as sent; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the form field it came in, the name the client gave it, its bytes."""

    field: str
    filename: str | None
    data: bytes

    def __str__(self) -> str:
        return f"{self.field} ({self.filename})" if self.filename else self.field


class NamedBytes(io.BytesIO):
    """An upload as a file object that names itself in the library's error messages.

    The readers in :mod:`gaugan.data.io` start their messages with the path they were
    given; for an upload that is the form field and file name, not an object repr.
    """

    def __init__(self, upload: Upload) -> None:
        super().__init__(upload.data)
        self.label = str(upload)

    def __str__(self) -> str:
        return self.label

    def __repr__(self) -> str:  # libraries that name the file by its repr (Pillow) name it the same way
        return self.label


@dataclass(frozen=True)
class LabelInput:
    """Label indices (and instance ids) at the network size, and what was done to get there."""

    labels: np.ndarray
    instance: np.ndarray | None
    notes: list[str] = field(default_factory=list)


def check_upload(upload: Upload, png_only: bool) -> tuple[int, int]:
    """Size limits (bytes and pixels) and, for maps of indices, the PNG signature; returns (W, H).

    Only the header is decoded here, so an oversized image is refused before it is inflated.
    """
    if len(upload.data) > MAX_UPLOAD_BYTES:
        raise StudioInputError(
            f"{upload}: {len(upload.data) / 2**20:.1f} MB is over the {MAX_UPLOAD_BYTES // 2**20} MB limit per file",
            413,
        )
    if not upload.data:
        raise StudioInputError(f"{upload}: the file is empty", 400)
    if png_only and not upload.data.startswith(PNG_SIGNATURE):
        raise StudioInputError(
            f"{upload}: not a PNG; send class indices as a PNG (8-bit greyscale or palette): other formats "
            f"are lossy or cannot hold indices",
            415,
        )
    try:
        with Image.open(NamedBytes(upload)) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:
        raise StudioInputError(f"{upload}: {err}", 413) from err
    except UnidentifiedImageError as err:
        raise StudioInputError(f"{upload}: unreadable image: not in any format Pillow reads (PNG, JPEG, ...)",
                               422) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise StudioInputError(f"{upload}: unreadable image ({err})", 422) from err
    if width * height > MAX_PIXELS:
        raise StudioInputError(
            f"{upload}: {width}x{height} pixels is over the limit of {MAX_PIXELS:,} pixels per image", 413
        )
    return width, height


def check_map_upload(upload: Upload, spec: DatasetSpec) -> tuple[int, int]:
    """:func:`check_upload` for a label or instance map, which may be at most :data:`MAX_MAP_SCALE`
    times the model's size on each side; returns (W, H). Nothing is decoded before."""
    width, height = check_upload(upload, png_only=True)
    model_height, model_width = spec.image_size
    side = MAX_MAP_SCALE * max(model_height, model_width)
    if width > side or height > side:
        raise StudioInputError(
            f"{upload}: {width}x{height} pixels; the model's {model_width}x{model_height} takes maps up to "
            f"{side}x{side} ({MAX_MAP_SCALE} times its size): scale the map down (nearest neighbour) first",
            413,
        )
    return width, height


def resize_note(what: str, size: tuple[int, int], spec: DatasetSpec) -> str | None:
    """The note sent back when an upload had another size than the model's (W, H)."""
    height, width = spec.image_size
    if size == (width, height):
        return None
    return f"{what} is {size[0]}x{size[1]}; resized (nearest neighbour) to the model's {width}x{height}"


def read_label_upload(spec: DatasetSpec, label: Upload | None, instance: Upload | None = None) -> LabelInput:
    """A label map (and instance map) upload -> indices at the network size, with notes.

    Models with an instance edge channel get the label map itself as the instance map when
    none is sent: every connected class region is then one object, so edges fall on class
    boundaries (as for stuff classes in the datasets' own instance maps); a note says so.
    """
    if label is None:
        raise StudioInputError("form field 'label' is missing: send the label map as a PNG of class indices", 400)
    size = check_map_upload(label, spec)
    notes = [note for note in [resize_note("the label map", size, spec)] if note]
    if instance is not None:
        if not spec.use_instance:
            raise StudioInputError(
                f"{instance}: dataset {spec.name!r} has no instance edge channel in this model; leave 'instance' out",
                400,
            )
        check_map_upload(instance, spec)
    elif spec.use_instance:
        notes.append("no instance map sent: each class region counts as one object (edges on class boundaries)")
    setting = f"the label map (the model's classes are 0..{spec.num_label_values - 1}; GET /api/info lists them)"
    try:
        labels, label_shape = read_label_map(spec, NamedBytes(label), setting)
        instance_ids = None
        if instance is not None:
            instance_ids = read_instance_map(spec, NamedBytes(instance), label_shape, NamedBytes(label))
        elif spec.use_instance:
            instance_ids = labels  # one object per class region
    except UserError as err:
        raise StudioInputError(str(err), 422) from err
    return LabelInput(labels, instance_ids, notes)


def read_instance_upload(spec: DatasetSpec, instance: Upload | None) -> tuple[np.ndarray, list[str]]:
    """An instance map upload alone -> ids renumbered 0..n-1 at the network size, and notes.

    For the page's editor: renumbering keeps every edge (edges only compare neighbouring
    ids) and lets the ids fit a 16-bit PNG.
    """
    if instance is None:
        raise StudioInputError("form field 'instance' is missing: send the instance map as a PNG", 400)
    if not spec.use_instance:
        raise StudioInputError(f"{instance}: dataset {spec.name!r} has no instance edge channel in this model", 400)
    size = check_map_upload(instance, spec)
    try:
        ids = read_index_map(NamedBytes(instance), "instance map", compact=True)
    except UserError as err:
        raise StudioInputError(str(err), 422) from err
    _, compact = np.unique(resize_nearest(ids, spec.image_size), return_inverse=True)
    if compact.max(initial=0) > np.iinfo(np.uint16).max:
        raise StudioInputError(f"{instance}: more than 65536 distinct instance ids", 422)
    notes = [note for note in [resize_note("the instance map", size, spec)] if note]
    return compact.reshape(spec.image_size), notes


def read_photo_upload(photo: Upload | None, field_name: str) -> NamedBytes:
    """A photo (any format Pillow reads) within the limits, ready for :func:`gaugan.data.io.read_image`."""
    if photo is None:
        raise StudioInputError(f"form field {field_name!r} is missing: send a photo (PNG or JPEG)", 400)
    check_upload(photo, png_only=False)
    return NamedBytes(photo)


def parse_seed(value: str | None) -> int:
    """The ``seed`` form field: an integer 0..2**31-1; absent means 0."""
    if value is None or value.strip() == "":
        return 0
    try:
        seed = int(value.strip())
    except ValueError:
        raise StudioInputError(f"seed: got {value!r}, expected an integer 0..{MAX_SEED}", 400) from None
    if not 0 <= seed <= MAX_SEED:
        raise StudioInputError(f"seed: got {seed}, expected an integer 0..{MAX_SEED}", 400)
    return seed


MAX_CLASS_SEEDS = 256  # more re-rolled regions than a label map has classes is a malformed request


def parse_class_seeds(value: str | None, num_label_values: int) -> dict[int, int]:
    """The ``class_seeds`` form field: a JSON object ``{"<class index>": seed}`` (the regions whose 3D
    noise is re-drawn); absent or empty means none."""
    if value is None or value.strip() in ("", "{}"):
        return {}
    shown = value if len(value) <= 80 else value[:77] + "..."
    expected = (f'a JSON object of class index -> seed, e.g. {{"3": 17}}, indices 0..{num_label_values - 1}, '
                f"seeds 0..{MAX_SEED}")
    try:
        raw = json.loads(value)
    except ValueError:
        raise StudioInputError(f"class_seeds: got {shown!r}, expected {expected}", 400) from None
    if not isinstance(raw, dict) or len(raw) > MAX_CLASS_SEEDS:
        raise StudioInputError(f"class_seeds: got {shown!r}, expected {expected}", 400)
    seeds = {}
    for key, seed in raw.items():
        try:
            index = int(key)
        except ValueError:
            index = -1
        if not 0 <= index < num_label_values or type(seed) is not int or not 0 <= seed <= MAX_SEED:
            raise StudioInputError(f"class_seeds: {key!r}: {seed!r} is not a class index and a seed; expected "
                                   f"{expected}", 400)
        seeds[index] = seed
    return seeds
