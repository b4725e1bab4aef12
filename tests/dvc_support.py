"""A tiny copy of the project as a git repository on which DVC runs the real stages in seconds:
the end-to-end tests (tests/test_e2e_dvc.py) and the sweep benchmark (scripts/bench_sweep.py).

The working tree (tracked and new, not ignored files) is copied into a new git repository and
params.yaml is shrunk to 32x32 images and a few training steps with tracking on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.params import apply_overrides, read_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = [
    "data.builtin.num_train=16", "data.builtin.num_val=8", "data.builtin.size=32", "data.num_workers=0",
    "generator.ngf=8", "generator.spade_hidden=16", "discriminator.ndf=8", "discriminator.num_layers=3",
    "discriminator.num_res_blocks=5",  # the OASIS discriminator on 32x32 images
    "encoder.nef=8", "encoder.z_dim=16",
    "optim.num_epochs_constant=1", "optim.num_epochs_decay=1",
    "train.batch_size=4", "train.log_every=1", "train.sample_every=4", "train.checkpoint_every=4",
    "train.device=cpu",
    "segmenter.width=8", "segmenter.num_steps=2", "segmenter.batch_size=8",
    "evaluate.batch_size=8",
]


def run(command: list[str], cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``command`` in ``cwd`` with this environment's tools first on PATH and no DVC, MLflow or
    PYTHONPATH settings leaking in; its output in the error when it fails."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DVC_", "MLFLOW_")) and key != "PYTHONPATH"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n"
                             f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}")
    return result


def clone_working_tree(destination: Path) -> Path:
    """The project as a fresh clone would have it, plus uncommitted work, in a new git repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        # reports/ holds generated outputs only (left over from runs in the working tree).
        generated = name.startswith("reports/") and not name.endswith(".gitignore")
        if source.is_file() and not generated:  # deleted-but-tracked files are skipped
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def git_commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=e2e", "-c", "user.email=e2e@localhost", "commit", "-q", "-m", message], repo)


def tiny_repo(destination: Path) -> Path:
    """A tiny clone at ``destination`` whose baseline ran `dvc repro`, committed; the repro's time
    and output in ``.e2e_repro_seconds`` and ``.e2e_repro_log`` (untracked)."""
    repo = clone_working_tree(destination)
    params = apply_overrides(read_params(repo / "params.yaml"), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    git_commit_all(repo, "snapshot")
    started = time.monotonic()
    result = run(["dvc", "repro"], repo, timeout=900)
    repo.joinpath(".e2e_repro_seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    repo.joinpath(".e2e_repro_log").write_text(result.stdout + result.stderr)
    git_commit_all(repo, "baseline outputs")
    return repo
