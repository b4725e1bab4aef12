"""GPU claims (gaugan/gpu_claims.py) between real processes, on fake GPUs: the module takes the
GPUs as names, so any count runs on a CPU. And how pipeline/launch.py starts a stage on them."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gaugan.config import replace
from gaugan.gpu_claims import (
    CLAIMED_VARIABLE,
    GpuClaimError,
    check_enough,
    claim_gpus,
    claimed_from_environment,
    default_claims_dir,
    parse_gpu_indices,
    try_claim,
    visible_gpus,
)
from pipeline import launch
from stages import train as train_stage
from tests.support import make_store, tiny_config

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 30.0

# A process that claims GPUs, says so, and holds them until its stdin closes (or it is killed).
CLAIMER = """
import sys
from pathlib import Path
from gaugan.gpu_claims import claim_gpus
num_gpus, gpus, folder = int(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[3])
claim = claim_gpus(num_gpus, gpus, folder, poll_interval_s=0.02, on_wait=lambda message: print("waiting", flush=True))
print("claimed", claim.cuda_visible_devices, flush=True)
sys.stdin.read()
"""


class Claimer:
    """A claiming process and the lines it prints, read in a thread (no blocking reads in the test)."""

    def __init__(self, num_gpus: int, gpus: str, folder: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", CLAIMER, str(num_gpus), gpus, str(folder)], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.said: list[str] = []

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def next_line(self, timeout_s: float = DEADLINE_S) -> str:
        line = self.lines.get(timeout=timeout_s)
        self.said.append(line)
        return line

    def claimed(self, timeout_s: float = DEADLINE_S) -> str:
        """The GPUs it claimed (skipping its waiting notice); fails after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.next_line(max(0.01, deadline - time.monotonic()))
            if line.startswith("claimed "):
                return line.removeprefix("claimed ")

    def has_claimed(self) -> bool:
        while not self.lines.empty():
            self.said.append(self.lines.get())
        return any(line.startswith("claimed") for line in self.said)

    def release(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=DEADLINE_S)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=DEADLINE_S)


@pytest.fixture
def claimers(tmp_path: Path):
    started: list[Claimer] = []

    def start(num_gpus: int, gpus: str) -> Claimer:
        started.append(Claimer(num_gpus, gpus, tmp_path / "claims"))
        return started[-1]

    yield start
    for claimer in started:
        if claimer.process.poll() is None:
            claimer.kill()


def test_two_processes_never_share_a_gpu(claimers) -> None:
    for _ in range(5):  # started together, each time: they race for GPU 0
        first, second = claimers(1, "0,1"), claimers(1, "0,1")
        assert {first.claimed(), second.claimed()} == {"0", "1"}
        first.release()
        second.release()


def test_a_third_waits_and_proceeds_when_a_holder_is_killed(claimers) -> None:
    first, second = claimers(1, "0,1"), claimers(1, "0,1")
    held = {first.claimed(): first, second.claimed(): second}
    third = claimers(1, "0,1")
    assert third.next_line() == "waiting"
    held["1"].kill()  # SIGKILL: no cleanup ran, the kernel dropped the lock
    assert third.claimed() == "1"
    assert held["0"].process.poll() is None  # the other holder is untouched


def test_claims_of_several_gpus_are_all_or_nothing(claimers, tmp_path: Path) -> None:
    """A claim waiting for two GPUs holds neither meanwhile, so two such claims cannot each hold
    one GPU and wait for the other's (a deadlock with GPUs listed in opposite orders)."""
    holder = claimers(1, "0")
    assert holder.claimed() == "0"
    wants_both = claimers(2, "1,0")
    assert wants_both.next_line() == "waiting"
    # GPU 1 is free: the waiting claim does not sit on it.
    deadline = time.monotonic() + DEADLINE_S
    while (mine := try_claim(1, ["1"], tmp_path / "claims")) is None:
        assert time.monotonic() < deadline, "GPU 1 is held by a claim that cannot start"
    mine.release()
    also_wants_both = claimers(2, "0,1")
    assert also_wants_both.next_line() == "waiting"
    holder.kill()
    outcomes = queue.Queue()
    for claimer in (wants_both, also_wants_both):
        threading.Thread(target=lambda c=claimer: outcomes.put((c, c.claimed())), daemon=True).start()
    winner, gpus = outcomes.get(timeout=DEADLINE_S)
    assert sorted(gpus.split(",")) == ["0", "1"]
    assert not (also_wants_both if winner is wants_both else wants_both).has_claimed()
    winner.release()
    _, gpus = outcomes.get(timeout=DEADLINE_S)  # no deadlock: the other one gets both next
    assert sorted(gpus.split(",")) == ["0", "1"]


