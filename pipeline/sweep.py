"""``gaugan sweep``: a set of experiments run in parallel by DVC's queue, one GPU set per
experiment, every run tracked through one MLflow server (README "Sweeps and ablations").

No scheduler of our own. The experiments are DVC experiments (``dvc exp run --queue``), run by
DVC's queue workers (``dvc queue start --jobs N``); each experiment's computing stages claim
their GPUs themselves (pipeline/launch.py). What this module adds around them:

- checks before anything is queued, each naming what to change: a clean workspace (queued
  experiments start from the last commit), overrides that params.yaml accepts, GPUs that
  exist, a tracking server that answers; queue workers left idle by an earlier run are stopped
  and busy ones refused (either would run the experiments without the sweep's settings);
- with a SQLite store, an MLflow server on loopback over it (one server process), so that
  parallel experiments write through it instead of locking the file; the workers get its URI
  as ``MLFLOW_TRACKING_URI``; it is stopped at the end and the store stays where it was;
- the workers' environment, which they keep: that URI, ``CUDA_VISIBLE_DEVICES`` for
  ``--gpus``, this environment's ``dvc`` and ``python`` first on PATH, and the CPU cores
  shared out between the jobs (``OMP_NUM_THREADS``, unless set);
- progress while it waits, then every experiment's outcome (a failed one with its log);
- on Ctrl-C or SIGTERM: the workers take no new experiment, the running ones are interrupted
  as Ctrl-C would (their stages mark their MLflow runs KILLED), the queued ones stay queued.

The queue is reached through :class:`DvcQueue` (the ``dvc`` commands, and DVC's own Python
objects for the status that ``dvc queue status`` prints); tests drive :func:`run_sweep` with a
stand-in.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gaugan.config import Config, ConfigError
from gaugan.errors import UserError
from gaugan.gpu_claims import check_enough, parse_gpu_indices, visible_gpus
from gaugan.threads import available_cores
from pipeline.params import load_config
from pipeline.stage import Terminated
from pipeline.tracking_store import check_store, sqlite_path

SWEEP_DIR = Path(".dvc") / "tmp" / "gaugan-sweep"  # the sweep's own files (git-ignored with .dvc/tmp)
SERVER_START_TIMEOUT_S = 180.0  # a first start creates the database's tables: 30 s on a 2-core VM
SERVER_STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 2.0
WORKER_CHECK_EVERY_S = 30.0
WORKER_GRACE_S = 60.0  # workers register a few seconds after `dvc queue start`
STOP_TIMEOUT_S = 120.0  # how long interrupted experiments get to end (MLflow runs marked KILLED)
DONE = ("Success", "Failed", "Removed")  # the other states: Queued, Running, Moving (SweepTasks)
MISSING_GRACE_S = 30.0
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SweepError(UserError):
    """The sweep cannot start: a dirty workspace, a bad experiment list, GPUs or tracking."""


# --------------------------------------------------------------------------------------
# What to run.


@dataclass(frozen=True)
class PlannedExperiment:
    """One ``dvc exp run --queue``: a name (None: DVC picks one) and its ``-S`` overrides."""

    name: str | None
    overrides: tuple[str, ...]
    origin: str  # where it was written: "ablations.txt:4", or "-S"

    def as_line(self) -> str:
        """The experiment as a line of an experiment file (for resuming)."""
        return " ".join(shlex.quote(word) for word in (self.name or "NAME", *self.overrides))


def read_experiment_file(path: Path) -> list[PlannedExperiment]:
    """Experiments from a file: one per line, ``name section.key=value ...``; ``#`` starts a comment.

    A value with a comma would make DVC queue one experiment per value under one name, so it
    is refused here (``gaugan sweep -S key=a,b`` is the grid form).
    """
    try:
        text = path.read_text()
    except OSError as err:
        raise SweepError(f"--from-file {path}: cannot read it ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise SweepError(f"--from-file {path}: not a text file ({err.reason} at byte {err.start})") from err
    planned: list[PlannedExperiment] = []
    seen: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        origin = f"{path}:{number}"
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:
            raise SweepError(f"{origin}: {err}") from err
        if not words:
            continue
        name, overrides = words[0], tuple(words[1:])
        if "=" in name or not NAME_PATTERN.fullmatch(name) or name.endswith(".lock"):
            raise SweepError(f"{origin}: the first word is the experiment's name (letters, digits, '.', '_', '-'), "
                             f"got {name!r}; write `name section.key=value ...`")
        if name in seen:
            raise SweepError(f"{origin}: the name {name!r} is used already on {seen[name]}; names must differ")
        seen[name] = origin
        for override in overrides:
            if "=" not in override:
                raise SweepError(f"{origin}: {override!r} is not section.key=value")
            if "," in override.split("=", 1)[1]:
                raise SweepError(f"{origin}: {override!r} would queue one experiment per value under one name; "
                                 "write one line per value")
        planned.append(PlannedExperiment(name, overrides, origin))
    if not planned:
        raise SweepError(f"--from-file {path}: lists no experiment (one per line: name section.key=value ...)")
    return planned


def _override_choices(override: str) -> list[str]:
    """``key=a,b`` -> ``[key=a, key=b]``: the grid DVC queues for one ``-S``."""
    key, value = override.split("=", 1) if "=" in override else (override, "")
    return [f"{key}={choice}" for choice in value.split(",")] if "," in value else [override]


def _params_overrides(overrides: Sequence[str], params: Path) -> list[str]:
    """The overrides of params.yaml: ``key=value`` or ``params.yaml:key=value``, as DVC takes them
    (``launch.yaml:train_launcher=...`` sets another file, which DVC checks itself)."""
    chosen = []
    for override in overrides:
        target = override.partition("=")[0].rpartition(":")[0]
        if not target or target == params.name:
            chosen.append(override.removeprefix(f"{target}:") if target else override)
    return chosen


def check_overrides(planned: Sequence[PlannedExperiment], params: Path) -> list[Config]:
    """Every configuration the experiments will run (each grid point), validated as the stages
    will validate it; an error names the line or option it came from."""
    configs = []
    for experiment in planned:
        choices = map(_override_choices, _params_overrides(experiment.overrides, params))
        for overrides in itertools.product(*choices):
            try:
                configs.append(load_config(params, list(overrides)))
            except ConfigError as err:
                raise SweepError(f"{experiment.origin}: {err}") from err
    return configs


# --------------------------------------------------------------------------------------
# Checks of the machine and the repository.


def check_clean_workspace(root: Path) -> list[str]:
    """Refuse uncommitted changes to tracked files; return the untracked files (a warning).

    Queued experiments start from the last commit, and their MLflow runs name it
    (``git.commit``, ``dvc.baseline_rev``): a change that is not committed would run without
    a record of it. Files git does not track do not reach the experiments at all.
    """
    try:
        result = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SweepError(f"{root}: cannot run git ({err}); gaugan sweep needs the project's git repository") from err
    if result.returncode != 0:
        raise SweepError(f"{root}: not a git repository ({result.stderr.strip()}); gaugan sweep queues DVC "
                         "experiments, which start from a commit")
    if not (root / ".dvc").is_dir():
        raise SweepError(f"{root}: not the root of a DVC project (no .dvc folder); run gaugan sweep in the "
                         "project's root folder")
    entries = [(line[:2], line[3:]) for line in result.stdout.splitlines() if line.strip()]
    changed = [name for state, name in entries if state != "??"]
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise SweepError(f"the workspace has uncommitted changes ({shown}): queued experiments start from the last "
                         "commit, and their MLflow runs name it (git.commit); commit them (git commit -a) or put them "
                         "aside (git stash), then run gaugan sweep again")
    return [name for state, name in entries if state == "??"]


@dataclass(frozen=True)
class GpuPlan:
    """The GPUs the workers may use (empty: the experiments run on the CPU)."""

    gpus: tuple[str, ...]
    per_experiment: int  # the most GPUs one experiment claims (train.gpus)

    @property
    def max_parallel(self) -> int:
        return max(1, len(self.gpus) // self.per_experiment) if self.gpus else 1


def plan_gpus(requested: str | None, device_count: int, cuda_visible_devices: str | None,
              configs: Iterable[Config]) -> GpuPlan:
    """``--gpus`` checked against the GPUs this process sees, and ``train.gpus`` against those."""
    on_gpu = [cfg for cfg in configs if cfg.train.device != "cpu"]
    visible_note = f" (CUDA_VISIBLE_DEVICES={cuda_visible_devices})" if cuda_visible_devices is not None else ""
    if requested is not None and device_count == 0:
        raise SweepError(f"--gpus {requested}: no GPU is visible{visible_note} (torch sees no CUDA device); leave "
                         "--gpus out to run on the CPU")
    names = visible_gpus(device_count, cuda_visible_devices)
    if requested is not None:
        indices = parse_gpu_indices(requested)
        missing = [index for index in indices if index >= len(names)]
        if missing:
            raise SweepError(f"--gpus {requested}: GPU {missing[0]} does not exist; {len(names)} GPU(s) are "
                             f"visible{visible_note}, indices 0-{len(names) - 1}")
        names = tuple(names[index] for index in indices)
        if not on_gpu:
            raise SweepError(f"--gpus {requested}: every experiment runs on the CPU (train.device: cpu); leave --gpus "
                             "out, or set train.device to auto or cuda")
    if not on_gpu or not names:
        return GpuPlan((), 1)
    per_experiment = max(cfg.train.gpus for cfg in on_gpu)
    where = f" to the sweep (--gpus {requested})" if requested is not None else visible_note
    check_enough(per_experiment, names, "train.gpus", where)
    return GpuPlan(names, per_experiment)


@dataclass(frozen=True)
class TrackingPlan:
    """Where the experiments' MLflow runs go."""

    serve: Path | None  # a SQLite file the sweep serves on loopback
    worker_uri: str | None  # MLFLOW_TRACKING_URI for the workers (None: leave theirs)
    store: str  # the store, for messages


