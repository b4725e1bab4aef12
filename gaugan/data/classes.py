"""Class names of every dataset, indexed by the stored label index (docs/SPADE.md section 3).

Used for the class histogram, check-data's summary, per-class IoU tables and the colour
legend of sample grids. Index ``i`` is the value the store holds, i.e. what
:func:`gaugan.data.io.map_labels` produced:

- ADE20K: 0 = "other" (unlabelled; it keeps channel 0, see registry), 1..150 the
  SceneParsing classes in objectInfo150 order.
- COCO-Stuff: index = COCO category id - 1: 0..90 things (11 of the 91 ids were never
  annotated and are named "unused-<name>"), 91..181 stuff; index 182 is the don't-care
  channel that the raw value 255 maps to.
- Cityscapes: the labelIds 0..33 of the official label table; index 34 completes
  label_nc = 35 and is never present (license plate has id -1 in that table).
- Facades (CMP base): 1..12 as in the base's label list; index 0 is never present.
- landscapes: :data:`gaugan.data.registry.LANDSCAPE_CLASSES`.
- custom: the names (and optional colours) of a ``classes.txt`` or ``classes.csv`` beside the
  splits (:func:`read_class_file`), else ``class_<index>``. The store's manifest keeps the
  names and colours it was written with (``class_names``, ``class_colours``), which is
  where everything downstream reads them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gaugan.data.io import DataError
from gaugan.data.registry import LANDSCAPE_CLASSES, DatasetSpec

Colour = tuple[int, int, int]
CLASS_FILES = ("classes.txt", "classes.csv")

ADE20K_CLASSES = ("other",) + (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

_COCO_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "unused-street sign", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "unused-hat", "backpack", "umbrella", "unused-shoe", "unused-eye glasses", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "unused-plate",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "unused-mirror", "dining table", "unused-window", "unused-desk", "toilet", "unused-door",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "unused-blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "unused-hair brush",
)
_COCO_STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper",
    "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops",
    "window-blind", "window-other", "wood",
)
COCO_STUFF_CLASSES = _COCO_THINGS + _COCO_STUFF  # index = COCO category id - 1

CITYSCAPES_CLASSES = (
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic", "ground",
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge",
    "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky",
    "person", "rider", "car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
    "unused",
)

FACADES_CLASSES = (
    "unused", "background", "facade", "window", "door", "cornice", "sill", "balcony", "blind",
    "deco", "molding", "pillar", "shop",
)

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "ade20k": ADE20K_CLASSES,
    "ade20k_outdoor": ADE20K_CLASSES,
    "coco": COCO_STUFF_CLASSES,
    "cityscapes": CITYSCAPES_CLASSES,
    "facades": FACADES_CLASSES,
    "landscapes": LANDSCAPE_CLASSES,
}


@dataclass(frozen=True)
class ClassFile:
    """A custom dataset's class names, indexed by raw label value, and the colours it gives."""

    path: Path
    names: tuple[str, ...]
    colours: tuple[Colour | None, ...]  # one per name; None: the default palette's colour


def read_class_file(folder: str | os.PathLike) -> ClassFile | None:
    """``classes.txt`` or ``classes.csv`` in a dataset folder (None when it has neither).

    ``classes.txt``: one class name per line, the line order is the label value (0 first);
    blank lines and lines starting with ``#`` are skipped. ``classes.csv``: one row
    ``name,r,g,b`` (or just ``name``) per class in label-value order, colours 0..255, an
    optional header row ``name,r,g,b``. A malformed line is an error naming file and line.
    """
    folder = Path(folder)
    found = [folder / name for name in CLASS_FILES if (folder / name).is_file()]
    if not found:
        return None
    if len(found) > 1:
        raise DataError(f"{found[0]} and {found[1]}: two class files in {folder}; keep one")
    path = found[0]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the class names ({err})") from err
    rows = _csv_rows(path, text) if path.suffix == ".csv" else _txt_rows(text)
    names: list[str] = []
    colours: list[Colour | None] = []
    seen: dict[str, int] = {}
    for number, name, colour in rows:
        if not name:
            raise DataError(f"{path}:{number}: empty class name (one class per line, in label-value order)")
        if name in seen:
            raise DataError(f"{path}:{number}: class name {name!r} repeats line {seen[name]}; names must be unique")
        seen[name] = number
        names.append(name)
        colours.append(colour)
    if not names:
        raise DataError(f"{path}: no class names in the file (one class per line, in label-value order)")
    return ClassFile(path, tuple(names), tuple(colours))


def _txt_rows(text: str) -> list[tuple[int, str, Colour | None]]:
    return [(number, line.strip(), None) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]


