"""SPADE and OASIS side by side on the built-in landscapes, under one protocol.

Every candidate trains on the same store (data.processed_dir), is generated on the same
validation split and scored by the same judge (the pipeline's segmenter, trained once by the
segmenter stage), exactly as the pipeline's generate and evaluate stages do; the only
differences between runs are the candidate's settings and the seed. Two budgets:

- ``steps``: every candidate trains the same number of G+D steps (``--steps``, default the
  configuration's planned steps);
- ``time``: every candidate trains for the wall time that the reference candidate (the
  first one) needs at ``steps``, i.e. ``steps x reference step time / candidate step time``
  steps, with the step times measured by the ``steps`` runs (median over the seeds).

Results go to ``--out`` (default reports/compare_methods.json) after every run, and a run
already there (same candidate, budget, seed and settings) is not repeated, so an interrupted
comparison continues. The report stage renders the file.

    python scripts/compare_methods.py                      # 3 seeds, both budgets
    python scripts/compare_methods.py --seeds 0 --budgets steps --candidates spade oasis

Wall times depend on the machine and on what else runs on it: the CPU model, torch's thread
count and the load averages before and after each run are recorded beside every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gaugan.config import Config, config_to_dict, flatten  # noqa: E402
from gaugan.data.store import read_manifest  # noqa: E402
from gaugan.data.io import atomic_write_json  # noqa: E402
from gaugan.segmenters.trained import SEGMENTER_FILE  # noqa: E402
from gaugan.threads import configure_threads  # noqa: E402
from gaugan.train.loop import planned_steps, train  # noqa: E402
from pipeline.evaluation import evaluate_generated  # noqa: E402
from pipeline.generation import generate  # noqa: E402
from gaugan.methods import method_name  # noqa: E402
from pipeline.params import load_config  # noqa: E402

# The CPU-sized widths of the built-in run are shared by all candidates (ngf/ndf 16, SPADE
# hidden 32); what differs is the method.
SPADE = [
    "generator.arch=spade", "generator.noise_channels=0", "discriminator.arch=multiscale",
    "loss.use_feat_loss=true", "loss.use_labelmix=false", "optim.use_ttur=true", "optim.lr_g=null",
    "optim.lr_d=null", "optim.num_epochs_constant=2", "optim.num_epochs_decay=2", "train.use_ema=false",
]
OASIS_D = ["discriminator.arch=oasis", "loss.use_feat_loss=false", "loss.use_labelmix=true",
           "loss.lambda_labelmix=10.0"]
# OASIS's optimiser: Adam (0, 0.999), G 1e-4, D 4e-4, no decay.
OASIS_OPTIM = ["optim.use_ttur=false", "optim.beta1=0.0", "optim.beta2=0.999", "optim.lr_g=0.0001",
               "optim.lr_d=0.0004", "optim.num_epochs_constant=4", "optim.num_epochs_decay=0"]
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "spade": ("SPADE as published (the built-in default before OASIS)", SPADE),
    "spade_g_oasis_d": ("SPADE's generator, schedule and losses with the OASIS discriminator (N+1 loss, LabelMix)",
                        SPADE + OASIS_D),
    "oasis": ("OASIS: its generator with 64 channels of 3D noise, its discriminator, LabelMix, its optimiser, EMA",
              SPADE + OASIS_D + OASIS_OPTIM + ["generator.arch=oasis", "generator.noise_channels=64",
                                               "train.use_ema=true", "train.ema_decay=0.99"]),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def prepare(cfg: Config, root: Path) -> None:
    """The built-in data, its store and the judge, as the pipeline's first stages make them."""
    from stages import download, preprocess, segmenter

    store = root / cfg.data.processed_dir
    if not (store / "manifest.json").is_file():
        download.run(cfg, root, progress=False)
        preprocess.run(cfg, root)
    if not (root / cfg.segmenter.checkpoint_dir / SEGMENTER_FILE).is_file():
        segmenter.run(cfg, root)


