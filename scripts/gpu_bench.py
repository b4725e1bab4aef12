"""The prepared GPU benchmark (run it through scripts/gpu_bench.sh): one command, a few minutes,
one JSON file, reports/bench_gpu.json (and a copy under $OUT when $OUT is set).

On one CUDA device it measures, each measurement in a fresh process (its own allocator,
cuDNN autotuning and peak memory), most important first, within a time budget:

- the built-in configuration (params.yaml: 64x64, ngf/ndf 16, batch 8): steps/s eager and
  replayed from a CUDA graph, and a check that the graph replays the eager step's losses
  (fp32, 6 steps: 3 eager warm-up steps, the recording, 2 replays);
- the ADE20K configuration (256x256, 151 label channels, ngf/ndf 64, SPADE hidden 128, VGG
  loss, bf16): the emulated official schedule and ours (default settings) at batch 16, ours
  with the one-hot lookup (and a check that it gives the dense step's losses), with blocks
  compiled (the warm-up time is the compile time), replayed from a CUDA graph, and both
  schedules at batch 32;

with the device name, torch version, FLOPs per step and MFU. VGG19's weights only shape
the speed, not the timings: when the torch hub cache lacks them, random torchvision
weights are written to a private file (never into the hub cache) and used. Needs torch,
torchvision, numpy, Pillow and tqdm only (no MLflow, DVC or YAML: the built-in
configuration is written out below and tested against params.yaml).

``--device cpu --tiny`` runs the same plan on tiny networks in seconds (the test suite does,
so that this script cannot rot); CUDA-only measurements are then marked skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing
import os
import platform
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REQUIRED_MODULES = ("torch", "torchvision", "numpy", "PIL", "tqdm")
ROOT = Path(__file__).resolve().parents[1]

# params.yaml's built-in run, the keys that shape a training step (tests/test_gpu_bench.py
# checks them against params.yaml, so the two cannot drift apart).
BUILTIN = {
    "data": {"dataset": "landscapes", "builtin": {"size": 64}},
    "generator": {"ngf": 16, "spade_hidden": 32},
    "discriminator": {"ndf": 16},
    "encoder": {"nef": 16},
    "loss": {"use_vgg_loss": False},
    "train": {"batch_size": 4, "use_ema": True, "ema_decay": 0.99},
}
# The GPU targets' ADE20K configuration: the official defaults (gaugan.config) on ADE20K.
ADE20K = {"data": {"dataset": "ade20k"}, "train": {"batch_size": 16}}
# --tiny: the same plan on networks that run in seconds on a CPU.
TINY = {"data": {"builtin": {"size": 32}, "load_size": 32, "crop_size": 32}, "generator": {"ngf": 8, "spade_hidden": 16},
        "discriminator": {"ndf": 8}, "encoder": {"nef": 8}}


@dataclasses.dataclass(frozen=True)
class Item:
    """One measurement: a benchmark run, or a check that two execution settings agree."""

    name: str
    config: dict[str, Any]  # sections over gaugan.config.Config()'s defaults
    kind: str = "bench"  # "bench" | "reference" | "compare"
    other: dict[str, Any] | None = None  # "compare": the train settings compared with
    needs_cuda: bool = False
    steps: int = 10
    max_s: float = 120.0


def plan() -> list[Item]:
    ade20k_b32 = {**ADE20K, "train": {"batch_size": 32}}
    return [
        Item("builtin_eager", BUILTIN, steps=50),
        Item("builtin_cuda_graph", _with_train(BUILTIN, cuda_graph=True), steps=50, needs_cuda=True),
        Item("builtin_cuda_graph_check", _with_train(BUILTIN, precision="fp32"), "compare", {"cuda_graph": True},
             needs_cuda=True, steps=6),
        Item("ade20k_reference_b16", ADE20K, "reference"),
        Item("ade20k_ours_b16", ADE20K),
        Item("ade20k_ours_b16_lookup", _with_train(ADE20K, label_conv="lookup")),
        Item("ade20k_ours_b16_compile_blocks", _with_train(ADE20K, compile="blocks"), max_s=200.0),
        Item("ade20k_lookup_check", _with_train(ADE20K, batch_size=4, label_conv="dense"), "compare",
             {"label_conv": "lookup"}, steps=3),
        Item("ade20k_ours_b16_cuda_graph", _with_train(ADE20K, cuda_graph=True), needs_cuda=True),
        Item("ade20k_ours_b32", ade20k_b32),
        Item("ade20k_reference_b32", ade20k_b32, "reference"),
    ]


def _with_train(sections: dict[str, Any], **train: Any) -> dict[str, Any]:
    return {**sections, "train": {**sections.get("train", {}), **train}}


def missing_modules() -> list[str]:
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny networks, one step each: a dry run")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting measurements after this")
    parser.add_argument("--output", type=Path, default=ROOT / "reports" / "bench_gpu.json")
    parser.add_argument("--only", nargs="*", help="run only these measurements (names as in the JSON)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: plumbing only)")
    args = parser.parse_args(argv)
    missing = missing_modules()
    if missing:
        print(f"gpu_bench: missing Python modules: {', '.join(missing)} (install them, then rerun)", file=sys.stderr)
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device (use --device cpu --tiny for a dry run)", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)  # no OpenMP pool in this process: the measurements are forked from it
    started = time.perf_counter()
    report: dict[str, Any] = {"environment": environment(args.device), "budget_s": args.budget_s, "tiny": args.tiny,
                              "measurements": {}}
    with tempfile.TemporaryDirectory(prefix="gaugan-gpu-bench-") as work:
        vgg_weights, report["vgg_weights"] = vgg_weights_file(Path(work))
        for item in plan():
            if args.only and item.name not in args.only:
                continue
            elapsed = time.perf_counter() - started
            if item.needs_cuda and args.device != "cuda":
                outcome: dict[str, Any] = {"status": "skipped", "reason": "needs a CUDA device"}
            elif elapsed >= args.budget_s:
                outcome = {"status": "skipped", "reason": f"time budget of {args.budget_s:.0f} s spent"}
            else:
                limit = min(item.max_s, args.budget_s - elapsed + 30.0)
                outcome = run_item(item, args, vgg_weights, limit)
            report["measurements"][item.name] = outcome
            print(f"gpu_bench: {item.name}: {summary(outcome)}", flush=True)
            report["elapsed_s"] = time.perf_counter() - started
            report["summary"] = headline(report["measurements"])
            write_report(report, args.output)
    print(json.dumps(report["summary"], indent=1))
    return 0


def environment(device: str) -> dict[str, Any]:
    import torch

    from gaugan.train.bench import device_name

    info = {"torch_version": torch.__version__, "python": platform.python_version(), "device": device,
            "cpu": device_name(torch.device("cpu")), "cpu_count": os.cpu_count()}
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update({"device_name": properties.name, "device_memory_bytes": properties.total_memory,
                     "cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version()})
    return info


def vgg_weights_file(work: Path) -> tuple[str | None, str]:
    """The hub cache's VGG19 weights when present, else random torchvision ones in ``work``."""
    from gaugan.losses import default_vgg_weights_path

    cached = default_vgg_weights_path()
    if cached.is_file():
        return None, f"the torch hub cache's {cached}"
    import torch
    import torchvision

    path = work / "vgg19-random-features.pth"
    features = torchvision.models.vgg19(weights=None).features
    torch.save({f"features.{key}": value for key, value in features.state_dict().items()}, path)
    return str(path), "random torchvision init (speed only; not in the hub cache)"