def _csv_rows(path: Path, text: str) -> list[tuple[int, str, Colour | None]]:
    rows: list[tuple[int, str, Colour | None]] = []
    for number, row in enumerate(csv.reader(text.splitlines()), 1):
        fields = [field.strip() for field in row]
        if not any(fields) or fields[0].startswith("#"):
            continue
        if not rows and [f.lower() for f in fields] in (["name"], ["name", "r", "g", "b"]):
            continue  # the header
        colour = None
        if len(fields) == 4:
            try:
                colour = tuple(int(v) for v in fields[1:])
            except ValueError:
                colour = None
            if colour is None or not all(0 <= v <= 255 for v in colour):
                raise DataError(f"{path}:{number}: expected name,r,g,b with r, g, b integers 0..255, got "
                                f"{','.join(fields)!r}")
        elif len(fields) != 1:
            raise DataError(f"{path}:{number}: expected name or name,r,g,b ({len(fields)} fields), got "
                            f"{','.join(fields)!r}")
        rows.append((number, fields[0], colour))
    return rows


def named_class_count(classes: ClassFile, dontcare_value: int | None) -> int:
    """label_nc of a class file: every name is a class, except a last one naming the don't-care value."""
    return len(classes.names) - int(dontcare_value == len(classes.names) - 1)


def _stored_to_raw(spec: DatasetSpec, index: int) -> int | None:
    """The raw label value a stored index came from (None for the don't-care channel without a value)."""
    if spec.contain_dontcare and index == spec.label_nc:
        return spec.dontcare_value
    return index


def class_names(spec: DatasetSpec, custom: ClassFile | None = None) -> list[str]:
    """Names of every stored index ``0 .. spec.num_label_values - 1`` (don't-care included).

    ``custom`` (a custom dataset's :func:`read_class_file`) names the indices it covers; the
    don't-care channel takes the name of the don't-care value when the file has one.
    Otherwise custom datasets (and any index beyond a dataset's list, e.g. after an
    override of label_nc) are named ``class_<index>``; the don't-care channel is named
    ``dontcare`` unless the dataset's list names that index: ADE20K's values 0..150 are all
    real ("other", 150 classes up to "flag"), its don't-care channel coincides with "flag".
    """
    known: Sequence[str] = CLASS_NAMES.get(spec.name, ())

    def name(index: int) -> str:
        raw = _stored_to_raw(spec, index)
        if custom is not None and raw is not None and raw < len(custom.names):
            return custom.names[raw]
        if index < len(known):
            return known[index]
        return "dontcare" if spec.contain_dontcare and index == spec.label_nc else f"class_{index}"

    return [name(i) for i in range(spec.num_label_values)]


def class_colours(spec: DatasetSpec, custom: ClassFile | None = None) -> np.ndarray:
    """(num_label_values, 3) uint8 colours of the stored indices: the class file's where it gives one."""
    palette = label_palette(spec.num_label_values, spec.name)
    if custom is not None:
        for index in range(spec.num_label_values):
            raw = _stored_to_raw(spec, index)
            if raw is not None and raw < len(custom.colours) and custom.colours[raw] is not None:
                palette[index] = custom.colours[raw]
    return palette


def label_palette(num_values: int, dataset: str | None = None) -> np.ndarray:
    """(num_values, 3) uint8 colours for visualising label maps; stable for a given count.

    Hues are spread by the golden ratio so that neighbouring indices differ clearly; the
    built-in landscapes get colours that read as what they are (sky blue, grass green).
    """
    if dataset == "landscapes" and num_values <= len(LANDSCAPE_PALETTE):
        return LANDSCAPE_PALETTE[:num_values].copy()
    rng = np.random.default_rng(0)
    hue = (np.arange(num_values) * 0.618033988749895) % 1.0
    saturation = 0.55 + 0.4 * rng.random(num_values)
    value = 0.6 + 0.4 * rng.random(num_values)
    i = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - f * saturation), value * (1 - (1 - f) * saturation)
    rgb = np.select(
        [i[:, None] == k for k in range(6)],
        [np.stack(c, 1) for c in ((value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q))],
    )
    return (rgb * 255).round().astype(np.uint8)


LANDSCAPE_PALETTE = np.array(
    [[120, 170, 240], [250, 250, 250], [120, 100, 90], [225, 235, 255], [30, 80, 200],
     [230, 210, 150], [80, 180, 60], [20, 90, 30], [140, 140, 140], [150, 200, 60]],
    dtype=np.uint8,
)


def class_table(spec: DatasetSpec, manifest: dict | None = None) -> tuple[list[str], np.ndarray]:
    """Names and (n, 3) uint8 colours of every stored index, as the store was written with.

    ``manifest`` is a store's ``manifest.json`` (``gaugan.data.store.read_manifest``): when it
    was written for this spec (same dataset and label values), its ``class_names`` and
    ``class_colours`` are used, so a custom dataset's classes file shows its names and
    colours everywhere; otherwise the dataset's defaults.
    """
    if manifest is not None and manifest.get("dataset") == spec.name \
            and manifest.get("num_label_values") == spec.num_label_values:
        names = manifest.get("class_names") or []
        colours = manifest.get("class_colours") or []
        if len(names) == spec.num_label_values and len(colours) == spec.num_label_values:
            return list(names), np.asarray(colours, dtype=np.uint8)
    return class_names(spec), label_palette(spec.num_label_values, spec.name)