def plan_tracking(cfg: Config, root: Path, environ: Mapping[str, str]) -> TrackingPlan:
    """The store the experiments use, and whether the sweep must serve it; a server that does not
    answer, or a SQLite store the workers would open themselves, is an error naming the setting."""
    if not cfg.tracking.enabled:
        return TrackingPlan(None, None, "none (tracking.enabled: false)")
    configured = cfg.tracking.tracking_uri
    if configured and configured.startswith("sqlite:"):
        raise SweepError(
            f"tracking.tracking_uri: {configured} is a SQLite file that every experiment would write to at once "
            "(\"database is locked\"); set tracking.tracking_uri to null and export "
            f"MLFLOW_TRACKING_URI={configured} (the sweep then serves that file to its experiments), or name an "
            "MLflow server")
    uri = configured or environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    check_store(uri)  # a server that does not answer, an unusable file: a TrackingError naming the URI
    database = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if uri.startswith("sqlite:") and database is None:
        raise SweepError(f"MLFLOW_TRACKING_URI: {uri} is not a SQLite file the sweep could serve; name a file "
                         "(sqlite:////absolute/path.db) or an MLflow server")
    if database is not None:
        return TrackingPlan(database.resolve(), None, uri)
    return TrackingPlan(None, None if configured else uri, uri)