def test_a_claim_in_process_waits_and_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "claims"
    held = try_claim(1, ["0"], folder)
    said, naps = [], []

    def sleep(seconds: float) -> None:  # the holder lets go after the claim waited three times
        naps.append(seconds)
        if len(naps) == 3:
            held.release()

    ticks = iter([0, 0, 300, 600])  # 5 minutes per poll: reported at the start and after 10 minutes
    claim = claim_gpus(1, ["0"], folder, on_wait=said.append, sleep=sleep, clock=lambda: float(next(ticks)))
    assert claim.gpus == ("0",) and len(naps) == 3
    assert len(said) == 2 and "waiting for 1 free GPU(s) of 1 visible (0)" in said[0]
    assert str(folder) in said[0] and "(waiting for 10 min)" in said[1]
    claim.release()


def test_visible_gpus_name_the_physical_gpu() -> None:
    assert visible_gpus(3, None) == ("0", "1", "2")
    assert visible_gpus(2, "4, 6") == ("4", "6")
    assert visible_gpus(1, "GPU-8f2e,GPU-bad") == ("GPU-8f2e",)  # torch counted only the first
    assert visible_gpus(0, "") == ()


def test_gpu_lists_and_counts_are_checked() -> None:
    assert parse_gpu_indices("0-3,6,2") == [0, 1, 2, 3, 6]
    for bad in ("0-", "a", "3-1", ""):
        with pytest.raises(GpuClaimError, match="--gpus"):
            parse_gpu_indices(bad)
    with pytest.raises(GpuClaimError, match=r"train.gpus: asks for 3 GPU\(s\) but 2 are visible \(4, 6\) "
                                            r"\(CUDA_VISIBLE_DEVICES=4,6\); lower train.gpus"):
        check_enough(3, ("4", "6"), "train.gpus", " (CUDA_VISIBLE_DEVICES=4,6)")


