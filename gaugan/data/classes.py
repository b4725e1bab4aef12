"""Class names of every dataset, indexed by the stored label index (REFERENCE.md section 3).

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
"""

from __future__ import annotations

import numpy as np

from gaugan.data.registry import LANDSCAPE_CLASSES, DatasetSpec

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


def class_names(spec: DatasetSpec) -> list[str]:
    """Names of every stored index ``0 .. spec.num_label_values - 1`` (don't-care included).

    Custom datasets (and any index beyond a dataset's list, e.g. after an override of
    label_nc) are named ``class_<index>``; the don't-care channel is named ``dontcare``
    unless the dataset's list names that index: ADE20K's values 0..150 are all real
    ("other", 150 classes up to "flag"), its don't-care channel coincides with "flag".
    """
    known = CLASS_NAMES.get(spec.name, ())

    def name(index: int) -> str:
        if index < len(known):
            return known[index]
        return "dontcare" if spec.contain_dontcare and index == spec.label_nc else f"class_{index}"

    return [name(i) for i in range(spec.num_label_values)]


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
