"""`parallel_map`, the worker pool of check-data, preprocess and the dataset builders, under the
stage's SIGTERM handler (pipeline/stage.py): it finishes, stops on SIGTERM with exit code 143,
and a worker killed by the system is one clear line, never a hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from gaugan.data.check import parallel_map
from tests.support import stage_environment, write_params

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 20.0  # a hang; each test takes 1-3 s on two shared cores


def start_stage(folder: Path, body: str) -> subprocess.Popen:
    """``python -c`` running ``body`` (the stage's ``run(cfg, root)``) as a stage, in its own process group."""
    write_params(folder)
    script = ("import os, signal, sys\n"
              "from gaugan.data.check import parallel_map\n"
              "from pipeline.stage import run_stage\n" + body + "\nrun_stage('check-data', run)\n")
    env = stage_environment()
    return subprocess.Popen([sys.executable, "-c", script], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen) -> tuple[int | None, str, str]:
    """(exit code, stdout, stderr); exit code None when it ran past the deadline (then it is killed)."""
    try:
        out, err = process.communicate(timeout=DEADLINE_S)
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return None, out, err


def test_many_pools_in_a_row_finish(tmp_path):
    """`with Pool()` ended with terminate(): a worker forked just before lost that SIGTERM to the
    inherited handler and the stage waited for it forever (1 of 6 check-data runs under load)."""
    rounds = 150
    body = ("def run(cfg, root):\n"
            f"    for _ in range({rounds}):\n"
            "        assert list(parallel_map(abs, range(-20, 20), 2, chunksize=1)) == [abs(i) for i in range(-20, 20)]\n"
            "    print('done')\n")
    code, out, err = finish(start_stage(tmp_path, body))
    assert code == 0 and out == "done\n", f"exit code {code} (None: still running after {DEADLINE_S} s); {err[-2000:]}"


def test_sigterm_to_the_process_group_mid_run_exits_143(tmp_path):
    """The workers die with the stage; a worker killed while holding the task queue's lock used to
    hang terminate() forever."""
    body = ("def run(cfg, root):\n"
            "    print('started', flush=True)\n"
            "    while True:\n"
            "        for _ in parallel_map(abs, range(200), 2, chunksize=1):\n"
            "            pass\n")
    for _ in range(3):
        process = start_stage(tmp_path, body)
        assert process.stdout.readline() == "started\n"
        os.killpg(process.pid, signal.SIGTERM)  # as a job scheduler or `kill -- -PGID` does
        code, _, err = finish(process)
        assert (code, err) == (143, "check-data: terminated (SIGTERM)\n"), f"exit code {code}: {err[-2000:]}"


def test_a_worker_killed_by_the_system_is_one_line_not_a_hang(tmp_path):
    body = ("def die_on_3(x):\n"
            "    if x == 3:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does\n"
            "    return x\n"
            "def run(cfg, root):\n"
            "    list(parallel_map(die_on_3, range(8), 2, chunksize=1))\n")
    code, _, err = finish(start_stage(tmp_path, body))
    assert code == 2, f"exit code {code} (None: still running after {DEADLINE_S} s): {err[-2000:]}"
    assert err == ("check-data: a worker process died while reading or writing the data (killed by the system: "
                   "out of memory?); use fewer worker processes (data.num_workers, or check-data --num-workers)\n")


def test_in_this_process_without_workers_and_in_order_with_them():
    assert list(parallel_map(abs, range(-5, 5), 0)) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert list(parallel_map(abs, range(-50, 50), 2, chunksize=3)) == [abs(i) for i in range(-50, 50)]
