"""pipeline/dvc.py: DVC context, the own-code guard, `dvc exp show` parsing and run linking."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.dvc import (
    CodeLocationError,
    check_code_location,
    current_context,
    guard_stage,
    link_experiments,
    parse_exp_show,
)

ROOT = Path(__file__).resolve().parents[1]


def test_context_of_a_queued_experiment(tmp_path: Path) -> None:
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    environ = {"DVC_ROOT": str(tmp_path), "DVC_STAGE": "train", "DVC_EXP_NAME": "ngf-32",
               "DVC_EXP_BASELINE_REV": "a" * 40}
    context = current_context(environ, cwd=copy)
    assert context.workdir == copy.resolve() and context.root == tmp_path.resolve()
    assert context.in_temp_copy and context.under_dvc
    assert (context.stage, context.exp_name, context.baseline_rev) == ("train", "ngf-32", "a" * 40)
    assert context.commit is None  # not a git repository


def test_context_outside_dvc_is_the_working_directory() -> None:
    context = current_context({}, cwd=ROOT)
    assert context.root == context.workdir == ROOT and not context.in_temp_copy and not context.under_dvc
    assert context.exp_name is None and context.commit is not None and len(context.commit) == 40


def test_code_location_guard(tmp_path: Path) -> None:
    check_code_location(ROOT)  # this checkout imports its own code
    with pytest.raises(CodeLocationError, match="would be imported from"):
        check_code_location(tmp_path)
    guard_stage({}, cwd=tmp_path)  # outside DVC nothing is checked
    with pytest.raises(CodeLocationError):
        guard_stage({"DVC_STAGE": "train"}, cwd=tmp_path)


def test_stage_package_refuses_foreign_code_under_dvc(tmp_path: Path) -> None:
    """A copy holding stages/ and pipeline/ but no gaugan/ would run another checkout's library."""
    for package in ("stages", "pipeline"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-c", "import stages"]
    env = {"DVC_STAGE": "train", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "package 'gaugan'" in result.stderr
    shutil.copytree(ROOT / "gaugan", tmp_path / "gaugan", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


BASE = "b" * 40

EXP_SHOW = [
    {"rev": "workspace", "name": None, "data": {"params": {"params.yaml": {"data": {"a": 1}}}}, "experiments": None},
    {
        "rev": BASE, "name": "main",
        "data": {"rev": BASE, "params": {"params.yaml": {"data": {"generator": {"ngf": 16}}}},
                 "metrics": {"reports/metrics.json": {"data": {"fid/val": 90.5}}},
                 "outs": {"checkpoints/train": {"hash": "h-base.dir"}}},
        "experiments": [
            {"name": "ngf-32", "executor": {"state": "success"}, "revs": [{
                "rev": "1" * 40, "name": "ngf-32",
                "data": {"params": {"params.yaml": {"data": {"generator": {"ngf": 32}}}},
                         "metrics": {"reports/metrics.json": {"data": {"fid/val": 80.0}}},
                         "outs": {"checkpoints/train": {"hash": "h-32.dir"}}}}]},
            {"name": "again", "executor": {"state": "success"}, "revs": [{
                "rev": "2" * 40, "name": "again",
                "data": {"params": {"params.yaml": {"data": {"generator": {"ngf": 16}}}},
                         "outs": {"checkpoints/train": {"hash": "h-base.dir"}}}}]},
            {"name": "untracked", "executor": {"state": "failed"}, "revs": [{
                "rev": "3" * 40, "name": "untracked", "data": {"params": {}, "outs": {}}}]},
        ],
    },
]


def test_parse_exp_show() -> None:
    rows = parse_exp_show(EXP_SHOW)
    assert [(r.name, r.is_baseline, r.state) for r in rows] == [
        ("main", True, None), ("ngf-32", False, "success"), ("again", False, "success"), ("untracked", False, "failed")]
    assert rows[1].params == {"generator.ngf": 32} and rows[1].baseline_rev == BASE
    assert rows[1].metrics == {"reports/metrics.json:fid/val": 80.0}
    assert rows[0].outs == {"checkpoints/train": "h-base.dir"}


def test_link_experiments_reports_runs_restored_and_missing() -> None:
    experiments = parse_exp_show(EXP_SHOW)
    runs = pd.DataFrame({
        "run_id": ["run-base", "run-32-failed", "run-32"],
        "start_time": pd.to_datetime([1, 2, 3], unit="s"),
        "tags.dvc.exp_name": [None, "ngf-32", "ngf-32"],
        "tags.dvc.baseline_rev": [None, BASE, BASE],
    })
    # What each commit's run.json names: "again" holds the baseline's outputs (run-cache
    # restore / nothing to run); "untracked" has no run.json at all.
    sources = {BASE: "run-base", "1" * 40: "run-32", "2" * 40: "run-base", "3" * 40: None}
    links = {link.experiment.name: link for link in link_experiments(experiments, runs, sources)}
    assert links["main"].run_ids == ("run-base",) and links["main"].status == "ran"
    assert links["ngf-32"].run_ids == ("run-32", "run-32-failed") and links["ngf-32"].status == "ran"
    assert links["again"].status == "restored" and links["again"].source_name == "main"
    assert links["again"].run_ids == ()
    assert links["untracked"].status == "no-run" and links["untracked"].source_run_id is None


def test_link_experiments_with_no_tags_at_all() -> None:
    experiments = parse_exp_show(EXP_SHOW)
    links = link_experiments(experiments, pd.DataFrame({"run_id": []}), {})
    assert [link.status for link in links] == ["no-run"] * 4
