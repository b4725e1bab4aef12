"""Bench stage: training speed of the configuration in params.yaml, ours against the official
code's schedule measured on the same machine (README "Speed"), written to
``reports/bench.json``. Synthetic batches: no dataset needed. The same measurement from the
command line: ``gaugan bench --compare -S section.key=value``.

Its params, data and code deps and outputs are listed once, in bench/dvc.yaml (stage ``bench``).
"""

from __future__ import annotations

from pathlib import Path

from gaugan.config import Config
from gaugan.data.io import atomic_write_json
from gaugan.data.registry import resolve_dataset
from gaugan.threads import configure_threads
from gaugan.train.bench import BenchSettings, compare_schedules
from gaugan.train.distributed import resolve_device
from pipeline.stage import run_stage

BENCH_PATH = "reports/bench.json"
# Enough timed steps for a stable mean at the CPU-sized configuration; warm-up covers
# cuDNN autotuning and allocator growth.
NUM_STEPS = 20
NUM_WARMUP = 3
# Each schedule runs this many times, alternating, and the medians are compared: one run
# each misleads on a shared machine (about +-15% between runs on the 2-core CPU here).
NUM_REPEATS = 3


def run(cfg: Config, root: Path) -> None:
    configure_threads(cfg.train.num_threads, export=True)  # synthetic batches: no loader workers
    spec = resolve_dataset(cfg.data)
    device = resolve_device(cfg.train.device)
    result = compare_schedules(cfg, spec, device, BenchSettings(steps=NUM_STEPS, warmup=NUM_WARMUP), NUM_REPEATS)
    result["params_file"] = "params.yaml"
    path = root / BENCH_PATH
    atomic_write_json(path, result)
    print(f"ours {result['ours']['images_per_s']:.2f} images/s, reference {result['reference']['images_per_s']:.2f} "
          f"images/s ({result['speedup_images_per_s']:.2f}x, medians of {NUM_REPEATS} alternating runs) on {device} -> {path}")


if __name__ == "__main__":
    run_stage("bench", run)
