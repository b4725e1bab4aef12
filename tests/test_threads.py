"""One thread rule (gaugan/threads.py) applied by every stage and command that computes."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gaugan import threads
from gaugan.config import ConfigError, replace
from gaugan.threads import ThreadSettingError, choose_num_threads, configure_threads
from pipeline.cli import app
from stages import train as train_stage
from tests.support import ROOT, make_store, tiny_config


@pytest.mark.parametrize(
    ("cores", "workers", "processes", "expected"),
    [
        (2, 2, 1, 1),  # the measured case: 2 threads beside 2 workers on 2 cores trained 4-6x slower than 1
        (2, 0, 1, 2),
        (16, 2, 1, 14),
        (16, 4, 2, 4),  # two DDP ranks on one machine share its cores
        (1, 4, 1, 1),  # never fewer than one
    ],
)
def test_derived_count_leaves_a_core_to_each_loader_worker(cores, workers, processes, expected) -> None:
    setting = choose_num_threads(None, workers, processes, cores=cores, environ={})
    assert (setting.num_threads, setting.source) == (expected, "derived")


def test_the_setting_then_omp_num_threads_win_over_the_derived_count() -> None:
    assert choose_num_threads(3, 2, cores=2, environ={"OMP_NUM_THREADS": "5"}).num_threads == 3
    from_environment = choose_num_threads(None, 2, cores=2, environ={"OMP_NUM_THREADS": "5"})
    assert (from_environment.num_threads, from_environment.source) == (5, "OMP_NUM_THREADS")
    with pytest.raises(ThreadSettingError, match="OMP_NUM_THREADS: got 'many'"):
        choose_num_threads(None, environ={"OMP_NUM_THREADS": "many"})
    with pytest.raises(ThreadSettingError, match="--threads: got 0"):
        choose_num_threads(0, setting="--threads")


def test_cores_come_from_the_process_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.available_cores() == 3
    setting = configure_threads(None, num_workers=1)
    assert setting.num_threads == 2 and torch.get_num_threads() == 2 and setting.cores == 3


def test_config_rejects_a_thread_count_below_one() -> None:
    with pytest.raises(ConfigError, match=r"train.num_threads: got 0, expected null or >= 1"):
        replace(tiny_config(), train={"num_threads": 0})


class ThreadsChosen(Exception):
    """Raised by the spy: the stage got as far as choosing its threads."""


@pytest.mark.parametrize(("stage", "workers"), [("train", 3), ("segmenter", 3), ("generate", 0),
                                                ("evaluate", 0), ("bench", 0)])
def test_every_computing_stage_applies_the_setting_first(stage: str, workers: int, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(f"stages.{stage}")
    calls = []

    def spy(requested, num_workers=0, processes=1, **kwargs):
        calls.append((requested, num_workers))
        raise ThreadsChosen

    monkeypatch.setattr(module, "configure_threads", spy)
    cfg = replace(tiny_config(), data={"num_workers": 3}, train={"num_threads": 7})
    with pytest.raises(ThreadsChosen):
        module.run(cfg, tmp_path)
    assert calls == [(7, workers)]


def test_train_records_the_thread_count(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    make_store(root)
    train_stage.run(tiny_config(max_steps=1, num_threads=1), root)
    assert json.loads((root / "reports" / "train.json").read_text())["num_threads"] == 1
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("command", ["bench", "synthesize"])
def test_commands_apply_threads(command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def spy(requested, num_workers=0, processes=1, export=False, setting="train.num_threads"):
        calls.append((requested, setting))
        raise ThreadSettingError("spy")

    monkeypatch.setattr(threads, "configure_threads", spy)
    monkeypatch.chdir(ROOT)  # bench reads params.yaml
    args = {"bench": ["bench", "--threads", "3"],
            "synthesize": ["synthesize", "--checkpoint", "c.pt", "--dataset", "landscapes", "--label", "l.png",
                           "--output", str(tmp_path / "o.png"), "--threads", "3"]}[command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and calls == [(3, "--threads")], result.output