def item_config(item: Item, tiny: bool, vgg_weights: str | None):
    from gaugan.config import Config, replace

    sections = _merge(item.config, TINY) if tiny else item.config
    sections = _merge(sections, {"loss": {"vgg_weights": vgg_weights}} if vgg_weights else {})
    if tiny:
        sections = _merge(sections, {"train": {"batch_size": 2}})
    return replace(Config(), **sections)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {})
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(merged[section].get(key), dict):
                merged[section][key] = {**merged[section][key], **value}
            else:
                merged[section][key] = value
    return merged


def run_item(item: Item, args: argparse.Namespace, vgg_weights: str | None, limit_s: float) -> dict[str, Any]:
    """``item`` in a fresh process, stopped after ``limit_s`` seconds."""
    context = multiprocessing.get_context("spawn" if args.device == "cuda" else "fork")
    results = context.Queue()
    process = context.Process(target=_child, args=(results, item, args.tiny, args.device, vgg_weights,
                                                   args.compile_backend))
    started = time.perf_counter()
    process.start()
    outcome = None
    # Read while waiting: a child blocks on exit until its queued result has been read.
    while outcome is None:
        try:
            outcome = results.get(timeout=1.0)
        except queue.Empty:
            if not process.is_alive() and results.empty():
                outcome = {"status": "error", "reason": f"the process died (exit code {process.exitcode})"}
            elif time.perf_counter() - started > limit_s:
                process.terminate()
                outcome = {"status": "timeout", "limit_s": limit_s, "reason": f"did not finish within {limit_s:.0f} s"}
    process.join(30)
    outcome["wall_s"] = time.perf_counter() - started
    return outcome