def run_one(cfg: Config, root: Path, name: str) -> dict[str, Any]:
    """Train, generate and score one configuration; what the comparison records."""
    out_dir = root / cfg.train.checkpoint_dir
    load_before = list(os.getloadavg())
    started = time.perf_counter()
    result = train(cfg, root / cfg.data.processed_dir, out_dir, show_progress=False)
    train_seconds = time.perf_counter() - started
    generation = generate(cfg, root, root / cfg.evaluate.output_dir, grid_path=out_dir / "grid.png")
    report = evaluate_generated(cfg, root, root / cfg.evaluate.output_dir, generation)
    metrics = report.metrics
    ratio = metrics["miou"] / metrics["real_miou"] if metrics.get("miou") and metrics.get("real_miou") else None
    return {
        "steps": result.step,
        "train_seconds": round(train_seconds, 2),
        "images_per_s": round(result.step * cfg.train.batch_size / train_seconds, 3),
        "miou": metrics.get("miou"),
        "accuracy": metrics.get("accuracy"),
        "real_miou": metrics.get("real_miou"),
        "real_accuracy": metrics.get("real_accuracy"),
        "fid": metrics.get("fid"),
        "miou_ratio": None if ratio is None else round(ratio, 4),
        "per_class_iou": {row["class_name"]: row["generated_iou"] for row in report.per_class_rows},
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "checkpoint": str(out_dir.relative_to(root)),
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["candidate"], run["budget"]), []).append(run)
    rows = []
    for (candidate, budget), members in groups.items():
        def stats(key: str) -> dict[str, float] | None:
            values = [m[key] for m in members if m.get(key) is not None]
            if not values:
                return None
            return {"mean": round(statistics.fmean(values), 4),
                    "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                    "values": values}
        rows.append({"candidate": candidate, "method": members[0]["method"], "budget": budget,
                     "seeds": [m["seed"] for m in members], "steps": stats("steps"),
                     "train_seconds": stats("train_seconds"), "images_per_s": stats("images_per_s"),
                     "miou": stats("miou"), "accuracy": stats("accuracy"), "miou_ratio": stats("miou_ratio"),
                     "fid": stats("fid")})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--root", default=str(ROOT), help="the project folder whose data/ and checkpoints/ are used")
    parser.add_argument("--out", default=str(ROOT / "reports" / "compare_methods.json"))
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=["steps", "time"], choices=["steps", "time"])
    parser.add_argument("--steps", type=int, default=None, help="the equal-steps budget (default: the planned steps)")
    parser.add_argument("-S", dest="overrides", action="append", default=[],
                        help="a setting for every candidate, e.g. -S train.num_threads=2")
    args = parser.parse_args(argv)

    root, out = Path(args.root), Path(args.out)
    base = load_config(args.params, args.overrides + ["tracking.enabled=false", "train.resume=false"])
    threads = configure_threads(base.train.num_threads, base.data.num_workers)
    prepare(base, root)
    num_train = read_manifest(root / base.data.processed_dir)["splits"]["train"]["count"]
    steps = args.steps or planned_steps(base, num_train)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    runs: list[dict[str, Any]] = previous.get("runs", [])
    reference = args.candidates[0]

    def record() -> None:
        atomic_write_json(out, {
            "what": "SPADE and OASIS on the built-in landscapes: same store, splits, judge and metrics",
            "cpu": cpu_model(), "torch": torch.__version__, "num_threads": threads.num_threads,
            "cpu_count": os.cpu_count(), "dataset": f"landscapes {base.data.builtin.size}x{base.data.builtin.size}, "
            f"{num_train} train / {base.data.builtin.num_val} val images",
            "equal_steps": steps, "reference_candidate": reference,
            "candidates": {name: {"description": CANDIDATES[name][0], "overrides": CANDIDATES[name][1]}
                           for name in args.candidates},
            "common_overrides": args.overrides, "runs": runs, "summary": summarize(runs),
        })

    def step_seconds(candidate: str) -> float | None:
        times = [r["train_seconds"] / r["steps"] for r in runs if r["candidate"] == candidate and r["budget"] == "steps"]
        return statistics.median(times) if times else None

    for budget in args.budgets:
        for candidate in args.candidates:
            for seed in args.seeds:
                overrides = args.overrides + CANDIDATES[candidate][1] + ["tracking.enabled=false", "train.resume=false"]
                budget_steps = steps
                if budget == "time":
                    reference_time, own_time = step_seconds(reference), step_seconds(candidate)
                    if reference_time is None or own_time is None:
                        print(f"{candidate}: no equal-steps runs to time it by; run --budgets steps first")
                        continue
                    budget_steps = max(1, round(steps * reference_time / own_time))
                cfg = load_config(args.params, overrides)
                # Epochs cover the budget; max_steps stops at it (at equal time: within the last epoch).
                per_epoch = num_train // cfg.train.batch_size
                epochs = cfg.optim.num_epochs_constant + cfg.optim.num_epochs_decay
                tag = f"{candidate}-{budget}-s{seed}"
                cfg = load_config(args.params, overrides + [
                    f"train.seed={seed}", f"train.max_steps={budget_steps}",
                    f"train.checkpoint_dir=checkpoints/compare/{tag}", f"evaluate.output_dir=outputs/compare/{tag}",
                ])
                settings = flatten(config_to_dict(cfg))
                if any(r["candidate"] == candidate and r["budget"] == budget and r["seed"] == seed
                       and r["settings"] == settings for r in runs):
                    continue
                if budget_steps > epochs * per_epoch:
                    print(f"{tag}: {budget_steps} steps exceed the {epochs} epochs of the schedule; capped")
                print(f"{tag}: training {min(budget_steps, epochs * per_epoch)} steps", flush=True)
                result = run_one(cfg, root, candidate)
                runs = [r for r in runs if not (r["candidate"] == candidate and r["budget"] == budget
                                               and r["seed"] == seed)]
                runs.append({"candidate": candidate, "method": method_name(cfg), "budget": budget, "seed": seed,
                             **result, "settings": settings})
                record()
                print(f"{tag}: mIoU {result['miou']} / judge {result['real_miou']} = ratio {result['miou_ratio']}, "
                      f"{result['train_seconds']} s, {result['images_per_s']} images/s", flush=True)
    record()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
