"""How many CPU threads torch computes with: one rule for every stage and command.

torch's default is one intra-op thread per core it sees, which ignores the loader's worker
processes: on two cores shared with other jobs (load average 8-9), the built-in run with two
loader workers trained at 0.96 and 0.76 images/s with two torch threads against 3.88 and 4.48
with one (alternating 40-step runs of the train stage), because the busy processes kept
pre-empting each other (OpenMP threads spin while they wait for the others). The rule,
used when ``train.num_threads`` is null:

1. ``OMP_NUM_THREADS`` when the environment sets it (the convention every numerical
   library follows, and how a cluster scheduler hands out cores);
2. else ``max(1, cores // processes - num_workers)``: the cores this process may run on
   (``os.sched_getaffinity``, which honours ``taskset``, cgroup cpusets and job schedulers,
   unlike ``os.cpu_count``) shared by the ``processes`` on this machine (DDP ranks), one
   core left to each loader worker, at least one thread.

Loader workers themselves compute with one thread each (gaugan.data.store). Preprocessing
resizes with PIL in ``data.num_workers`` processes and computes nothing with torch, so the
setting does not concern it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from gaugan.errors import UserError


class ThreadSettingError(UserError, ValueError):
    """``train.num_threads`` or ``OMP_NUM_THREADS`` is not a positive integer."""


@dataclass(frozen=True)
class ThreadSetting:
    """The number chosen and why: recorded with runs so that speeds can be compared."""

    num_threads: int
    source: str  # the setting ("train.num_threads", "--threads"), "OMP_NUM_THREADS" or "derived"
    cores: int  # cores this process may run on
    num_workers: int  # loader worker processes beside it

    def as_dict(self) -> dict[str, int | str]:
        return {"num_threads": self.num_threads, "threads_source": self.source, "cpu_cores": self.cores,
                "loader_workers": self.num_workers}


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def choose_num_threads(requested: int | None, num_workers: int = 0, processes: int = 1,
                       cores: int | None = None, environ: dict[str, str] | None = None,
                       setting: str = "train.num_threads") -> ThreadSetting:
    """The thread count by the rule of this module's docstring, without applying it.

    ``setting`` names where ``requested`` came from, for messages and the record.
    """
    cores = available_cores() if cores is None else cores
    environ = os.environ if environ is None else environ
    if requested is not None:
        if requested < 1:
            raise ThreadSettingError(f"{setting}: got {requested}, expected an integer >= 1")
        return ThreadSetting(requested, setting, cores, num_workers)
    from_environment = environ.get("OMP_NUM_THREADS", "").strip()
    if from_environment:
        if not from_environment.isdigit() or int(from_environment) < 1:
            raise ThreadSettingError(
                f"OMP_NUM_THREADS: got {from_environment!r}, expected an integer >= 1 (or unset it and let "
                f"{setting} decide)")
        return ThreadSetting(int(from_environment), "OMP_NUM_THREADS", cores, num_workers)
    derived = max(1, cores // max(1, processes) - num_workers)
    return ThreadSetting(derived, "derived", cores, num_workers)


def configure_threads(requested: int | None, num_workers: int = 0, processes: int = 1,
                      export: bool = False, setting: str = "train.num_threads") -> ThreadSetting:
    """Choose the thread count (:func:`choose_num_threads`) and apply it to torch.

    ``export``: also set ``OMP_NUM_THREADS``, so that processes started afterwards (the
    benchmark's spawned measurements) compute with the same number.
    """
    chosen = choose_num_threads(requested, num_workers, processes, setting=setting)
    torch.set_num_threads(chosen.num_threads)
    if export:
        os.environ["OMP_NUM_THREADS"] = str(chosen.num_threads)
    return chosen


def cpu_model() -> str:
    """The CPU's model name (lscpu's "Model name", from /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