def test_the_claims_folder(tmp_path: Path) -> None:
    assert default_claims_dir({}) == Path("/tmp/gaugan-gpu-claims")
    assert default_claims_dir({"GAUGAN_GPU_CLAIMS_DIR": str(tmp_path)}) == tmp_path
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(GpuClaimError, match="GAUGAN_GPU_CLAIMS_DIR: cannot create the GPU claims folder"):
        try_claim(1, ["0"], blocked / "claims")
    folder = tmp_path / "claims"
    folder.mkdir()
    (folder / "gpu-0.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(GpuClaimError, match="gpu-0.lock: a symbolic link"):
        try_claim(1, ["0"], folder)
    assert not (tmp_path / "elsewhere").exists()
    with try_claim(1, ["MIG-GPU-1/2/0"], folder) as claim:  # a MIG instance's name holds slashes
        assert claim.gpus == ("MIG-GPU-1/2/0",) and (folder / "gpu-MIG-GPU-1_2_0.lock").is_file()


# --------------------------------------------------------------------------------------
# pipeline/launch.py


def test_launch_finds_the_stage_and_claims_what_it_needs(tmp_path: Path) -> None:
    assert launch.stage_of(["torchrun", "--nproc_per_node=2", "-m", "stages.train"]) == "train"
    with pytest.raises(launch.LaunchError, match="usage"):
        launch.stage_of(["python", "train.py"])
    cfg = replace(tiny_config(), train={"device": "auto", "gpus": 2})
    folder = tmp_path / "claims"
    environ = {"CUDA_VISIBLE_DEVICES": "4,6,7", "PATH": "/bin"}
    claim, env = launch.prepare(cfg, "train", environ, device_count=lambda: 3, claims_dir=folder)
    assert claim.gpus == ("4", "6") and env["CUDA_VISIBLE_DEVICES"] == "4,6" and env[CLAIMED_VARIABLE] == "4,6"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["PATH"] == "/bin"
    other, env = launch.prepare(cfg, "evaluate", environ, device_count=lambda: 3, claims_dir=folder)
    assert other.gpus == ("7",)  # one GPU for the other stages, not one of the training's
    with pytest.raises(GpuClaimError, match=r"train.gpus: asks for 4 GPU\(s\) but 3 are visible \(4, 6, 7\) "
                                            r"\(CUDA_VISIBLE_DEVICES=4,6,7\)"):
        launch.prepare(replace(cfg, train={"gpus": 4}), "train", environ, device_count=lambda: 3, claims_dir=folder)
    claim.release()
    other.release()


def test_launch_on_the_cpu_claims_nothing_and_does_not_count_gpus(tmp_path: Path) -> None:
    def no_count() -> int:
        raise AssertionError("train.device: cpu must not initialise CUDA")

    claim, env = launch.prepare(replace(tiny_config(), train={"device": "cpu", "gpus": 8}), "train", {},
                                device_count=no_count, claims_dir=tmp_path)
    assert claim is None and env == {CLAIMED_VARIABLE: ""}
    claim, env = launch.prepare(replace(tiny_config(), train={"device": "auto"}), "train", {},
                                device_count=lambda: 0, claims_dir=tmp_path)
    assert claim is None and "CUDA_VISIBLE_DEVICES" not in env


# Claims GPU 0 of a fake one, then becomes (exec) a program that prints its environment and waits.
EXECS = """
import os, sys
from pathlib import Path
from pipeline import launch
from gaugan.gpu_claims import try_claim
claim = try_claim(1, ["0"], Path(sys.argv[1]))
program = "import os, sys; print('started', os.environ['MARK'], flush=True); sys.stdin.read()"
launch.execute([sys.executable, "-c", program], {**os.environ, "MARK": "after-exec"}, claim)
"""


def test_the_claim_outlives_exec_and_dies_with_the_process(tmp_path: Path) -> None:
    folder = tmp_path / "claims"
    process = subprocess.Popen([sys.executable, "-c", EXECS, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "started after-exec"
        assert try_claim(1, ["0"], folder) is None  # the program that replaced the claimer holds it
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=DEADLINE_S)
        claim = try_claim(1, ["0"], folder)
        assert claim is not None
        claim.release()
    finally:
        if process.poll() is None:
            process.kill()


def test_launch_runs_the_command_and_returns_its_exit_code(tmp_path: Path) -> None:
    """`python -m pipeline.launch python -m stages.<name>` as dvc.yaml runs it, on the CPU."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace("  device: auto", "  device: cpu"))
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "__init__.py").write_text("")
    (tmp_path / "stages" / "probe.py").write_text(
        f"import os, sys\nprint('claimed:', repr(os.environ['{CLAIMED_VARIABLE}']))\nsys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the launcher from this checkout; the probe from tmp_path
    result = subprocess.run([sys.executable, "-m", "pipeline.launch", sys.executable, "-m", "stages.probe"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "claimed: ''" in result.stdout, result.stderr
    result = subprocess.run([sys.executable, "-m", "pipeline.launch", "no-such-launcher", "-m", "stages.probe"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "probe: cannot start 'no-such-launcher'" in result.stderr, result.stderr
    result = subprocess.run([sys.executable, "-m", "pipeline.launch", "python", "probe.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "usage: python -m pipeline.launch" in result.stderr, result.stderr


# --------------------------------------------------------------------------------------
# The train stage records its GPUs.


def test_train_records_its_gpus_and_checks_them_against_its_processes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "repo"
    make_store(root)
    monkeypatch.setenv(CLAIMED_VARIABLE, "3")  # as pipeline/launch.py leaves it (the run itself is on the CPU)
    train_stage.run(tiny_config(max_steps=1, num_threads=1), root)
    assert json.loads((root / "reports" / "train.json").read_text())["gpus"] == [3]
    assert claimed_from_environment() == ("3",) and claimed_from_environment({}) is None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun --nproc_per_node=2 with train.gpus: 1
    with pytest.raises(GpuClaimError, match=r"train.gpus: 1 GPU\(s\) claimed \(3\) for 2 training process"):
        train_stage.run(tiny_config(max_steps=1, num_threads=1), root)


def test_claims_and_launcher_import_no_torch() -> None:
    """Claims are testable on any machine, and a CPU run's launcher starts without torch's import time."""
    script = "import sys, gaugan.gpu_claims, pipeline.launch; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