def _child(queue, item: Item, tiny: bool, device_name: str, vgg_weights: str | None, backend: str) -> None:
    try:
        import torch

        from gaugan.config import replace
        from gaugan.data.registry import resolve_dataset
        from gaugan.train import compiled
        from gaugan.train.bench import BenchSettings, compare_step_by_step, run_benchmark

        compiled.BACKEND = backend
        if device_name == "cpu":
            torch.set_num_threads(1)
        device = torch.device(device_name)
        cfg = replace(item_config(item, tiny, vgg_weights), train={"device": device_name})
        spec = resolve_dataset(cfg.data)
        steps = 1 if tiny else item.steps
        if item.kind == "compare":
            other = replace(cfg, train=item.other)
            result = compare_step_by_step(cfg, other, spec, device, steps=steps if not tiny else 2)
            result["other_train_settings"] = item.other
        else:
            settings = BenchSettings(steps=steps, warmup=1 if tiny else 3, reference_schedule=item.kind == "reference")
            result = run_benchmark(cfg, spec, device, settings)
        queue.put({"status": "ok", "result": result})
    except Exception as err:  # reported in the JSON, the other measurements go on
        queue.put({"status": "error", "reason": f"{type(err).__name__}: {err}"})


def summary(outcome: dict[str, Any]) -> str:
    if outcome["status"] != "ok":
        return f"{outcome['status']}: {outcome.get('reason', '')}"
    result = outcome["result"]
    if "max_relative_difference" in result:
        return f"max relative loss difference {result['max_relative_difference']:.2e}"
    mfu = f", MFU {result['mfu']:.1%}" if result.get("mfu") else ""
    return (f"{result['images_per_s']:.1f} images/s ({result['steps_per_s']:.2f} steps/s){mfu}, "
            f"warm-up {sum(result['warmup_step_s']):.1f} s")


def headline(measurements: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The GPU speed targets, from what was measured (None where a measurement is missing)."""
    def value(name: str, key: str):
        outcome = measurements.get(name, {})
        return outcome.get("result", {}).get(key) if outcome.get("status") == "ok" else None

    reference = value("ade20k_reference_b16", "images_per_s")
    candidates = {name: value(name, "images_per_s") for name in measurements
                  if name.startswith("ade20k_ours_b16")}
    best_name, best = max(((n, v) for n, v in candidates.items() if v), key=lambda pair: pair[1], default=(None, None))
    compile_warmup = value("ade20k_ours_b16_compile_blocks", "warmup_step_s")
    return {
        "ade20k_b16_reference_images_per_s": reference,
        "ade20k_b16_best": best_name,
        "ade20k_b16_best_images_per_s": best,
        "ade20k_b16_speedup_over_reference": best / reference if best and reference else None,
        "ade20k_b16_best_mfu": value(best_name, "mfu") if best_name else None,
        "ade20k_b16_best_mfu_onehot_equivalent": value(best_name, "mfu_onehot_equivalent") if best_name else None,
        "ade20k_compile_blocks_warmup_s": sum(compile_warmup) if compile_warmup else None,
        "builtin_steps_per_s_eager": value("builtin_eager", "steps_per_s"),
        "builtin_steps_per_s_cuda_graph": value("builtin_cuda_graph", "steps_per_s"),
        "targets": "3x the reference's images/s and 35% MFU at ADE20K batch 16; 40 steps/s built-in; compile < 180 s",
    }


def write_report(report: dict[str, Any], output: Path) -> None:
    """Atomically, to ``output`` and (when set) ``$OUT/<name>``, after every measurement."""
    text = json.dumps(report, indent=1)
    targets = [output] + ([Path(os.environ["OUT"]) / output.name] if os.environ.get("OUT") else [])
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        temporary.replace(path)


if __name__ == "__main__":
    sys.exit(main())
