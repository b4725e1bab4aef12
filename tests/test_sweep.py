"""gaugan sweep (pipeline/sweep.py) without DVC running anything: the experiment list, the checks
that name what to change, the orchestration around a stand-in queue (a failed experiment, Ctrl-C),
the tracking server's start and stop. The real queue and server: tests/test_e2e_dvc.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gaugan.config import replace
from gaugan.gpu_claims import GpuClaimError
from pipeline import sweep
from pipeline.cli import app
from pipeline.sweep import (
    GpuPlan,
    PlannedExperiment,
    SweepError,
    Task,
    TrackingPlan,
    TrackingServer,
    check_clean_workspace,
    check_overrides,
    plan_gpus,
    plan_tracking,
    progress_line,
    read_experiment_file,
    run_sweep,
    worker_environment,
)
from pipeline.tracking_store import TrackingError
from tests.http_support import serving

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding params.yaml (tracking off, CPU) and nothing else."""
    params = yaml.safe_load(PARAMS.read_text())
    params["tracking"]["enabled"] = False
    params["train"]["device"] = "cpu"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "-qm", "params")
    (tmp_path / ".dvc").mkdir()  # what `dvc init` leaves that the checks look at
    return tmp_path


# --------------------------------------------------------------------------------------
# What to run.


def test_experiment_file(tmp_path: Path) -> None:
    path = tmp_path / "ablations.txt"
    path.write_text("# the paper's\n\nngf-32 generator.ngf=32   # wider\n"
                    "vae-on encoder.use_vae=true loss.lambda_kld=0.1\n"
                    "same\nquoted 'data.root=/data sets/raw'\n")
    planned = read_experiment_file(path)
    assert [(p.name, p.overrides) for p in planned] == [
        ("ngf-32", ("generator.ngf=32",)), ("vae-on", ("encoder.use_vae=true", "loss.lambda_kld=0.1")),
        ("same", ()), ("quoted", ("data.root=/data sets/raw",))]
    assert planned[1].origin == f"{path}:4" and planned[3].as_line() == "quoted 'data.root=/data sets/raw'"


@pytest.mark.parametrize(("text", "message"), [
    ("generator.ngf=32\n", r":1: the first word is the experiment's name"),
    ("a generator.ngf=8\nb x=1\na generator.ngf=16\n", r":3: the name 'a' is used already on .*:1"),
    ("a generator.ngf\n", r":1: 'generator.ngf' is not section.key=value"),
    ("a generator.ngf=8,16\n", r":1: 'generator.ngf=8,16' would queue one experiment per value"),
    ("# nothing\n", r"lists no experiment"),
    ("a 'unclosed\n", r":1: No closing quotation"),
])
def test_experiment_file_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "ablations.txt"
    path.write_text(text)
    with pytest.raises(SweepError, match=message):
        read_experiment_file(path)
    with pytest.raises(SweepError, match="--from-file .*missing.txt: cannot read it"):
        read_experiment_file(tmp_path / "missing.txt")
    with pytest.raises(SweepError, match="--from-file .*: cannot read it"):
        read_experiment_file(tmp_path)  # a folder
    (tmp_path / "binary.txt").write_bytes(b"a generator.ngf=8\n\xff\xfe")
    with pytest.raises(SweepError, match="binary.txt: not a text file"):
        read_experiment_file(tmp_path / "binary.txt")


def test_overrides_are_checked_against_params_before_anything_is_queued() -> None:
    good = [PlannedExperiment("a", ("generator.ngf=32",), "list.txt:1"),
            PlannedExperiment(None, ("generator.ngf=8,16", "train.gpus=2"), "-S")]
    configs = check_overrides(good, PARAMS)
    assert [(c.generator.ngf, c.train.gpus) for c in configs] == [(32, 1), (8, 2), (16, 2)]
    two_gpus = PlannedExperiment("ddp", ("launch.yaml:train_launcher=torchrun --nproc_per_node=2",
                                         "params.yaml:train.gpus=2"), "list.txt:3")
    assert [c.train.gpus for c in check_overrides([two_gpus], PARAMS)] == [2]  # DVC's file:key form
    with pytest.raises(SweepError, match=r"list.txt:2: .*unknown key 'generator.ngff'"):
        check_overrides([good[0], PlannedExperiment("b", ("generator.ngff=3",), "list.txt:2")], PARAMS)
    with pytest.raises(SweepError, match=r"^-S: .*generator.ngf: got 'wide'"):
        check_overrides([PlannedExperiment(None, ("generator.ngf=8,wide",), "-S")], PARAMS)


