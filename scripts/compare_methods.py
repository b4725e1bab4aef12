"""SPADE and OASIS side by side on the built-in landscapes, under one protocol.

Every candidate trains on the same store (data.processed_dir), is generated on the same
validation split and scored by the same judge (the pipeline's segmenter, trained once by the
segmenter stage), exactly as the pipeline's generate and evaluate stages do; the only
differences between runs are the candidate's settings and the seed. Two budgets:

- ``steps``: every candidate trains the same number of G+D steps (``--steps``, default the
  configuration's planned steps);
- ``time``: every candidate trains for the wall time that the reference candidate (the
  first one) needs at ``steps``, i.e. ``steps x reference step time / candidate step time``
  steps, with the step times measured by the ``steps`` runs (median over the seeds);
- ``planned``: every candidate trains its own schedule (its epochs' steps, whatever ``--steps``
  says): what the pipeline's train stage would run with its settings.

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
import concurrent.futures
import json
import multiprocessing
import os
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
from gaugan.threads import configure_threads, cpu_model  # noqa: E402
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
    "spade_ema": ("SPADE with OASIS's EMA generator (decay 0.99 for the short run; batch-norm statistics "
                  "recomputed on 51 batches)", SPADE + ["train.use_ema=true", "train.ema_decay=0.99"]),
    "spade_ema_b4": ("SPADE with the EMA generator at batch 4: the same epochs in twice the steps",
                     SPADE + ["train.use_ema=true", "train.ema_decay=0.99", "train.batch_size=4"]),
}
LABELS = {"spade": "SPADE", "spade_g_oasis_d": "SPADE G + OASIS D", "oasis": "OASIS", "spade_ema": "SPADE + EMA",
          "spade_ema_b4": "SPADE + EMA, batch 4"}



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
    # The grid goes beside the generated images: the checkpoint folder holds only what training writes.
    output_dir = root / cfg.evaluate.output_dir
    generation = generate(cfg, root, output_dir, grid_path=output_dir.with_name(f"{name}-grid.png"))
    report = evaluate_generated(cfg, root, output_dir, generation)
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


def spread(values: list[float]) -> dict[str, Any] | None:
    """Mean, standard deviation and the values themselves (None when there are none)."""
    if not values:
        return None
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, "values": values}


def summarize(runs: list[dict[str, Any]], speed: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per candidate and budget: mean, spread and values over the seeds; speed (images/s, seconds
    per step) from the candidate's undisturbed timing run when there is one."""
    speed = speed or {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["candidate"], run["budget"]), []).append(run)
    rows = []
    for (candidate, budget), members in groups.items():
        stats = {key: spread([m[key] for m in members if m.get(key) is not None])
                 for key in ("steps", "train_seconds", "images_per_s", "miou", "accuracy", "miou_ratio", "fid")}
        row = {"candidate": candidate, "label": LABELS.get(candidate, candidate), "method": members[0]["method"],
               "budget": budget, "seeds": [m["seed"] for m in members], **stats, "timed_alone": False}
        timing = speed.get(candidate)
        if timing:  # the undisturbed speed, and the wall time these steps take at it
            per_step = timing["train_seconds"] / timing["steps"]
            steps_mean = row["steps"]["mean"]
            row.update({"images_per_s": {"mean": timing["images_per_s"], "std": 0.0, "values": [timing["images_per_s"]]},
                        "train_seconds": {"mean": round(per_step * steps_mean, 1), "std": 0.0,
                                          "values": [round(per_step * steps_mean, 1)]},
                        "timed_alone": True})
        rows.append(row)
    return rows


def run_tag(candidate: str, budget: str, seed: int) -> str:
    """A run's name: its checkpoint and output folders, and what the progress lines call it."""
    return f"{candidate}-{budget}-s{seed}"


