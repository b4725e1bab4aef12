"""Generate stage: one synthesised PNG per validation label map, and a sample grid.

Paper section 4: the images FID and mIoU are computed on. The generator is
``evaluate.checkpoint`` when set (one of ours, or an official ``latest_net_G.pth`` so that
Table 1 can be re-measured), else the file ``evaluate.checkpoint_choice`` names in
``train.checkpoint_dir`` (``generator.pt``, or the best one kept during training); EMA
weights when present and ``evaluate.use_ema``; eval mode; on ``train.device``
(pipeline/evaluation.py, shared with `gaugan evaluate`).

Its params, data and code deps and outputs are listed once, in dvc.yaml (stage ``generate``).
"""

from __future__ import annotations

from pathlib import Path

from gaugan.config import Config
from gaugan.data.io import atomic_write_json, require_writable
from gaugan.threads import configure_threads
from pipeline.generation import generate
from pipeline.stage import run_stage

GRID_PATH = "reports/generated_grid.png"
REPORT_PATH = "reports/generation.json"


def run(cfg: Config, root: Path) -> None:
    threads = configure_threads(cfg.train.num_threads)  # no loader workers here
    # Where the stage writes, checked before the work: the images are written beside the
    # output folder and swapped in (gaugan.generate), the reports after them.
    require_writable(root / cfg.evaluate.output_dir, "evaluate.output_dir", "the generated images", replaced=True)
    require_writable((root / REPORT_PATH).parent, None, f"the stage's reports ({REPORT_PATH}, {GRID_PATH})")
    summary = generate(cfg, root, root / cfg.evaluate.output_dir, root / GRID_PATH)
    summary["num_threads"] = threads.num_threads
    atomic_write_json(root / REPORT_PATH, summary)
    print(f"generated {summary['num_images']} images into {cfg.evaluate.output_dir} from {summary['checkpoint']} "
          f"({summary['images_per_s']:.1f} images/s, weights {summary['weights']}, {summary['device']})")


if __name__ == "__main__":
    run_stage("generate", run)
