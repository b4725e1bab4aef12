"""Readers of each dataset's on-disk layout: folders -> lists of (image, label, instance) pairs.

The layouts are those of the official archives (docs/SPADE.md section 3) plus the custom
layout for a user's own data:

- ADE20K: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` with
  ``ADEChallengeData2016/annotations/{training,validation}/*.png``.
- ADE20K-outdoor: ADE20K filtered by scene category (``sceneCategories.txt`` of the same
  archive, :data:`OUTDOOR_SCENE_CATEGORIES`) or by a user list (``data.outdoor_list``).
  No official list exists; numbers on it are not comparable to the paper's.
- COCO-Stuff: the layout the official SPADE code reads, ``{train,val}_{img,label,inst}/``
  with matching base names, or the raw layout the download stage produces:
  ``{train2017,val2017}/*.jpg``, ``stuffthingmaps_trainval2017/{train2017,val2017}/*.png``
  and ``instances2017/{train2017,val2017}/*.png`` (built by :mod:`gaugan.data.coco_instances`).
- Cityscapes: ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png``,
  ``gtFine/{train,val}/<city>/*_gtFine_labelIds.png`` and ``*_gtFine_instanceIds.png``.
- Facades (CMP base): ``base/cmp_b*.jpg`` + ``base/cmp_b*.png`` (or the files directly
  in the root). The base has no official split: :data:`FACADES_VAL_FRACTION` of it is
  held out by a stable hash of the file stem.
- custom (and the built-in landscapes, which are written in it):
  ``{train,val}/{images,labels,instances?}/`` with matching stems, or a single
  ``{images,labels,instances?}/`` split by a stable hash of the stem
  (``data.custom.val_fraction``, ``data.custom.split_seed``).

Listing never drops anything silently: an image without a label (or the other way
round), a missing instance map or a lossy label file is a problem in the listing, which
:mod:`gaugan.data.check` reports together with every other problem. Links to folders are
followed (``train/images/batch2 -> /elsewhere``); a link cycle or a broken link is a problem.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from gaugan.config import DataConfig
from gaugan.data.classes import ClassFile
from gaugan.data.io import DataError, Problem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")  # lossless only: a JPEG would blur class indices
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")
SPLITS = ("train", "val")

FACADES_VAL_FRACTION = 0.1
FACADES_SPLIT_SEED = 0

# ADE20K-outdoor: scene categories (as named in ADEChallengeData2016/sceneCategories.txt,
# SUN database names) that we count as outdoor. A category matches when it equals an
# entry, starts with "<entry>_" (e.g. "field_cultivated"), or contains "outdoor". This
# list is ours: the paper's subset was never published.
OUTDOOR_SCENE_CATEGORIES = frozenset({
    "airfield", "alley", "amusement_park", "aqueduct", "badlands", "bamboo_forest", "beach", "boardwalk",
    "botanical_garden", "bridge", "building_facade", "butte", "campus", "canal", "canyon", "castle", "cemetery",
    "cliff", "coast", "construction_site", "corn_field", "corral", "courtyard", "creek", "crosswalk", "dam",
    "desert", "downtown", "driveway", "farm", "field", "forest", "forest_path", "forest_road", "formal_garden",
    "fountain", "garden", "gas_station", "glacier", "golf_course", "harbor", "hayfield", "highway", "hill",
    "hot_spring", "house", "ice_floe", "iceberg", "islet", "lagoon", "lake", "lighthouse", "marsh", "meadow",
    "moat", "mountain", "mountain_path", "mountain_snowy", "ocean", "orchard", "park", "parking_lot", "pasture",
    "patio", "picnic_area", "pier", "plaza", "playground", "pond", "racecourse", "rainforest", "residential_neighborhood",
    "rice_paddy", "river", "rock_arch", "ruin", "runway", "sandbar", "sea_cliff", "ski_slope", "sky", "skyscraper",
    "snowfield", "stadium", "street", "swamp", "topiary_garden", "tower", "valley", "vegetable_garden", "viaduct",
    "village", "vineyard", "volcano", "water_tower", "waterfall", "wheat_field", "wind_farm", "windmill", "yard",
    "zen_garden",
})


@dataclass(frozen=True)
class Pair:
    """One training example on disk."""

    stem: str  # unique within its split; names the example in the store and in errors
    image: Path
    label: Path
    instance: Path | None = None


@dataclass
class Listing:
    """What a dataset folder holds: pairs per split, the problems found, and notes."""

    dataset: str
    root: Path
    splits: dict[str, list[Pair]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # likely mistakes that are not errors (gaugan.data.diagnose)
    classes: ClassFile | None = None  # custom: classes.txt / classes.csv beside the splits
    split_folders: dict[str, Path] = field(default_factory=dict)  # custom: the folder each split is read from

    def files(self, split: str) -> list[Path]:
        return [p for pair in self.splits.get(split, []) for p in (pair.image, pair.label, pair.instance) if p]


def dataset_folder_name(dataset: str) -> str:
    """The folder a dataset lives in under ``data.root``; ADE20K-outdoor lives in the ADE20K folder."""
    return "ade20k" if dataset == "ade20k_outdoor" else dataset


def dataset_dir(data: DataConfig, root: Path) -> Path:
    """``<root>/<data.root>/<dataset>``."""
    return Path(root) / data.root / dataset_folder_name(data.dataset)


def locate_dataset(dataset: str, folder: str | os.PathLike) -> Path:
    """The dataset folder, given either what ``data.root`` names (the folder holding
    ``<dataset>/``, e.g. ``data/raw``) or the dataset folder itself."""
    folder = Path(folder)
    nested = folder / dataset_folder_name(dataset)
    return nested if nested.is_dir() else folder


def _files_by_stem(folder: Path, extensions: tuple[str, ...], problems: list[str], suffix: str = "",
                   what: str = "file", flag_lossy: bool = True) -> dict[str, Path]:
    """Files under ``folder`` (recursively) by stem (relative path without extension and suffix).

    In a folder of label maps, a JPEG is a problem (``flag_lossy``), not an unrelated file.
    """
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in _walk_files(folder, problems):
        if path.name.startswith("."):
            continue
        name = path.name
        ext = path.suffix.lower()
        if suffix:
            if not name.endswith(suffix + path.suffix):
                continue
            name = name[: -len(suffix + path.suffix)]
        else:
            name = path.stem
        if ext not in extensions:
            if flag_lossy and what == "label map" and ext in LOSSY_EXTENSIONS:
                problems.append(Problem.of(path, f"a {what} saved as lossy {ext}; class indices must be stored "
                                                 f"losslessly (PNG)"))
            continue
        rel_parent = path.parent.relative_to(folder).as_posix()
        stem = name if rel_parent == "." else f"{rel_parent}/{name}"
        if stem in found:
            problems.append(f"{path}: two {what}s with the stem {stem!r} (also {found[stem]}); keep one")
            continue
        found[stem] = path
    return found


def _walk_files(folder: Path, problems: list[str]) -> list[Path]:
    """Every file under ``folder``, sorted, as found (paths through links kept as they are).

    Links to folders are followed (``Path.rglob`` skips them, which silently dropped the pairs
    of a linked ``train/images/batch2``). A link back to a folder that holds it (a cycle), a
    second way into a folder already listed, a broken link and an unreadable folder are
    problems naming the path, never a hang or a silent drop.
    """
    files: list[Path] = []
    listed: dict[tuple[int, int], Path] = {}  # every folder listed: (device, inode) -> the path it was listed at
    pending: list[tuple[Path, frozenset]] = [(folder, frozenset())]  # folder, the folders holding it
    while pending:
        directory, holders = pending.pop()
        info = directory.stat()
        identity = (info.st_dev, info.st_ino)
        if identity in holders:
            problems.append(f"{directory}: a link to {directory.resolve()}, a folder that holds it; a link cycle, "
                            f"not followed (remove the link)")
            continue
        if identity in listed:
            problems.append(f"{directory}: the same folder as {listed[identity]}, which is listed already; not "
                            f"listed twice (remove one of them)")
            continue
        listed[identity] = directory
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as err:
            problems.append(f"{directory}: cannot list the folder ({err.strerror})")
            continue
        folders = []
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():  # links to folders included
                folders.append((path, holders | {identity}))
            elif entry.is_file():
                files.append(path)
            elif entry.is_symlink() and not path.exists():
                problems.append(f"{path}: a link to {Path(os.readlink(path))}, which does not exist (remove the link "
                                f"or restore the file)")
        pending.extend(reversed(folders))  # depth first, in name order
    return sorted(files)


def _pair_up(images: dict[str, Path], labels: dict[str, Path], instances: dict[str, Path] | None,
             where: str, problems: list[str], require_instances: bool) -> list[Pair]:
    """Match files by stem; every unmatched file is a problem, listed by name."""
    pairs = []

    def unmatched(path: Path, stem: str, what: str, missing: str) -> Problem:
        return Problem(f"{path}: {what} has no {missing} (expected stem {stem!r} among the {missing}s of {where})",
                       path, f"{what} has no {missing} (none with the same stem among the {missing}s of {where})")

    for stem in sorted(set(images) - set(labels)):
        problems.append(unmatched(images[stem], stem, "image", "label map"))
    for stem in sorted(set(labels) - set(images)):
        problems.append(unmatched(labels[stem], stem, "label map", "image"))
    for stem in sorted(set(instances or ()) - set(labels)):
        problems.append(unmatched(instances[stem], stem, "instance map", "label map"))
    for stem in sorted(set(images) & set(labels)):
        instance = None
        if instances is not None:
            instance = instances.get(stem)
            if instance is None and require_instances:
                advice = "(add it, or set data.use_instance=false to train without instance edges)"
                problems.append(Problem(f"{labels[stem]}: no instance map with the stem {stem!r} in {where} {advice}",
                                        labels[stem], f"no instance map with the same stem in {where} {advice}"))
        pairs.append(Pair(stem, images[stem], labels[stem], instance))
    return pairs


def empty_split_problem(listing: Listing, split: str) -> str | None:
    """The problem of a split without pairs, naming its folder (and saying when it is empty);
    None when the listing already reported the folder missing."""
    folder = listing.split_folders.get(split)
    if folder is None:
        return f"{listing.root}: no pairs found for split {split!r}"
    if not folder.is_dir():
        return None
    layout = "" if folder == listing.root else f"{split}/"
    where = f"(put the photos in {layout}images/ and their label maps, with the same names, in {layout}labels/)"
    if not any(files for _, _, files in os.walk(folder)):
        return f"{folder}: the folder is empty: no {split} pairs {where}"
    return f"{folder}: no {split} pairs among its files {where}"


def split_problems(listing: Listing) -> list[str]:
    """A problem naming the folder of each split without pairs (:func:`empty_split_problem`)."""
    found = [empty_split_problem(listing, split) for split, pairs in listing.splits.items() if not pairs]
    return [problem for problem in found if problem]


def stable_val_split(stems: list[str], val_fraction: float, seed: int) -> set[str]:
    """The stems held out for validation: those whose hash of (seed, stem) falls below val_fraction.

    Deciding per stem (instead of shuffling the list) keeps every file in its split when
    other files are added or removed; the val share is val_fraction on average. A split
    that would come out empty (tiny datasets) holds out the single lowest hash instead.
    """
    if val_fraction <= 0 or len(stems) < 2:
        return set()

    def position(stem: str) -> float:
        return int(hashlib.sha256(f"{seed}:{stem}".encode()).hexdigest()[:16], 16) / 2.0**64

    held_out = {s for s in stems if position(s) < val_fraction}
    if not held_out:
        held_out = {min(stems, key=position)}
    if len(held_out) == len(stems):
        held_out.discard(max(stems, key=position))
    return held_out


def _require_dir(path: Path, dataset: str, expected: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: dataset folder for {dataset!r} not found; expected {expected}")


# --------------------------------------------------------------------------------------
# Layouts.


def list_custom(root: Path, val_fraction: float = 0.1, split_seed: int = 0, require_instances: bool = False,
                dataset: str = "custom") -> Listing:
    """``{train,val}/{images,labels,instances?}`` or a single ``{images,labels,instances?}``."""
    expected = ("train/{images,labels}/ and val/{images,labels}/ (optional instances/), or a single "
                "images/ + labels/ folder pair")
    _require_dir(root, dataset, expected)
    listing = Listing(dataset, root)
    if (root / "train").is_dir() or (root / "val").is_dir():
        for split in SPLITS:
            base = root / split
            if not base.is_dir():
                listing.problems.append(f"{base}: folder missing; a dataset with a train/ folder needs a val/ folder too "
                                        f"(or put everything in images/ + labels/ to split it by data.custom.val_fraction)")
                listing.splits[split] = []
                continue
            listing.splits[split] = _list_custom_split(base, listing.problems, require_instances)
            listing.split_folders[split] = base
        listing.notes.append("layout: train/ and val/ folders")
        return listing
    if (root / "images").is_dir() or (root / "labels").is_dir():
        pairs = _list_custom_split(root, listing.problems, require_instances)
        held_out = stable_val_split([p.stem for p in pairs], val_fraction, split_seed)
        listing.splits["train"] = [p for p in pairs if p.stem not in held_out]
        listing.splits["val"] = [p for p in pairs if p.stem in held_out]
        listing.split_folders["train"] = root
        listing.notes.append(
            f"layout: one images/ + labels/ folder, {len(held_out)} of {len(pairs)} pairs held out for val "
            f"(data.custom.val_fraction={val_fraction}, data.custom.split_seed={split_seed})"
        )
        return listing
    raise DataError(f"{root}: no train/, val/, images/ or labels/ folder; expected {expected}")


def _list_custom_split(base: Path, problems: list[str], require_instances: bool) -> list[Pair]:
    for sub in ("images", "labels"):
        if not (base / sub).is_dir():
            problems.append(f"{base / sub}: folder missing (expected {sub}/ next to "
                            f"{'labels/' if sub == 'images' else 'images/'})")
    images = _files_by_stem(base / "images", IMAGE_EXTENSIONS, problems, what="image")
    labels = _files_by_stem(base / "labels", LABEL_EXTENSIONS, problems, what="label map")
    instances = None
    if (base / "instances").is_dir():
        instances = _files_by_stem(base / "instances", LABEL_EXTENSIONS, problems, what="instance map")
    elif require_instances:
        problems.append(f"{base / 'instances'}: folder missing but instance edges are on "
                        f"(add instance maps or set data.use_instance=false)")
    return _pair_up(images, labels, instances, str(base), problems, require_instances and instances is not None)


def _ade_base(root: Path) -> Path:
    return root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root


def list_ade20k(root: Path, dataset: str = "ade20k") -> Listing:
    base = _ade_base(root)
    expected = "ADEChallengeData2016/images/{training,validation}/*.jpg and ADEChallengeData2016/annotations/..."
    _require_dir(root, dataset, expected)
    if not (base / "images").is_dir():
        raise DataError(f"{base}: no images/ folder; expected {expected} (run the download stage)")
    listing = Listing(dataset, root)
    for split, folder in (("train", "training"), ("val", "validation")):
        for sub in ("images", "annotations"):
            if not (base / sub / folder).is_dir():
                listing.problems.append(f"{base / sub / folder}: folder missing")
        images = _files_by_stem(base / "images" / folder, (".jpg", ".jpeg"), listing.problems, what="image")
        labels = _files_by_stem(base / "annotations" / folder, (".png",), listing.problems, what="label map")
        listing.splits[split] = _pair_up(images, labels, None, str(base / "*" / folder), listing.problems, False)
    return listing


def _outdoor_scene(category: str) -> bool:
    category = category.lower()
    if "indoor" in category or "interior" in category:
        return False
    return "outdoor" in category or any(
        category == name or category.startswith(name + "_") for name in OUTDOOR_SCENE_CATEGORIES
    )


def list_ade20k_outdoor(root: Path, outdoor_list: Path | None = None) -> Listing:
    """ADE20K restricted to outdoor scenes (a documented filter, not the paper's subset)."""
    listing = list_ade20k(root, dataset="ade20k_outdoor")
    if outdoor_list is not None:
        if not outdoor_list.is_file():
            raise DataError(f"{outdoor_list}: data.outdoor_list names a file that does not exist")
        keep = {line.strip() for line in outdoor_list.read_text().splitlines() if line.strip() and not line.startswith("#")}
        rule = f"the image stems listed in {outdoor_list} (data.outdoor_list)"
    else:
        scene_file = _ade_base(root) / "sceneCategories.txt"
        if not scene_file.is_file():
            raise DataError(
                f"{scene_file}: not found; ADE20K-outdoor is filtered by the scene categories of ADEChallengeData2016 "
                f"(re-extract the archive) or by a list of image stems in data.outdoor_list"
            )
        keep = set()
        for number, line in enumerate(scene_file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                listing.problems.append(f"{scene_file}:{number}: expected '<image stem> <scene category>', got {line!r}")
                continue
            if _outdoor_scene(parts[1]):
                keep.add(parts[0])
        rule = f"scene categories of {scene_file} in gaugan.data.sources.OUTDOOR_SCENE_CATEGORIES"
    for split, pairs in listing.splits.items():
        listing.splits[split] = [p for p in pairs if p.stem in keep]
    listing.notes.append(f"ADE20K-outdoor: kept {rule}; NOT comparable to the paper's ADE20K-outdoor numbers")
    return listing


def list_coco(root: Path, require_instances: bool = True) -> Listing:
    """COCO-Stuff in the official SPADE layout or the raw layout of the download stage."""
    expected = ("{train,val}_{img,label,inst}/ (the SPADE layout) or train2017/, val2017/, "
                "stuffthingmaps_trainval2017/ and instances2017/ (the layout the download stage produces)")
    _require_dir(root, "coco", expected)
    listing = Listing("coco", root)
    if (root / "train_img").is_dir() or (root / "val_img").is_dir():
        folders = {split: (root / f"{split}_img", root / f"{split}_label", root / f"{split}_inst") for split in SPLITS}
        listing.notes.append("layout: SPADE {train,val}_{img,label,inst}")
    elif (root / "train2017").is_dir() or (root / "val2017").is_dir():
        folders = {
            split: (root / f"{split}2017", root / "stuffthingmaps_trainval2017" / f"{split}2017",
                    root / "instances2017" / f"{split}2017")
            for split in SPLITS
        }
        listing.notes.append("layout: raw COCO 2017 + stuffthingmaps + instances2017 (built from the annotations)")
    else:
        raise DataError(f"{root}: no COCO-Stuff folders found; expected {expected}")
    for split, (image_dir, label_dir, instance_dir) in folders.items():
        for folder in (image_dir, label_dir) + ((instance_dir,) if require_instances else ()):
            if not folder.is_dir():
                hint = " (the download stage builds it from the COCO annotations)" if folder.name.endswith("2017") and "instances" in str(folder) else ""
                listing.problems.append(f"{folder}: folder missing{hint}")
        images = _files_by_stem(image_dir, (".jpg", ".jpeg", ".png"), listing.problems, what="image")
        labels = _files_by_stem(label_dir, (".png",), listing.problems, what="label map")
        instances = _files_by_stem(instance_dir, (".png",), listing.problems, what="instance map") if require_instances else None
        listing.splits[split] = _pair_up(images, labels, instances, f"{image_dir.parent}", listing.problems, require_instances)
    return listing


def list_cityscapes(root: Path, require_instances: bool = True) -> Listing:
    expected = "leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/*_gtFine_labelIds.png"
    _require_dir(root, "cityscapes", expected)
    if not (root / "gtFine").is_dir() or not (root / "leftImg8bit").is_dir():
        missing = [name for name in ("gtFine", "leftImg8bit") if not (root / name).is_dir()]
        raise DataError(
            f"{root}: {' and '.join(missing)}/ missing; expected {expected} (unzip gtFine_trainvaltest.zip and "
            f"leftImg8bit_trainvaltest.zip from https://www.cityscapes-dataset.com/downloads/ here)"
        )
    listing = Listing("cityscapes", root)
    for split in SPLITS:
        images = _files_by_stem(root / "leftImg8bit" / split, (".png",), listing.problems, suffix="_leftImg8bit", what="image")
        labels = _files_by_stem(root / "gtFine" / split, (".png",), listing.problems, suffix="_gtFine_labelIds", what="label map")
        instances = (_files_by_stem(root / "gtFine" / split, (".png",), listing.problems, suffix="_gtFine_instanceIds",
                                    what="instance map") if require_instances else None)
        if not images and not labels:
            listing.problems.append(f"{root / 'leftImg8bit' / split}: no *_leftImg8bit.png files for split {split!r}")
        listing.splits[split] = _pair_up(images, labels, instances, f"{root}/{{leftImg8bit,gtFine}}/{split}",
                                         listing.problems, require_instances)
    return listing


def list_facades(root: Path) -> Listing:
    expected = "base/cmp_b*.jpg with base/cmp_b*.png (CMP_facade_DB_base.zip extracted)"
    _require_dir(root, "facades", expected)
    base = root / "base" if (root / "base").is_dir() else root
    listing = Listing("facades", root)
    images = {k: v for k, v in _files_by_stem(base, (".jpg", ".jpeg"), listing.problems, what="image").items()
              if Path(k).name.startswith("cmp_")}
    labels = {k: v for k, v in _files_by_stem(base, (".png",), listing.problems, what="label map", flag_lossy=False).items()
              if Path(k).name.startswith("cmp_")}
    if not images and not labels:
        raise DataError(f"{base}: no cmp_*.jpg / cmp_*.png files; expected {expected}")
    pairs = _pair_up(images, labels, None, str(base), listing.problems, False)
    held_out = stable_val_split([p.stem for p in pairs], FACADES_VAL_FRACTION, FACADES_SPLIT_SEED)
    listing.splits["train"] = [p for p in pairs if p.stem not in held_out]
    listing.splits["val"] = [p for p in pairs if p.stem in held_out]
    listing.notes.append(f"CMP base has no official split: {len(held_out)} of {len(pairs)} held out for val by a stable hash of the stem")
    return listing


def list_dataset(dataset: str, root: str | os.PathLike, data: DataConfig, use_instance: bool,
                 repo_root: Path | None = None) -> Listing:
    """The pairs of ``dataset`` in the folder ``root`` (its official layout).

    ``use_instance`` is the resolved spec's: instance maps are required only then.
    ``repo_root`` resolves a relative ``data.outdoor_list``.
    """
    root = Path(root)
    if dataset in ("custom", "landscapes"):
        return list_custom(root, data.custom.val_fraction, data.custom.split_seed, use_instance, dataset)
    if dataset == "ade20k":
        return list_ade20k(root)
    if dataset == "ade20k_outdoor":
        outdoor = None
        if data.outdoor_list:
            outdoor = Path(data.outdoor_list)
            if not outdoor.is_absolute() and repo_root is not None:
                outdoor = repo_root / outdoor
        return list_ade20k_outdoor(root, outdoor)
    if dataset == "coco":
        return list_coco(root, use_instance)
    if dataset == "cityscapes":
        return list_cityscapes(root, use_instance)
    if dataset == "facades":
        return list_facades(root)
    raise DataError(f"unknown dataset {dataset!r}; expected one of custom, landscapes, ade20k, ade20k_outdoor, "
                    f"coco, cityscapes, facades")
