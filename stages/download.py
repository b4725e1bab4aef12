"""Download stage: put the raw dataset named by ``data.dataset`` under ``<data.root>/<dataset>/``.

- landscapes (the default): generated, not downloaded (gaugan.data.builtin), in the custom
  layout, deterministically from ``data.builtin`` (seed, counts, size).
- ade20k, ade20k_outdoor, coco, facades: the official archives of docs/SPADE.md section 3,
  resumable, md5-checked where a checksum is published, extracted; COCO-Stuff's instance
  maps are then built from the COCO annotations (gaugan.data.coco_instances).
- cityscapes: needs a login; the user puts gtFine_trainvaltest.zip and
  leftImg8bit_trainvaltest.zip into ``<data.root>/cityscapes/``; the stage extracts them or
  says exactly what is missing and where to get it.
- custom: nothing to download; the stage checks that ``<data.root>/custom/`` holds the
  custom layout and says what is missing. It never writes into the user's folder (a
  shared dataset may be mounted read-only).

Every dataset ends with ``data/download.json``, a small record of what was downloaded,
verified or generated, written last: a failed run leaves no record. (A
download also keeps its own ``download.json`` beside the archives it fetched, to skip
what is already extracted.)

Its params, data and code deps and outputs are listed once, in dvc.yaml (stage ``download``).
"""

from __future__ import annotations

from pathlib import Path

from gaugan.config import Config
from gaugan.data.builtin import write_landscapes
from gaugan.data.coco_instances import build_instance_maps
from gaugan.data.download import Resource, download_dataset, locate_cityscapes
from gaugan.data.io import DataError, atomic_write_json, require_writable
from gaugan.data.sources import dataset_dir, list_custom, split_problems
from pipeline.stage import run_stage

RECORD = Path("data") / "download.json"


def run(cfg: Config, root: Path, resources: dict[str, tuple[Resource, ...]] | None = None,
        progress: bool = True) -> dict:
    """Fetch, locate or generate the raw dataset; return the record written to :data:`RECORD`.

    ``resources`` replaces the table of official archives (mirrors, tests).
    """
    data = cfg.data
    folder = dataset_dir(data, root)
    require_writable((root / RECORD).parent, None, "the download record (download.json)")  # written last
    if data.dataset == "landscapes":
        b = data.builtin
        info = write_landscapes(folder, b.num_train, b.num_val, b.size, b.seed, progress=progress,
                                num_workers=data.num_workers)
        timing = {key: info.pop(key) for key in ("seconds", "num_workers", "images_per_s_with_png_writing")}
        marker = {"dataset": "landscapes", "generated": info}
        print(f"landscapes: {timing['images_per_s_with_png_writing']} images/s written "
              f"({timing['seconds']} s, {timing['num_workers']} workers)")
    elif data.dataset == "custom":
        listing = list_custom(folder, data.custom.val_fraction, data.custom.split_seed, require_instances=False)
        problems = listing.problems + split_problems(listing)
        if problems:
            raise DataError(f"{folder}: the custom dataset is incomplete:\n" + "\n".join(f"  - {p}" for p in problems))
        marker = {"dataset": "custom", "pairs": {s: len(p) for s, p in listing.splits.items()}, "notes": listing.notes}
    elif data.dataset == "cityscapes":
        marker = locate_cityscapes(folder, progress=progress)
    else:
        def build_coco_instances(coco_dir: Path) -> dict:
            return build_instance_maps(coco_dir, num_workers=data.num_workers, progress=progress)

        after = build_coco_instances if data.dataset == "coco" else None
        marker = download_dataset(data.dataset, folder, resources, progress=progress, after_extract=after)
        if data.dataset == "ade20k_outdoor":
            marker = dict(marker, note="ADE20K-outdoor is a filter over this ADE20K download; not comparable to "
                                       "the paper")
    atomic_write_json(root / RECORD, marker)
    print(f"{data.dataset}: ready in {folder}")
    return marker


if __name__ == "__main__":
    run_stage("download", run)
