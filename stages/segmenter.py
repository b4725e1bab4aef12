"""Segmenter stage: train the pipeline's own segmenter where no published one exists.

Paper section 4 scores generated images with a segmenter trained on real photos. For the
built-in and custom datasets (``evaluate.segmenter`` 'trained', or 'auto' on a dataset
without a published segmenter) this stage trains the compact U-Net of
:mod:`gaugan.segmenters.trained` on the real training images of the store and measures
it on the real validation images: that mIoU is the ceiling reported next to the
generated one. The evaluate stage logs it, and this report, into the training run's
MLflow entry; this stage opens no run of its own (it would be a row without results in
the ablation tables). Otherwise (the paper's datasets under 'auto', or 'published' /
'none') it trains nothing and says so in its report.

Its params, data and code deps and outputs are listed once, in dvc.yaml (stage ``segmenter``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from gaugan.config import Config
from gaugan.data.dataset import StoreDataset, make_loader
from gaugan.data.io import atomic_write_text, require_writable
from gaugan.data.store import read_store
from gaugan.scoring import percent, real_image_scores
from gaugan.segmenters.loading import resolve_choice
from gaugan.segmenters.trained import SEGMENTER_FILE, claim_segmenter_dir, save_trained_segmenter, train_segmenter
from gaugan.threads import configure_threads
from gaugan.train.distributed import resolve_device
from pipeline.stage import run_stage

REPORT_PATH = "reports/segmenter.json"
STATUS_FILE = "segmenter.json"


def write_json(payload: dict[str, Any], *paths: Path) -> None:
    text = json.dumps(payload, indent=2) + "\n"
    for path in paths:
        atomic_write_text(path, text)


def run(cfg: Config, root: Path) -> None:
    threads = configure_threads(cfg.train.num_threads, cfg.data.num_workers)
    store_dir = root / cfg.data.processed_dir
    manifest, spec = read_store(store_dir, cfg.data)  # a store of other data settings is refused
    out_dir = root / cfg.segmenter.checkpoint_dir
    # Where the stage writes, checked before the work: never a folder of the user's.
    claim_segmenter_dir(out_dir)
    require_writable((root / REPORT_PATH).parent, None, f"the stage's report ({REPORT_PATH})")
    checkpoint = out_dir / SEGMENTER_FILE
    resolved = resolve_choice(cfg.evaluate.segmenter, spec.name)
    if resolved != "trained":
        checkpoint.unlink(missing_ok=True)  # never leave a stale segmenter that evaluation could pick up
        write_json(
            {"trained": False, "dataset": spec.name,
             "reason": f"evaluate.segmenter is {cfg.evaluate.segmenter!r}: dataset {spec.name!r} is scored with "
                       f"the {resolved!r} segmenter, nothing to train"},
            out_dir / STATUS_FILE, root / REPORT_PATH,
        )
        print(f"segmenter: nothing to train for {spec.name!r} (evaluate.segmenter={cfg.evaluate.segmenter!r})")
        return

    device = resolve_device(cfg.train.device)
    names = manifest["class_names"][: spec.label_nc]  # the store's names: a custom dataset's classes file
    train_set = StoreDataset(store_dir, "train", spec, train=True, seed=cfg.segmenter.seed, flip=cfg.data.flip)
    loader = make_loader(train_set, cfg.segmenter.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                         seed=cfg.segmenter.seed, pin_memory=device.type == "cuda")
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    segmenter = train_segmenter(loader, spec, cfg.segmenter, device, names,
                                report=lambda metrics, step: history.append({"step": step, **metrics}))
    train_seconds = time.perf_counter() - start
    ceiling = real_image_scores(segmenter, store_dir, spec, device, cfg.segmenter.batch_size)
    summary = {
        "trained": True,
        "dataset": spec.name,
        "real_miou": percent(ceiling.miou),
        "real_accuracy": percent(ceiling.accuracy),
        "per_class_iou": {
            name: (None if iou is None else round(100 * iou, 2))
            for name, iou in zip(segmenter.class_names(), ceiling.per_class_iou)
        },
        "num_train_images": len(train_set),
        "num_val_images": len(StoreDataset(store_dir, "val", spec)),
        "train_seconds": round(train_seconds, 1),
        "device": str(device),
        "num_threads": threads.num_threads,
        "history": history,
        "protocol": segmenter.protocol(),
        "config": dataclasses.asdict(cfg.segmenter),
    }
    save_trained_segmenter(segmenter, checkpoint, {"report": summary})
    write_json(summary, out_dir / STATUS_FILE, root / REPORT_PATH)
    print(f"segmenter: real-image mIoU {summary['real_miou']}%, accuracy {summary['real_accuracy']}% "
          f"({train_seconds:.0f} s on {device})")


if __name__ == "__main__":
    run_stage("segmenter", run)