def training_config(params: str, overrides: list[str], candidate: str, budget: str, seed: int, steps: int,
                    threads: int | None) -> tuple[Config, str]:
    """The configuration of one run and its tag (its checkpoint and output folders)."""
    tag = run_tag(candidate, budget, seed)
    extra = [f"train.num_threads={threads}"] if threads else []
    cfg = load_config(params, overrides + CANDIDATES[candidate][1] + extra + [
        "tracking.enabled=false", "train.resume=false", f"train.seed={seed}", f"train.max_steps={steps}",
        f"train.checkpoint_dir=checkpoints/compare/{tag}", f"evaluate.output_dir=outputs/compare/{tag}",
    ])
    return cfg, tag


def run_in_worker(params: str, root: str, overrides: list[str], candidate: str, budget: str, seed: int, steps: int,
                  threads: int | None) -> dict[str, Any]:
    """One run in a worker process (its own torch threads)."""
    cfg, tag = training_config(params, overrides, candidate, budget, seed, steps, threads)
    configure_threads(cfg.train.num_threads, cfg.data.num_workers)
    return run_one(cfg, Path(root), tag)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--root", default=str(ROOT), help="the project folder whose data/ and checkpoints/ are used")
    parser.add_argument("--out", default=str(ROOT / "reports" / "compare_methods.json"))
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=["steps", "time"], choices=["steps", "time", "planned"])
    parser.add_argument("--steps", type=int, default=None, help="the equal-steps budget (default: the planned steps)")
    parser.add_argument("--speed", action="store_true",
                        help="first time every candidate alone (one run at equal steps, seed 0, all threads): the "
                             "equal-time budgets and the reported speed come from these runs")
    parser.add_argument("--workers", type=int, default=1,
                        help="quality runs at a time, each with cores / workers threads (their times are then "
                             "measured under each other's load; --speed gives the undisturbed ones)")
    parser.add_argument("-S", dest="overrides", action="append", default=[],
                        help="a setting for every candidate, e.g. -S train.num_threads=2")
    args = parser.parse_args(argv)

    root, out = Path(args.root), Path(args.out)
    base = load_config(args.params, args.overrides + ["tracking.enabled=false", "train.resume=false"])
    threads = configure_threads(base.train.num_threads, base.data.num_workers)
    prepare(base, root)
    num_train = read_manifest(root / base.data.processed_dir)["splits"]["train"]["count"]
    planned = {name: planned_steps(load_config(args.params, args.overrides + CANDIDATES[name][1]), num_train)
               for name in args.candidates}
    steps = args.steps or planned_steps(base, num_train)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    runs: list[dict[str, Any]] = previous.get("runs", [])
    speed: dict[str, dict[str, Any]] = previous.get("speed", {})
    reference = args.candidates[0]
    worker_threads = max(1, threads.num_threads // args.workers) if args.workers > 1 else None

    def record() -> None:
        atomic_write_json(out, {
            "what": "SPADE and OASIS on the built-in landscapes: same store, splits, judge and metrics",
            "cpu": cpu_model(), "torch": torch.__version__, "num_threads": threads.num_threads,
            "runs_at_a_time": args.workers, "threads_per_run": worker_threads or threads.num_threads,
            "cpu_count": os.cpu_count(), "dataset": f"landscapes {base.data.builtin.size}x{base.data.builtin.size}, "
            f"{num_train} train / {base.data.builtin.num_val} val images",
            "equal_steps": steps, "planned_steps": {**previous.get("planned_steps", {}), **planned},
            "reference_candidate": reference if "time" in args.budgets else previous.get("reference_candidate", reference),
            "candidates": {name: {"label": LABELS[name], "description": CANDIDATES[name][0],
                                  "overrides": CANDIDATES[name][1]}
                           for name in sorted({run["candidate"] for run in runs} | set(args.candidates))},
            "common_overrides": args.overrides, "speed": speed, "runs": runs,
            "summary": summarize(runs, speed),
        })

    def put(run: dict[str, Any]) -> None:
        """Record ``run``, in place of an earlier one of the same candidate, budget and seed."""
        nonlocal runs
        runs = [r for r in runs if (r["candidate"], r["budget"], r["seed"]) != (run["candidate"], run["budget"],
                                                                                 run["seed"])]
        runs.append(run)

    def step_seconds(candidate: str) -> float | None:
        if candidate in speed:
            return speed[candidate]["train_seconds"] / speed[candidate]["steps"]
        times = [r["train_seconds"] / r["steps"] for r in runs if r["candidate"] == candidate and r["budget"] == "steps"]
        return statistics.median(times) if times else None

    if args.speed:  # every candidate alone on the machine, with all its threads, one after the other
        for candidate in args.candidates:
            cfg, tag = training_config(args.params, args.overrides, candidate, "speed", 0, steps, None)
            if speed.get(candidate, {}).get("settings") == flatten(config_to_dict(cfg)):
                continue
            print(f"{tag}: timing {steps} steps alone", flush=True)
            result = run_one(cfg, root, tag)
            speed[candidate] = {key: result[key] for key in ("steps", "train_seconds", "images_per_s",
                                                            "load_average_before", "load_average_after")}
            speed[candidate]["num_threads"] = threads.num_threads
            speed[candidate]["settings"] = flatten(config_to_dict(cfg))
            record()

    jobs = []
    for budget in args.budgets:
        for candidate in args.candidates:
            budget_steps = planned[candidate] if budget == "planned" else steps
            if budget == "time":
                reference_time, own_time = step_seconds(reference), step_seconds(candidate)
                if reference_time is None or own_time is None:
                    print(f"{candidate}: nothing to time it by; run with --speed or --budgets steps first")
                    continue
                budget_steps = max(1, round(steps * reference_time / own_time))
            for seed in args.seeds:
                if budget == "time" and budget_steps == steps:  # the reference: its equal-steps run is this run
                    same = next((r for r in runs if r["candidate"] == candidate and r["budget"] == "steps"
                                 and r["seed"] == seed and r["steps"] == steps), None)
                    if same is not None:
                        put({**same, "budget": "time", "same_run_as": "steps"})
                        continue
                cfg, tag = training_config(args.params, args.overrides, candidate, budget, seed, budget_steps,
                                           worker_threads)
                settings = flatten(config_to_dict(cfg))
                if not any(r["candidate"] == candidate and r["budget"] == budget and r["seed"] == seed
                           and r["settings"] == settings for r in runs):
                    jobs.append((candidate, budget, seed, budget_steps, cfg, settings))

    def finished(candidate: str, budget: str, seed: int, cfg: Config, settings: dict, result: dict) -> None:
        put({"candidate": candidate, "label": LABELS[candidate], "method": method_name(cfg), "budget": budget,
             "seed": seed, "concurrent_runs": args.workers, **result, "settings": settings})
        record()
        print(f"{run_tag(candidate, budget, seed)}: mIoU {result['miou']} / judge {result['real_miou']} = ratio "
              f"{result['miou_ratio']}, {result['train_seconds']} s", flush=True)

    failed: list[str] = []  # one run's error does not lose the others' results

    def failure(candidate: str, budget: str, seed: int, error: BaseException) -> None:
        failed.append(run_tag(candidate, budget, seed))
        print(f"{failed[-1]}: FAILED: {type(error).__name__}: {error}", flush=True)

    if args.workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            futures = {pool.submit(run_in_worker, args.params, str(root), args.overrides, candidate, budget, seed,
                                   budget_steps, worker_threads): (candidate, budget, seed, cfg, settings)
                       for candidate, budget, seed, budget_steps, cfg, settings in jobs}
            for future in concurrent.futures.as_completed(futures):
                candidate, budget, seed, cfg, settings = futures[future]
                try:
                    result = future.result()
                except Exception as error:
                    failure(candidate, budget, seed, error)
                else:
                    finished(candidate, budget, seed, cfg, settings, result)
    else:
        for candidate, budget, seed, budget_steps, cfg, settings in jobs:
            print(f"{run_tag(candidate, budget, seed)}: training {budget_steps} steps", flush=True)
            try:
                result = run_one(cfg, root, run_tag(candidate, budget, seed))
            except Exception as error:
                failure(candidate, budget, seed, error)
            else:
                finished(candidate, budget, seed, cfg, settings, result)
    record()
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; the others are in {out}", flush=True)
    return 1 if failed else 0

if __name__ == "__main__":
    raise SystemExit(main())