def worker_environment(environ: Mapping[str, str], tracking_uri: str | None, gpus: Sequence[str], jobs: int,
                       cores: int) -> dict[str, str]:
    """The environment DVC's queue workers start with, and keep for every experiment they run."""
    env = dict(environ)
    # `dvc queue start` spawns the workers as `dvc` found on PATH, and stages run `python`.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if tracking_uri is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // jobs)))
    return env


# --------------------------------------------------------------------------------------
# The tracking server.


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TrackingServer:
    """``mlflow server`` on loopback over one SQLite file, in its own session (a Ctrl-C in the
    terminal does not stop it before the interrupted runs are marked KILLED)."""

    def __init__(self, database: Path, artifacts: Path, log_path: Path) -> None:
        self.database = database
        self.artifacts = artifacts
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.uri: str | None = None

    def command(self, port: int) -> list[str]:
        # One worker process writes the file; artifacts go where the stages put them (pipeline/tracking.py).
        return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.database}",
                "--default-artifact-root", self.artifacts.as_uri(), "--no-serve-artifacts",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]

    def start(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner beside it
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(port), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                self.process = None
                raise SweepError(f"the MLflow server over {self.database} stopped at start: {tail[0]} (its log: "
                                 f"{self.log_path}); fix the store, or set MLFLOW_TRACKING_URI to a running server")
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
                continue
            self.uri = uri
            return uri
        self.stop()
        raise SweepError(f"the MLflow server over {self.database} did not answer within {timeout_s:.0f} s (its log: "
                         f"{self.log_path}); set MLFLOW_TRACKING_URI to a running server instead")

    def stop(self, timeout_s: float = SERVER_STOP_TIMEOUT_S) -> None:
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None

    def __enter__(self) -> TrackingServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------
# DVC's queue.


@dataclass(frozen=True)
class Task:
    """One experiment of DVC's queue, as ``dvc queue status`` lists it."""

    rev: str  # the queue entry's commit
    name: str
    status: str  # Queued, Running, Success, Failed
    log: Path | None = None  # the experiment's output (dvc queue logs NAME)


class Queue(Protocol):
    """What the sweep does with DVC's queue (:class:`DvcQueue`; tests use a stand-in)."""

    def queue(self, experiment: PlannedExperiment) -> None: ...
    def experiment_names(self) -> set[str]: ...
    def tasks(self) -> list[Task]: ...
    def workers(self) -> tuple[int, int]: ...
    def start_workers(self, jobs: int, env: Mapping[str, str]) -> None: ...
    def stop_workers(self) -> None: ...
    def interrupt(self, names: Sequence[str], force: bool = False) -> None: ...


def run_dvc(args: Sequence[str], root: Path, env: Mapping[str, str] | None = None,
            timeout_s: float = 600.0) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``root`` (this environment's dvc); a :class:`SweepError` with its error when it fails.

    Its output goes through files, not pipes: the queue workers that ``dvc queue start``
    leaves running inherit them, and a pipe would stay open until the last worker ends.
    """
    command = [sys.executable, "-m", "dvc", *args]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        try:
            returncode = subprocess.run(command, cwd=root, env=None if env is None else dict(env),
                                        stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, timeout=timeout_s,
                                        check=False).returncode
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SweepError(f"`dvc {shlex.join(args)}` failed: {err}") from err
        stdout.seek(0)
        stderr.seek(0)
        result = subprocess.CompletedProcess(command, returncode, stdout.read().decode(errors="replace"),
                                             stderr.read().decode(errors="replace"))
    if result.returncode != 0:
        message = " ".join(line.strip() for line in result.stderr.strip().splitlines() if line.strip())
        raise SweepError(f"`dvc {shlex.join(args)}` exited with {result.returncode}: {message}")
    return result


class DvcQueue:
    """DVC's experiment queue in ``root``: actions through the ``dvc`` commands, the status
    from DVC's own queue object (the rows ``dvc queue status`` prints, without a new process
    every two seconds)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run_dvc(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        return run_dvc(args, self.root, env)

    def queue(self, experiment: PlannedExperiment) -> None:
        args = ["exp", "run", "--queue"]
        if experiment.name:
            args += ["--name", experiment.name]
        for override in experiment.overrides:
            args += ["--set-param", override]
        try:
            self.run_dvc(args)
        except SweepError as err:
            raise SweepError(f"{experiment.origin}: {err}") from err

    def experiment_names(self) -> set[str]:
        """Experiments of the current commit (``dvc exp list``), whose names are taken."""
        output = self.run_dvc(["exp", "list", "--name-only"]).stdout
        return {line.strip() for line in output.splitlines() if line.strip()}

    @contextlib.contextmanager
    def _celery_queue(self) -> Iterator[Any]:
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            yield repo.experiments.celery_queue

    def tasks(self) -> list[Task]:
        with self._celery_queue() as queue:
            rows = []
            for row in queue.status():
                info = queue.proc.get(row["rev"])
                log = Path(info.stdout) if info is not None and info.stdout else None
                rows.append(Task(row["rev"], row.get("name") or row["rev"][:7], row["status"], log))
            return rows

    def workers(self) -> tuple[int, int]:
        """Queue workers alive in this repository: (running an experiment, idle)."""
        with self._celery_queue() as queue:
            status = queue.worker_status()
        busy = sum(1 for tasks in status.values() if tasks)
        return busy, len(status) - busy

    def start_workers(self, jobs: int, env: Mapping[str, str]) -> None:
        self.run_dvc(["queue", "start", "--jobs", str(jobs)], env=env)

    def stop_workers(self) -> None:
        self.run_dvc(["queue", "stop"])

    def interrupt(self, names: Sequence[str], force: bool = False) -> None:
        """Ctrl-C (SIGINT) to the running experiments ``names``; SIGKILL with ``force``."""
        with contextlib.suppress(SweepError):  # one that ended meanwhile is no longer running
            self.run_dvc(["queue", "kill", *(["--force"] if force else []), *names])


# --------------------------------------------------------------------------------------
# Waiting, and stopping.


def progress_line(tasks: Sequence[Task], elapsed_s: float, width: int = 24) -> str:
    """``[#########-----] 3/8 done (1 failed), 2 running, 3 queued, 12m04s``."""
    counts = Counter(task.status for task in tasks)
    done = sum(counts[status] for status in DONE)
    filled = round(width * done / len(tasks)) if tasks else width
    minutes, seconds = divmod(int(elapsed_s), 60)
    return (f"[{'#' * filled}{'-' * (width - filled)}] {done}/{len(tasks)} done ({counts['Failed']} failed), "
            f"{counts['Running']} running, {counts['Queued'] + counts['Moving']} queued, {minutes}m{seconds:02d}s")


class SweepTasks:
    """The sweep's experiments as DVC's queue lists them, in queue order.

    DVC's status misses an experiment for a moment while a worker takes it from the queue (seen
    between two polls): one missing is ``Moving`` (not finished) until it has been missing for
    ``grace_s``, and only then ``Removed`` (``dvc queue remove``), so that the wait never ends
    while an experiment is starting.
    """

    def __init__(self, queue: Queue, revs: Sequence[str], clock: Callable[[], float] = time.monotonic,
                 grace_s: float = MISSING_GRACE_S) -> None:
        self.queue, self.revs, self.clock, self.grace_s = queue, list(revs), clock, grace_s
        self.missing_since: dict[str, float] = {}

    def poll(self) -> list[Task]:
        listed = {task.rev: task for task in self.queue.tasks()}
        now = self.clock()
        tasks = []
        for rev in self.revs:
            if rev in listed:
                self.missing_since.pop(rev, None)
                tasks.append(listed[rev])
                continue
            since = self.missing_since.setdefault(rev, now)
            tasks.append(Task(rev, rev[:7], "Removed" if now - since >= self.grace_s else "Moving"))
        return tasks


@dataclass(frozen=True)
class WaitResult:
    tasks: list[Task]  # the sweep's experiments, in queue order, as they ended
    seconds: float
    workers_lost: bool  # the workers stopped while experiments were left


def wait_for_tasks(queue: Queue, revs: Sequence[str], progress: Callable[[list[Task], float], None],
                   poll_interval_s: float = POLL_INTERVAL_S, worker_check_every_s: float = WORKER_CHECK_EVERY_S,
                   worker_grace_s: float = WORKER_GRACE_S, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> WaitResult:
    """Poll the queue until every one of ``revs`` ended; ``progress(tasks, elapsed)`` after every
    poll. Gives up when experiments wait in the queue, none runs, and no worker answered twice in
    a row, ``worker_check_every_s`` apart. (A busy worker may not answer DVC's worker status in
    time on a loaded machine, so a running experiment always counts as a worker at work.)"""
    view = SweepTasks(queue, revs, clock)
    started = clock()
    next_worker_check = started + worker_grace_s
    missed = 0
    while True:
        tasks = view.poll()
        now = clock()
        progress(tasks, now - started)
        if all(task.status in DONE for task in tasks):
            return WaitResult(tasks, now - started, False)
        if any(task.status in ("Running", "Moving") for task in tasks):
            missed = 0
        elif now >= next_worker_check:
            missed = missed + 1 if sum(queue.workers()) == 0 else 0
            if missed >= 2:
                return WaitResult(tasks, now - started, True)
            next_worker_check = now + worker_check_every_s
        sleep(poll_interval_s)


def stop_idle_workers(queue: Queue, say: Callable[[str], None], timeout_s: float = WORKER_GRACE_S,
                      poll_interval_s: float = POLL_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> None:
    """Workers already running would take the sweep's experiments with their own environment
    (no tracking server, every GPU): idle ones (a queue that just finished) are stopped, busy
    ones are an error."""
    busy, idle = queue.workers()
    if busy:
        raise SweepError(f"{busy} DVC queue worker(s) are running experiments in this repository (dvc queue status); "
                         "they would take the sweep's experiments without its tracking server and GPU settings: wait "
                         "for them to finish, or stop them (dvc queue stop), then run gaugan sweep again")
    if not idle:
        return
    say(f"stopping {idle} idle DVC queue worker(s) left from an earlier run (they would not see the sweep's settings)")
    queue.stop_workers()
    deadline = clock() + timeout_s
    while sum(queue.workers()):
        if clock() > deadline:
            raise SweepError(f"DVC queue workers are still running {timeout_s:.0f} s after `dvc queue stop` (dvc "
                             "queue status); wait for them to end, then run gaugan sweep again")
        sleep(poll_interval_s)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while the sweep stops its experiments (a second Ctrl-C would
    leave them running without their tracking server)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = [signal.signal(sig, signal.SIG_IGN) for sig in signals]
    try:
        yield
    finally:
        for sig, handler in zip(signals, previous):
            signal.signal(sig, handler)


def stop_running(queue: Queue, revs: Sequence[str], say: Callable[[str], None], timeout_s: float = STOP_TIMEOUT_S,
                 poll_interval_s: float = POLL_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> tuple[list[Task], list[str]]:
    """After Ctrl-C: no new experiment starts, the running ones (also one a worker was just
    taking) are interrupted (SIGINT, as Ctrl-C in their terminal would: their MLflow runs end
    KILLED) and, after ``timeout_s``, killed. Returns the sweep's experiments as they are then,
    and the names interrupted."""
    queue.stop_workers()  # each worker finishes (here: ends) its experiment and takes no other
    view = SweepTasks(queue, revs, clock, grace_s=min(timeout_s, MISSING_GRACE_S))
    interrupted: list[str] = []
    deadline = clock() + timeout_s
    while True:
        tasks = view.poll()
        running = [task.name for task in tasks if task.status == "Running" and task.name not in interrupted]
        if running:
            say(f"interrupting {len(running)} running experiment(s): {', '.join(running)} (their MLflow runs end "
                "KILLED)")
            queue.interrupt(running)
            interrupted += running
        left = [task for task in tasks if task.status in ("Running", "Moving")]
        if not left:
            return tasks, interrupted
        if clock() >= deadline:
            stuck = [task.name for task in left if task.status == "Running"]
            say(f"{', '.join(stuck) or 'the experiments'} did not stop within {timeout_s:.0f} s; killing them")
            if stuck:
                queue.interrupt(stuck, force=True)
            return view.poll(), interrupted
        sleep(poll_interval_s)


def resume_advice(tasks: Sequence[Task], interrupted: Sequence[str], planned: Mapping[str, PlannedExperiment],
                  jobs: int) -> list[str]:
    """What to type to go on after an interrupted sweep."""
    lines = []
    queued = [task.name for task in tasks if task.status == "Queued"]
    if queued:
        lines.append(f"{len(queued)} experiment(s) stay queued ({', '.join(queued)}): `gaugan sweep --jobs {jobs}` "
                     "runs them")
    if interrupted:
        lines.append(f"{len(interrupted)} interrupted experiment(s) start over (a queued experiment's temporary "
                     f"copy is deleted with its checkpoint): `dvc queue remove {' '.join(interrupted)}`, then queue "
                     "them again with `gaugan sweep --from-file FILE`, FILE holding:")
        lines += [f"    {planned[name].as_line()}" if name in planned else f"    {name} <its overrides>"
                  for name in interrupted]
    return lines


def failure_note(task: Task) -> str:
    """Why a failed experiment failed: its stage's one-line error (``train: ...``), else DVC's."""
    if task.log is None or not task.log.is_file():
        return ""
    lines = [line.strip() for line in task.log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [(index, match[1]) for index, line in enumerate(lines)
              if (match := re.match(r"ERROR: failed to reproduce '([\w-]+)'", line))]
    if not errors:
        return next((line for line in reversed(lines) if line.startswith("ERROR")), "")
    index, stage = errors[0]
    own = [line for line in lines[:index] if line.startswith(f"{stage}: ")]
    return own[-1] if own else lines[index]


def rebuild_report(root: Path, env: Mapping[str, str]) -> str | None:
    """``dvc repro --force --single-item report`` over every run; None, or why it failed."""
    try:
        run_dvc(["repro", "--force", "--single-item", "report"], root, env)
    except SweepError as err:
        return str(err)
    return None


# --------------------------------------------------------------------------------------
# The sweep.


@dataclass(frozen=True)
class SweepResult:
    tasks: list[Task]  # the sweep's experiments as they ended
    seconds: float
    workers_lost: bool


def run_sweep(queue: Queue, planned: Sequence[PlannedExperiment], jobs: int, tracking: TrackingPlan, gpus: GpuPlan,
              server: TrackingServer | None, say: Callable[[str], None],
              progress: Callable[[list[Task], float], None], environ: Mapping[str, str] | None = None,
              cores: int | None = None, poll_interval_s: float | None = None) -> SweepResult:
    """Queue ``planned`` (with those already queued), start ``jobs`` workers and wait for them.

    ``server`` (the SQLite store of ``tracking`` served on loopback) runs from before the
    first experiment is queued until the last one ended, also after Ctrl-C, so that
    interrupted runs are marked KILLED through it.
    """
    environ = os.environ if environ is None else environ
    poll_interval_s = POLL_INTERVAL_S if poll_interval_s is None else poll_interval_s
    stop_idle_workers(queue, say, poll_interval_s=poll_interval_s)
    taken = sorted(queue.experiment_names() & {experiment.name for experiment in planned if experiment.name})
    if taken:
        origin = next(experiment.origin for experiment in planned if experiment.name == taken[0])
        raise SweepError(f"{origin}: an experiment named {taken[0]!r} exists already (dvc exp list); rename it, or "
                         f"remove the old one (dvc exp remove {taken[0]})")
    if not planned and not any(task.status == "Queued" for task in queue.tasks()):
        raise SweepError("nothing to run: the DVC queue is empty; give --from-file FILE (one experiment per line: "
                         "name section.key=value ...) or -S section.key=value")
    with contextlib.ExitStack() as stack:
        uri = tracking.worker_uri
        if server is not None:
            say(f"starting an MLflow server on loopback over {server.database} (its log: {server.log_path})")
            stack.enter_context(server)
            started = time.monotonic()
            uri = server.start()
            say(f"the MLflow server answers at {uri} after {time.monotonic() - started:.0f} s")
        for experiment in planned:
            queue.queue(experiment)
        revs = [task.rev for task in queue.tasks() if task.status == "Queued"]
        queued_before = len(revs) - len(planned)
        say(f"{len(revs)} experiment(s) to run" + (f" ({queued_before} queued before)" if queued_before > 0 else "")
            + f", {jobs} at a time" + (f" on GPU(s) {','.join(gpus.gpus)}" if gpus.gpus else " on the CPU")
            + (f", tracked through {uri}" if uri else ""))
        env = worker_environment(environ, uri, gpus.gpus, jobs, available_cores() if cores is None else cores)
        queue.start_workers(jobs, env)
        try:
            waited = wait_for_tasks(queue, revs, progress, poll_interval_s=poll_interval_s)
        except (KeyboardInterrupt, Terminated):
            with signals_ignored():
                say("interrupted: stopping the workers; queued experiments stay queued")
                tasks, running = stop_running(queue, revs, say, poll_interval_s=poll_interval_s)
                stack.close()  # the server, once the interrupted runs are marked KILLED
                named = {experiment.name: experiment for experiment in planned if experiment.name}
                for line in resume_advice(tasks, running, named, jobs):
                    say(line)
            raise
    return SweepResult(waited.tasks, waited.seconds, waited.workers_lost)