# --------------------------------------------------------------------------------------
# Checks.


def test_a_dirty_workspace_is_refused_untracked_files_are_listed(repo: Path) -> None:
    assert check_clean_workspace(repo) == []
    (repo / "notes.txt").write_text("mine")
    assert check_clean_workspace(repo) == ["notes.txt"]
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n")
    with pytest.raises(SweepError, match=r"uncommitted changes \(params.yaml\): queued experiments start from the "
                                         r"last commit.*git commit -a"):
        check_clean_workspace(repo)
    with pytest.raises(SweepError, match="not a git repository"):
        check_clean_workspace(repo.parent)
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text()[:-1])
    (repo / ".dvc").rmdir()
    with pytest.raises(SweepError, match="not the root of a DVC project"):
        check_clean_workspace(repo)


def test_gpus_are_checked_and_named_as_cuda_names_them(params_config) -> None:
    gpu = replace(params_config, train={"device": "auto"})
    assert plan_gpus(None, 4, None, [gpu]) == GpuPlan(("0", "1", "2", "3"), 1)
    assert plan_gpus("1-2", 3, "2,3,5", [gpu]).gpus == ("3", "5")  # indices of the GPUs this process sees
    assert plan_gpus(None, 8, None, [replace(gpu, train={"gpus": 2})]).max_parallel == 4
    assert plan_gpus(None, 4, None, [replace(gpu, train={"device": "cpu"})]) == GpuPlan((), 1)
    with pytest.raises(SweepError, match=r"--gpus 0-7: GPU 4 does not exist; 4 GPU\(s\) are visible, indices 0-3"):
        plan_gpus("0-7", 4, None, [gpu])
    with pytest.raises(SweepError, match=r"--gpus 0: no GPU is visible \(CUDA_VISIBLE_DEVICES=\)"):
        plan_gpus("0", 0, "", [gpu])
    with pytest.raises(GpuClaimError, match=r"train.gpus: asks for 4 GPU\(s\) but 2 are visible \(0, 1\) to the "
                                            r"sweep \(--gpus 0-1\)"):
        plan_gpus("0-1", 8, None, [gpu, replace(gpu, train={"gpus": 4})])
    with pytest.raises(SweepError, match=r"--gpus 0: every experiment runs on the CPU \(train.device: cpu\)"):
        plan_gpus("0", 2, None, [replace(gpu, train={"device": "cpu"})])
    with pytest.raises(GpuClaimError, match="--gpus: got '0-x'"):
        plan_gpus("0-x", 8, None, [gpu])


