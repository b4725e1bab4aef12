"""Train stage: G, D (and E) on the preprocessed store (paper section 4; docs/SPADE.md section 2).

Thin: load the config, open (or continue) the MLflow run, call
:func:`gaugan.train.loop.train`, log the final generator. ``<train.checkpoint_dir>/run.json``
names the run so that the generate/evaluate stages log into it, and so that a resumed
training continues the same run. torch computes with ``train.num_threads`` CPU threads
(null: derived from the cores and ``data.num_workers``, gaugan/threads.py), recorded as
the run's ``runtime.*`` params and in reports/train.json, with the GPUs claimed for it
(``runtime.gpus``, ``gpus``: dvc.yaml starts it through pipeline/launch.py, which claims
``train.gpus`` of them). Under ``torchrun`` every process runs this module; only rank 0 talks
to MLflow and writes files:

    python -m pipeline.launch torchrun --standalone --nproc_per_node=N -m stages.train

Its params, data and code deps and outputs are listed once, in dvc.yaml (stage ``train``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

from gaugan.checkpoint import (
    GENERATOR_CHECKPOINT,
    LAST_CHECKPOINT,
    CheckpointError,
    claim_checkpoint_dir,
    load_for_resume,
)
from gaugan.config import Config, replace
from gaugan.data.io import atomic_write_json, require_writable
from gaugan.data.store import read_store
from gaugan.gpu_claims import GpuClaimError, claimed_from_environment
from gaugan.methods import method_name
from gaugan.threads import configure_threads
from gaugan.train.evaluator import training_evaluator_summary
from gaugan.train.loop import check_continuation, planned_steps, train
from pipeline.evaluation import training_evaluator
from pipeline.stage import run_stage
from pipeline.tracking import RUN_FILE, open_run, read_run_file, write_run_file

SUMMARY_PATH = "reports/train.json"


def stale_finished_run(cfg: Config, store_dir: Path, out_dir: Path) -> bool:
    """True when ``out_dir`` holds a *finished* training that must not be continued.

    That is one of a configuration that trains differently, or one of this configuration with
    no steps left (see below).

    A queued DVC experiment starts from a copy of its baseline's outputs, so its checkpoint
    folder (persist: true) holds the baseline's finished run; the ablation must start
    afresh, not fail in check_resumable. An *unfinished* checkpoint of another
    configuration stays an error: an interrupted run whose settings were changed.
    """
    last = out_dir / LAST_CHECKPOINT
    if not (cfg.train.resume and last.is_file() and (out_dir / GENERATOR_CHECKPOINT).is_file()):
        return False
    manifest, spec = read_store(store_dir, cfg.data)
    checkpoint = load_for_resume(last)
    try:
        check_continuation(checkpoint, cfg, dataclasses.asdict(spec), last)
    except CheckpointError:
        return True
    # The same configuration, finished, with nothing left to train: DVC re-runs this stage
    # only when an input changed (code, data), so "resuming" would train zero steps and
    # keep weights that no longer match the inputs. A larger max_steps still continues.
    return checkpoint["progress"]["step"] >= planned_steps(cfg, manifest["splits"]["train"]["count"])


def claimed_gpus(processes: int) -> tuple[str, ...]:
    """The GPUs pipeline/launch.py claimed for this node's training processes (none on the CPU),
    one per process: rank r computes on the r-th."""
    claimed = claimed_from_environment() or ()
    if claimed and len(claimed) != processes:
        raise GpuClaimError(
            f"train.gpus: {len(claimed)} GPU(s) claimed ({','.join(claimed)}) for {processes} training process(es) "
            f"on this machine; set train.gpus to the processes torchrun starts per node (launch.yaml "
            f"train_launcher's --nproc_per_node), e.g. -S train.gpus={processes}")
    return claimed


def run(cfg: Config, root: Path) -> None:
    # torchrun's ranks on this machine share its cores, and the GPUs claimed for them.
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    gpus = claimed_gpus(processes)
    threads = configure_threads(cfg.train.num_threads, cfg.data.num_workers, processes=processes)
    store_dir = root / cfg.data.processed_dir
    out_dir = root / cfg.train.checkpoint_dir
    read_store(store_dir, cfg.data)  # a store written for other data settings is refused first
    if int(os.environ.get("RANK", "0")) == 0:
        # Where this stage writes, checked before hours of training: never a user's folder.
        require_writable((root / SUMMARY_PATH).parent, None, f"the stage's reports ({SUMMARY_PATH})")
        claim_checkpoint_dir(out_dir)
    # Decided by every process before any writes, so that all start afresh together.
    stale = stale_finished_run(cfg, store_dir, out_dir)
    train_cfg = replace(cfg, train={"resume": False}) if stale else cfg
    if int(os.environ.get("RANK", "0")) != 0:
        train(train_cfg, store_dir, out_dir, show_progress=False)
        return
    if stale:
        print(f"train: {out_dir} holds a finished run of another configuration (e.g. a DVC experiment's "
              "baseline) or one with nothing left to train (an input changed); starting afresh")
        # generator.pt stays until the new run replaces it: the other processes decide by it.
        (out_dir / RUN_FILE).unlink(missing_ok=True)
        shutil.rmtree(out_dir / "samples", ignore_errors=True)

    run_file = out_dir / RUN_FILE
    resume_run_id = None
    resuming = train_cfg.train.resume and (out_dir / LAST_CHECKPOINT).is_file()
    if resuming:
        previous = read_run_file(run_file)
        resume_run_id = previous["run_id"] if previous else None
    if not cfg.tracking.enabled:
        run_file.unlink(missing_ok=True)  # later stages must not log into an older run
    with open_run(cfg, root, "train", resume_run_id=resume_run_id) as tracker:
        write_run_file(tracker, run_file)
        tracker.log_config(cfg)
        tracker.log_params({**{f"runtime.{key}": value for key, value in threads.as_dict().items()},
                            "runtime.gpus": ",".join(gpus) or "none"})
        evaluator = training_evaluator(train_cfg, root, out_dir, resume=resuming)  # None unless evaluate.every_epochs
        started = time.perf_counter()
        result = train(train_cfg, store_dir, out_dir, report=tracker.training_reporter(),
                       report_image=tracker.log_image, evaluate_during_training=evaluator)
        # Wall time of this invocation (a resumed run: of its continuation only); the report's
        # "training time" column.
        train_seconds = time.perf_counter() - started
        tracker.log_artifact(result.generator_checkpoint, "checkpoints")
        summary = {"method": method_name(cfg), "step": result.step, "epoch": result.epoch,
                   "resumed_from_step": result.resumed_from_step,
                   **result.metrics, "time/train_seconds": train_seconds, "num_threads": threads.num_threads,
                   "gpus": [int(gpu) if gpu.isdigit() else gpu for gpu in gpus],
                   "evaluation_during_training": training_evaluator_summary(evaluator)}
        tracker.log_metrics({"final/step": result.step, "time/train_seconds": train_seconds}, step=result.step)
    summary_path = root / SUMMARY_PATH
    atomic_write_json(summary_path, summary)


if __name__ == "__main__":
    run_stage("train", run)
