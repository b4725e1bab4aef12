"""What a sweep costs on this machine: the same four experiments of the tiny built-in CPU
configuration run by ``gaugan sweep --jobs 1`` and by ``--jobs 2`` -> reports/bench_sweep.json.

    python scripts/bench_sweep.py                 # about 10 minutes on a 2-core VM

A tiny copy of the project (tests/dvc_support.py: 32x32 images, a few training steps) runs its
baseline once with `dvc repro`; each sweep then starts from its own copy of that repository, so
both start from the same state (the same DVC cache and MLflow store). Recorded per sweep: the
wall time of the whole command (queueing, the MLflow server's start, the experiments, linking,
the report's rebuild), the MLflow run span of every experiment (train to evaluate; the rest of
an experiment is DVC copying the repository and its data stages), and the 1-minute load
average at the start and the end, since the machine may be shared with other jobs: compare
two sweeps only where the load was alike. The CPU model and the cores are recorded as well.
The sweep shares the cores out itself (``OMP_NUM_THREADS`` = cores / jobs per experiment);
this script leaves ``OMP_NUM_THREADS`` unset for that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, whatever is installed

from gaugan.data.io import atomic_write_json  # noqa: E402
from gaugan.threads import available_cores  # noqa: E402
from tests.dvc_support import TINY, run, tiny_repo  # noqa: E402

EXPERIMENTS = {"bench-ngf4": "generator.ngf=4", "bench-ngf6": "generator.ngf=6",
               "bench-kernel1": "generator.spade_kernel_size=1", "bench-kernel5": "generator.spade_kernel_size=5"}


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match[1].strip() if match else platform.machine()


def run_spans(repo: Path) -> dict[str, float]:
    """Seconds from the start of each experiment's MLflow run (train) to its end (evaluate)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gaugan")
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.tags["dvc.exp_name"]: round((run.info.end_time - run.info.start_time) / 1000, 1)
            for run in runs if run.data.tags.get("dvc.exp_name") in EXPERIMENTS and run.info.end_time}


def sweep(baseline: Path, jobs: int, work: Path) -> dict:
    repo = work / f"jobs{jobs}"
    shutil.copytree(baseline, repo, symlinks=True)
    listing = work / "experiments.txt"
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    result = run([sys.executable, "-m", "pipeline.cli", "sweep", "--jobs", str(jobs), "--from-file", str(listing)],
                 repo, timeout=3600, check=False)
    wall = time.monotonic() - started
    load_end = os.getloadavg()[0]
    output = result.stdout + result.stderr
    logs = [output, *(path.read_text(errors="replace") for path in (repo / ".dvc" / "tmp").rglob("*.log")),
            *(path.read_text(errors="replace") for path in (repo / ".dvc" / "tmp" / "exps").rglob("*.out"))]
    succeeded = re.search(r"(\d+) succeeded", output)
    server = re.search(r"the MLflow server answers at \S+ after (\d+) s", output)
    waited = re.search(r"experiment\(s\) in (\d+)m(\d+)s", output)
    queue_s = int(waited[1]) * 60 + int(waited[2]) if waited else None
    spans = run_spans(repo)
    return {"jobs": jobs, "wall_s": round(wall, 1), "exit_code": result.returncode,
            "succeeded": int(succeeded[1]) if succeeded else 0,
            "mlflow_server_start_s": int(server[1]) if server else None,
            "queue_s": queue_s,  # from `dvc queue start` to the last experiment's end
            "outside_queue_s": round(wall - queue_s, 1) if queue_s is not None else None,
            "loadavg_1min_start": round(load_start, 2),
            "loadavg_1min_end": round(load_end, 2), "experiment_run_spans_s": spans,
            "experiment_run_spans_sum_s": round(sum(spans.values()), 1),
            "database_is_locked_seen": any("database is locked" in log for log in logs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "reports" / "bench_sweep.json")
    args = parser.parse_args()
    os.environ.pop("OMP_NUM_THREADS", None)  # the sweep shares the cores out
    with tempfile.TemporaryDirectory(prefix="gaugan-bench-sweep-") as folder:
        work = Path(folder)
        (work / "experiments.txt").write_text("".join(f"{name} {override}\n" for name, override in EXPERIMENTS.items()))
        load_start = os.getloadavg()[0]
        baseline = tiny_repo(work / "baseline")
        sweeps = [sweep(baseline, jobs, work) for jobs in (1, 2)]
        baseline_seconds = float((baseline / ".e2e_repro_seconds").read_text())
    report = {
        "what": "the same 4 experiments of the tiny built-in CPU configuration through gaugan sweep, --jobs 1 and "
                "--jobs 2, each from a copy of one baseline repository (scripts/bench_sweep.py)",
        "cpu": cpu_model(),
        "cores": available_cores(),
        "python": platform.python_version(),
        "experiments": EXPERIMENTS,
        "tiny_params": TINY,
        "baseline_dvc_repro_s": baseline_seconds,
        "baseline_loadavg_1min_start": round(load_start, 2),
        "sweeps": sweeps,
        "speedup_jobs2_over_jobs1": round(sweeps[0]["wall_s"] / sweeps[1]["wall_s"], 2),
        "note": "wall_s is the whole command; queue_s the experiments (from `dvc queue start` to the last one's "
                "end: DVC copying the repository and running every stage of each experiment), outside_queue_s the "
                "rest (checks, the loopback MLflow server's start, queueing, linking, the report's rebuild). "
                "experiment_run_spans_s: each experiment's MLflow run, train to evaluate. On 2 cores the parallel "
                "experiments share the cores (1 torch thread each against 2 for one at a time), so --jobs 2 gains "
                "only what one experiment leaves idle (process starts, DVC's own work); with a GPU per experiment "
                "the gain would be the GPUs', which is not measured here. The machine is shared with other "
                "engineers' jobs: compare the sweeps only together with their load averages.",
    }
    atomic_write_json(args.output, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