def test_tracking_plan(params_config, tmp_path: Path) -> None:
    root = tmp_path
    assert plan_tracking(params_config, root, {}) == TrackingPlan(root / "mlflow.db", None,
                                                                  f"sqlite:///{root / 'mlflow.db'}")
    other = tmp_path / "elsewhere" / "runs.db"
    assert plan_tracking(params_config, root, {"MLFLOW_TRACKING_URI": f"sqlite:///{other}"}).serve == other
    assert plan_tracking(replace(params_config, tracking={"enabled": False}), root, {}).serve is None
    with pytest.raises(SweepError, match=r"tracking.tracking_uri: sqlite:///x.db is a SQLite file.*set "
                                         r"tracking.tracking_uri to null"):
        plan_tracking(replace(params_config, tracking={"tracking_uri": "sqlite:///x.db"}), root, {})

    import http.server

    class Answers(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the handler's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    with serving(Answers) as server:
        plan = plan_tracking(params_config, root, {"MLFLOW_TRACKING_URI": server.url})
        assert plan == TrackingPlan(None, server.url, server.url)
        port = server.server_address[1]
    with pytest.raises(TrackingError, match=rf"MLflow tracking server http://127.0.0.1:{port} does not answer"):
        plan_tracking(params_config, root, {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})


def test_worker_environment() -> None:
    env = worker_environment({"PATH": "/usr/bin", "HOME": "/h"}, "http://127.0.0.1:5", ("2", "3"), jobs=2, cores=8)
    assert env["PATH"] == f"{Path(sys.executable).parent}{os.pathsep}/usr/bin" and env["HOME"] == "/h"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5" and env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["OMP_NUM_THREADS"] == "4"
    env = worker_environment({"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "http://x"}, None, (), jobs=8, cores=2)
    assert env["OMP_NUM_THREADS"] == "1" and env["MLFLOW_TRACKING_URI"] == "http://x"
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_progress_line() -> None:
    tasks = [Task("a", "a", "Success"), Task("b", "b", "Failed"), Task("c", "c", "Running"), Task("d", "d", "Queued")]
    assert progress_line(tasks, 724.0, width=8) == "[####----] 2/4 done (1 failed), 1 running, 1 queued, 12m04s"


# --------------------------------------------------------------------------------------
# The orchestration, around a stand-in for DVC's queue.


class FakeQueue:
    """DVC's queue, scripted: each poll after the workers start moves the experiments on."""

    def __init__(self, outcomes: Mapping[str, str], queued_before: Sequence[str] = (), busy: int = 0,
                 idle: int = 0, taken: set[str] = frozenset(), interrupt_on_poll: int | None = None) -> None:
        self.outcomes = dict(outcomes)  # name -> final status
        self.states = {name: "Queued" for name in queued_before}
        self.busy, self.idle, self.taken = busy, idle, set(taken)
        self.interrupt_on_poll = interrupt_on_poll
        self.calls: list[str] = []
        self.env: dict[str, str] = {}
        self.polls = 0
        self.working = False  # workers started and not stopped: they take queued experiments

    def queue(self, experiment: PlannedExperiment) -> None:
        self.calls.append(f"queue {experiment.name}")
        self.states[experiment.name] = "Queued"

    def experiment_names(self) -> set[str]:
        return self.taken

    def tasks(self) -> list[Task]:
        if self.working:
            self.polls += 1
            if self.polls == self.interrupt_on_poll:
                raise KeyboardInterrupt
            for name, state in self.states.items():
                if state == "Queued" and self.polls >= 2 and self.working:
                    self.states[name] = "Running"
                elif state == "Running" and self.interrupt_on_poll is None:
                    self.states[name] = self.outcomes.get(name, "Success")
        return [Task(f"rev-{name}", name, state, Path(f"/logs/{name}.out")) for name, state in self.states.items()]

    def workers(self) -> tuple[int, int]:
        return self.busy, self.idle

    def start_workers(self, jobs: int, env: Mapping[str, str]) -> None:
        self.calls.append("start")
        self.env = dict(env)
        self.working = True

    def stop_workers(self) -> None:
        self.calls.append("stop")
        self.idle = 0
        self.working = False

    def interrupt(self, names: Sequence[str], force: bool = False) -> None:
        self.calls.append(f"interrupt {','.join(names)}")
        for name in names:
            self.states[name] = "Failed"


class FakeTrackingServer:
    database = Path("/repo/mlflow.db")
    log_path = Path("/repo/.dvc/tmp/gaugan-sweep/mlflow.log")

    def __init__(self, queue: FakeQueue) -> None:
        self.queue = queue

    def start(self) -> str:
        self.queue.calls.append("server start")
        return "http://127.0.0.1:1"

    def __enter__(self) -> FakeTrackingServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.queue.calls.append("server stop")


PLANNED = [PlannedExperiment("a", ("generator.ngf=8",), "list:1"),
           PlannedExperiment("b", ("generator.ngf=4",), "list:2"), PlannedExperiment("c", (), "list:3")]
SERVED = TrackingPlan(Path("/repo/mlflow.db"), None, "sqlite:////repo/mlflow.db")


def sweep_with(queue: FakeQueue, planned=PLANNED, said=None):
    said = [] if said is None else said
    return run_sweep(queue, planned, 2, SERVED, GpuPlan(("0", "1"), 1), FakeTrackingServer(queue), said.append,
                     lambda tasks, elapsed: None, environ={"PATH": "/bin"}, cores=2, poll_interval_s=0.001)


def test_one_failed_experiment_does_not_stop_the_others() -> None:
    queue = FakeQueue({"b": "Failed"}, queued_before=["old"])
    said = []
    result = sweep_with(queue, said=said)
    assert [(t.name, t.status) for t in result.tasks] == [
        ("old", "Success"), ("a", "Success"), ("b", "Failed"), ("c", "Success")]
    assert result.tasks[2].log == Path("/logs/b.out") and not result.workers_lost
    assert queue.calls == ["server start", "queue a", "queue b", "queue c", "start", "server stop"]
    assert queue.env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1" and queue.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert any("4 experiment(s) to run (1 queued before), 2 at a time on GPU(s) 0,1" in line for line in said)


def test_ctrl_c_interrupts_the_running_ones_keeps_the_queued_and_says_how_to_resume() -> None:
    queue = FakeQueue({}, interrupt_on_poll=3)
    said = []
    with pytest.raises(KeyboardInterrupt):
        sweep_with(queue, said=said)
    # No new experiment starts, the running ones get Ctrl-C, and only then does the server stop
    # (the interrupted stages mark their MLflow runs KILLED through it).
    assert queue.calls[-3:] == ["stop", "interrupt a,b,c", "server stop"]
    text = "\n".join(said)
    assert "interrupting 3 running experiment(s): a, b, c (their MLflow runs end KILLED)" in text
    assert "`dvc queue remove a b c`" in text and "    b generator.ngf=4" in text and "    c\n" not in text


def test_ctrl_c_leaves_queued_experiments_queued() -> None:
    queue = FakeQueue({}, interrupt_on_poll=1)  # before any started
    said = []
    with pytest.raises(KeyboardInterrupt):
        sweep_with(queue, said=said)
    assert queue.calls[-2:] == ["stop", "server stop"]
    assert any("3 experiment(s) stay queued (a, b, c): `gaugan sweep --jobs 2` runs them" in line for line in said)


def test_workers_already_there() -> None:
    queue = FakeQueue({}, idle=2)
    said = []
    sweep_with(queue, said=said)
    assert queue.calls[0] == "stop" and "stopping 2 idle DVC queue worker(s)" in said[0]
    with pytest.raises(SweepError, match=r"1 DVC queue worker\(s\) are running experiments.*dvc queue stop"):
        sweep_with(FakeQueue({}, busy=1))


def test_names_taken_and_nothing_to_run() -> None:
    with pytest.raises(SweepError, match=r"list:2: an experiment named 'b' exists already.*dvc exp remove b"):
        sweep_with(FakeQueue({}, taken={"b"}))
    with pytest.raises(SweepError, match="nothing to run: the DVC queue is empty; give --from-file"):
        sweep_with(FakeQueue({}), planned=[])


def test_gone_workers_end_the_wait_busy_ones_do_not() -> None:
    class Stuck(FakeQueue):
        def tasks(self) -> list[Task]:
            return [Task("rev-a", "a", "Queued")]

    result = sweep.wait_for_tasks(Stuck({}), ["rev-a"], lambda tasks, elapsed: None, poll_interval_s=0.001,
                                  worker_check_every_s=0.0, worker_grace_s=0.0)
    assert result.workers_lost and result.tasks[0].status == "Queued"
    # A worker busy training may not answer DVC's worker status on a loaded machine (seen on the
    # 2-core VM): while an experiment runs, the wait goes on.
    busy = Scripted([[("a", "Running"), ("b", "Queued")]] * 5 + [[("a", "Success"), ("b", "Success")]])
    busy.workers = lambda: (0, 0)
    result = sweep.wait_for_tasks(busy, ["rev-a", "rev-b"], lambda tasks, elapsed: None, sleep=lambda s: None,
                                  worker_check_every_s=0.0, worker_grace_s=0.0)
    assert not result.workers_lost and [t.status for t in result.tasks] == ["Success", "Success"]


class Scripted:
    """A queue whose status is a script: one list of (name, status) per poll (a name left out:
    DVC's status does not list it then)."""

    def __init__(self, polls: list[list[tuple[str, str]]]) -> None:
        self.polls = iter(polls)
        self.calls: list[str] = []

    def tasks(self) -> list[Task]:
        return [Task(f"rev-{name}", name, status) for name, status in next(self.polls)]

    def workers(self) -> tuple[int, int]:
        return 1, 0

    def stop_workers(self) -> None:
        self.calls.append("stop")

    def interrupt(self, names: Sequence[str], force: bool = False) -> None:
        self.calls.append(f"interrupt {','.join(names)}{' --force' if force else ''}")


def test_an_experiment_that_a_worker_is_taking_is_not_taken_for_done() -> None:
    """DVC's status misses an experiment for a moment while a worker takes it from the queue."""
    queue = Scripted([[("a", "Running"), ("b", "Queued")], [("a", "Success")], [("a", "Success")],
                      [("a", "Success"), ("b", "Running")], [("a", "Success"), ("b", "Success")]])
    seen = []
    ticks = iter(range(100))
    result = sweep.wait_for_tasks(queue, ["rev-a", "rev-b"], lambda tasks, elapsed: seen.append(
        progress_line(tasks, elapsed)), sleep=lambda s: None, clock=lambda: float(next(ticks)))
    assert [t.status for t in result.tasks] == ["Success", "Success"]
    assert "1/2 done (0 failed), 0 running, 1 queued" in seen[1]  # b was moving: not done
    gone = Scripted([[("a", "Success")]] * 50)  # removed for good (dvc queue remove): after the grace
    ticks = iter(range(0, 1000, 10))
    result = sweep.wait_for_tasks(gone, ["rev-a", "rev-b"], lambda tasks, elapsed: None, sleep=lambda s: None,
                                  clock=lambda: float(next(ticks)), worker_grace_s=1e9)
    assert [t.status for t in result.tasks] == ["Success", "Removed"]


def test_ctrl_c_also_stops_an_experiment_that_was_starting() -> None:
    queue = Scripted([[("a", "Running")], [("a", "Running")], [("a", "Running"), ("b", "Running")],
                      [("a", "Failed"), ("b", "Failed")]])
    said = []
    tasks, interrupted = sweep.stop_running(queue, ["rev-a", "rev-b"], said.append, sleep=lambda s: None)
    assert queue.calls == ["stop", "interrupt a", "interrupt b"] and interrupted == ["a", "b"]
    assert [t.status for t in tasks] == ["Failed", "Failed"]
    stuck = Scripted([[("a", "Running")]] * 10)
    ticks = iter(range(0, 1000, 100))
    sweep.stop_running(stuck, ["rev-a"], said.append, timeout_s=150, sleep=lambda s: None,
                       clock=lambda: float(next(ticks)))
    assert stuck.calls == ["stop", "interrupt a", "interrupt a --force"]
    assert "a did not stop within 150 s; killing them" in said


def test_the_command_lists_a_failure_with_its_log_and_exits_1(repo: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (repo / "list.txt").write_text("a generator.ngf=8\nb generator.ngf=4\n")
    log = tmp_path / "b.out"
    log.write_text("Running stage 'train':\ntrain: train.batch_size: got 0, expected an integer >= 1\n"
                   "ERROR: failed to reproduce 'train': failed to run: python -m stages.train, exited with 2\n")

    class Failing(FakeQueue):
        def tasks(self) -> list[Task]:
            return [task if task.name != "b" else Task(task.rev, "b", task.status, log) for task in super().tasks()]

    queue = Failing({"b": "Failed"})
    monkeypatch.setattr(sweep, "DvcQueue", lambda root: queue)
    monkeypatch.setattr(sweep, "rebuild_report", lambda root, env: None)
    monkeypatch.setattr(sweep, "POLL_INTERVAL_S", 0.001)
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(app, ["sweep", "--from-file", "list.txt", "--jobs", "2"])
    assert result.exit_code == 1, result.output
    assert "2 experiment(s) in 0m00s: 1 succeeded, 1 failed or not run" in result.output
    assert f"train: train.batch_size: got 0, expected an integer >= 1; log: {log}" in result.output
    assert "report rebuilt over every run" in result.output
    assert queue.env["OMP_NUM_THREADS"] == str(max(1, sweep.available_cores() // 2))


def test_the_command_checks_its_options(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(app, ["sweep", "--from-file", "x.txt", "-S", "generator.ngf=8"])
    assert result.exit_code == 2 and "--from-file and -S: give one of them" in result.output
    result = CliRunner().invoke(app, ["sweep", "--jobs", "0"])
    assert result.exit_code == 2 and "--jobs: got 0" in result.output
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n")
    result = CliRunner().invoke(app, ["sweep", "-S", "generator.ngf=8"])
    assert result.exit_code == 2 and "uncommitted changes (params.yaml)" in result.output


# --------------------------------------------------------------------------------------
# The tracking server: started in its own session, awaited, stopped; a failed start says why.

ANSWERS_HEALTH = """
import http.server, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


class ScriptedServer(TrackingServer):
    def __init__(self, script: str, tmp_path: Path) -> None:
        super().__init__(tmp_path / "mlflow.db", tmp_path / "mlartifacts", tmp_path / "log" / "mlflow.log")
        self.script = script

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-c", self.script, str(port)]


def test_tracking_server_start_and_stop(tmp_path: Path) -> None:
    server = ScriptedServer(ANSWERS_HEALTH, tmp_path)
    with server:
        uri = server.start(timeout_s=60)
        process = server.process
        assert uri.startswith("http://127.0.0.1:") and os.getpgid(process.pid) == process.pid  # its own session
    assert process.poll() is not None and server.process is None
    command = TrackingServer(tmp_path / "a.db", tmp_path / "art", tmp_path / "log").command(5000)
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'a.db'}"
    assert command[command.index("--workers") + 1] == "1" and command[command.index("--host") + 1] == "127.0.0.1"


def test_tracking_server_that_fails_says_why(tmp_path: Path) -> None:
    failing = ScriptedServer("import sys; print('Error: the database is a folder'); sys.exit(1)", tmp_path)
    with pytest.raises(SweepError, match=r"stopped at start: Error: the database is a folder \(its log: .*mlflow.log"):
        failing.start(timeout_s=60)
    silent = ScriptedServer("import time; time.sleep(60)", tmp_path)
    with pytest.raises(SweepError, match=r"did not answer within 1 s"):
        silent.start(timeout_s=1)
    assert silent.process is None


# --------------------------------------------------------------------------------------
# The ablation list and the scripts that run it (SLURM itself is not here: its script runs
# with stand-ins for git, dvc and python that record what they were asked).

STUBS = {
    "git": """#!/usr/bin/env bash
echo "git $*" >> "$RECORD"
if [ "$1" = -C ] && [ "$3" = remote ]; then echo /remote/gaugan.git; fi
if [ "$1" = -C ] && [ "$3" = rev-parse ]; then echo 0123abc; fi
if [ "$1" = clone ]; then mkdir -p "${@: -1}/scripts"; cp "$ABLATIONS" "${@: -1}/scripts/ablations.txt"; fi
""",
    "python": """#!/usr/bin/env bash
echo "python $*" >> "$RECORD"
while [ "$#" -gt 0 ]; do if [ "$1" = --from-file ]; then cp "$2" "$SLICE"; fi; shift; done
echo "env MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI GAUGAN_GPU_CLAIMS_DIR=$GAUGAN_GPU_CLAIMS_DIR" >> "$RECORD"
exit "${SWEEP_EXIT:-0}"
""",
    "dvc": """#!/usr/bin/env bash
echo "dvc $*" >> "$RECORD"
""",
    "gaugan": """#!/usr/bin/env bash
echo "gaugan $*" >> "$RECORD"
while [ "$#" -gt 0 ]; do if [ "$1" = --from-file ]; then cp "$2" "$SLICE"; fi; shift; done
""",
}


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A fake environment whose bin/ holds the stand-ins (GAUGAN_VENV points at it)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, text in STUBS.items():
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    return venv


def run_task(stubs: Path, tmp_path: Path, task: int, tasks: int, **extra: str) -> tuple[subprocess.CompletedProcess,
                                                                                      str, list[str]]:
    record, slice_file = tmp_path / f"record-{task}.txt", tmp_path / f"slice-{task}.txt"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "RECORD": str(record),
           "SLICE": str(slice_file), "ABLATIONS": str(ROOT / "scripts" / "ablations.txt"),
           "GAUGAN_TRACKING_URI": "http://mlflow.cluster:5000", "GAUGAN_VENV": str(stubs),
           "GAUGAN_WORKDIR": str(tmp_path / "work"), "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "77",
           "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": str(task + 10), "SLURM_ARRAY_TASK_MIN": "10",
           "SLURM_ARRAY_TASK_COUNT": str(tasks), **extra}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "sweep.sbatch")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    names = [line.split()[0] for line in slice_file.read_text().splitlines()] if slice_file.exists() else []
    return result, record.read_text() if record.exists() else "", names


def test_the_ablation_list_is_valid() -> None:
    planned = read_experiment_file(ROOT / "scripts" / "ablations.txt")
    assert len(planned) == 17 and planned[0].name == "norm-instance" and planned[-1].name == "oasis"
    assert len(check_overrides(planned, PARAMS)) == 17


def test_slurm_tasks_split_the_list_and_push_what_they_ran(stubs: Path, tmp_path: Path) -> None:
    names = [experiment.name for experiment in read_experiment_file(ROOT / "scripts" / "ablations.txt")]
    slices = []
    for task in range(4):
        result, record, ran = run_task(stubs, tmp_path, task, 4)
        assert result.returncode == 0, result.stderr
        assert ran == names[task::4], f"task {task}: every 4th experiment from the {task}th"
        assert "git clone --quiet /remote/gaugan.git" in record and "git checkout --quiet --detach 0123abc" in record
        assert "python -m pipeline.cli sweep --from-file" in record
        assert f"env MLFLOW_TRACKING_URI=http://mlflow.cluster:5000 GAUGAN_GPU_CLAIMS_DIR={tmp_path}/gaugan-gpu-" \
               "claims-77" in record
        assert record.rstrip().endswith("dvc exp push --rev 0123abc origin"), record
        slices += ran
    assert sorted(slices) == sorted(names)  # each experiment in exactly one task


def test_slurm_task_edge_cases(stubs: Path, tmp_path: Path) -> None:
    result, record, ran = run_task(stubs, tmp_path, 19, 20)  # more tasks than experiments
    assert result.returncode == 0 and "task 19 of 20: no experiment in its slice" in result.stdout
    assert ran == [] and "pipeline.cli sweep" not in record and "dvc exp push" not in record
    result, record, ran = run_task(stubs, tmp_path, 0, 1, SWEEP_EXIT="1")  # an experiment failed
    assert result.returncode == 1 and len(ran) == 17 and "dvc exp push --rev 0123abc origin" in record
    result, _, _ = run_task(stubs, tmp_path, 0, 1, GAUGAN_TRACKING_URI="")
    assert result.returncode != 0 and "set GAUGAN_TRACKING_URI to the MLflow server" in result.stderr


def test_ablations_script_runs_the_list_as_one_sweep(stubs: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"  # a copy: the checkout's own .venv/bin would come first on PATH
    (project / "scripts").mkdir(parents=True)
    for name in ("ablations.sh", "ablations.txt"):
        (project / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    record, slice_file = tmp_path / "record.txt", tmp_path / "list.txt"
    env = {"PATH": f"{stubs / 'bin'}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record),
           "SLICE": str(slice_file)}
    result = subprocess.run(["bash", str(project / "scripts" / "ablations.sh"), "--jobs", "3", "--with-vgg"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert record.read_text().startswith("gaugan sweep --from-file /") and "--jobs 3" in record.read_text()
    listed = slice_file.read_text()
    assert listed.splitlines()[-1] == "vgg-on loss.use_vgg_loss=true" and "arch-clade generator.arch=clade" in listed
