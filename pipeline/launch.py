"""How the stages that compute start: on GPUs claimed for them (gaugan/gpu_claims.py).

dvc.yaml runs the segmenter, train, generate and evaluate stages as ``python -m
pipeline.launch <command>``, e.g. ``python -m pipeline.launch torchrun --standalone
--nproc_per_node=4 -m stages.train`` (``${train_launcher}`` from launch.yaml). Before the
command starts, and so before anything initialises CUDA (which fixes the devices a process
sees), this

1. reads params.yaml: with ``train.device: cpu``, or where torch sees no GPU, nothing is
   claimed;
2. claims ``train.gpus`` GPUs for the train stage and one for the others, among the visible
   GPUs that no other experiment on this machine holds, waiting (and saying so) while too
   few are free;
3. replaces itself with the command (``exec``), with ``CUDA_VISIBLE_DEVICES`` naming the
   claimed GPUs and ``GAUGAN_CLAIMED_GPUS`` for the train stage to record. The claim's lock
   files stay open across ``exec``, so the command's own process holds them until it ends.

Under torchrun the claim is taken once per node, here, before torchrun starts its k
processes: they inherit ``CUDA_VISIBLE_DEVICES`` and rank r computes on the r-th claimed
GPU; the train stage checks that k equals ``train.gpus``. GPU indices follow the PCI bus
order (nvidia-smi's) unless ``CUDA_DEVICE_ORDER`` says otherwise. On Windows, which has no
``exec`` that keeps the process, the command runs as a child while this process holds the
claim.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from gaugan.config import Config
from gaugan.errors import USER_ERROR_EXIT_CODE, UserError
from gaugan.gpu_claims import CLAIMED_VARIABLE, GpuClaim, check_enough, claim_gpus, default_claims_dir, visible_gpus
from pipeline.stage import run_stage

USAGE = "usage: python -m pipeline.launch <launcher> [launcher options] -m stages.<name> (dvc.yaml's cmd)"


class LaunchError(UserError):
    """The command cannot be started: no stage in it, or its program is missing."""


def stage_of(command: Sequence[str]) -> str:
    """``train`` for a command that runs ``-m stages.train``."""
    for option, module in zip(command, command[1:]):
        if option == "-m" and module.startswith("stages."):
            return module.removeprefix("stages.")
    raise LaunchError(f"{USAGE}; got {' '.join(command) or 'nothing'}")


def num_gpus_for(cfg: Config, stage: str) -> tuple[int, str]:
    """How many GPUs ``stage`` claims, and the setting that says so."""
    if stage == "train":
        return cfg.train.gpus, "train.gpus"
    return 1, "train.device"  # the other stages compute on one GPU


def visible_device_count() -> int:
    """CUDA devices this process sees (initialises CUDA here, never in the command's process)."""
    import torch

    return torch.cuda.device_count()


def prepare(cfg: Config, stage: str, environ: Mapping[str, str], device_count: Callable[[], int] = visible_device_count,
            claims_dir: Path | None = None, on_wait: Callable[[str], None] | None = None,
            ) -> tuple[GpuClaim | None, dict[str, str]]:
    """The claim for ``stage`` (None on the CPU) and the environment to start its command with."""
    env = dict(environ)
    env[CLAIMED_VARIABLE] = ""
    count = 0 if cfg.train.device == "cpu" else device_count()
    if count == 0:
        return None, env  # the CPU; train.device: cuda then fails in the stage, saying so
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible_gpus(count, visible)
    num_gpus, setting = num_gpus_for(cfg, stage)
    check_enough(num_gpus, gpus, setting, f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
    claims_dir = default_claims_dir(environ) if claims_dir is None else claims_dir
    claim = claim_gpus(num_gpus, gpus, claims_dir, setting=setting, on_wait=on_wait)
    env["CUDA_VISIBLE_DEVICES"] = claim.cuda_visible_devices
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # the indices nvidia-smi shows, the same in every process
    env[CLAIMED_VARIABLE] = claim.cuda_visible_devices
    return claim, env


def execute(command: Sequence[str], env: dict[str, str], claim: GpuClaim | None) -> None:
    """Become ``command`` (POSIX), keeping the claim's locks; on Windows run it as a child."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if os.name == "posix":
            if claim is not None:
                claim.keep_across_exec()
            os.execvpe(command[0], list(command), env)
        code = subprocess.call(list(command), env=env)
    except OSError as err:
        raise LaunchError(f"cannot start {command[0]!r} ({err.strerror}); check the stage's cmd in dvc.yaml "
                          "(train: launch.yaml's train_launcher)") from err
    if claim is not None:
        claim.release()
    sys.exit(code)


def launch(cfg: Config, command: Sequence[str]) -> None:
    stage = stage_of(command)

    def say(message: str) -> None:
        print(f"{stage}: {message}", flush=True)

    claim, env = prepare(cfg, stage, os.environ, on_wait=say)
    if claim is not None:
        say(f"claimed GPU(s) {claim.cuda_visible_devices} (CUDA_VISIBLE_DEVICES; lock files in {claim.claims_dir})")
    execute(command, env, claim)


def main(argv: Sequence[str] | None = None) -> None:
    command = list(sys.argv[1:] if argv is None else argv)
    try:
        name = stage_of(command)
    except LaunchError as err:
        print(err, file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    run_stage(name, lambda cfg, root: launch(cfg, command))


if __name__ == "__main__":
    main()
