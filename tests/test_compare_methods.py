"""scripts/compare_methods.py on a tiny built-in set: what it records, what it reuses, and that
one failing run loses no other run's result."""

from __future__ import annotations

import json
from pathlib import Path

from tests.dvc_support import TINY
from tests.support import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_compare_records_every_run_reuses_the_reference_and_survives_a_failed_run(tmp_path: Path, capsys) -> None:
    script = load_script("compare_methods")
    out = tmp_path / "compare.json"
    common = ["--params", str(ROOT / "params.yaml"), "--root", str(tmp_path), "--out", str(out), "--steps", "2",
              "--candidates", "spade", "spade_g_oasis_d", "--seeds", "0", "1",
              *[arg for override in TINY + ["train.sample_every=100", "train.checkpoint_every=100"]
                for arg in ("-S", override)]]
    # A folder of the user's where one run would write its checkpoints: that run is refused.
    foreign = tmp_path / "checkpoints" / "compare" / "spade_g_oasis_d-steps-s1"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")

    assert script.main(common + ["--budgets", "steps"]) == 1
    printed = capsys.readouterr().out
    assert "spade_g_oasis_d-steps-s1: FAILED: OutputNotWritable" in printed
    assert "1 run(s) failed: spade_g_oasis_d-steps-s1" in printed
    assert (foreign / "notes.txt").read_text() == "mine"

    result = json.loads(out.read_text())
    done = {(run["candidate"], run["budget"], run["seed"]) for run in result["runs"]}
    assert done == {("spade", "steps", 0), ("spade", "steps", 1), ("spade_g_oasis_d", "steps", 0)}
    for run in result["runs"]:
        assert run["steps"] == 2 and run["train_seconds"] > 0 and run["images_per_s"] > 0
        assert run["miou_ratio"] >= 0 and run["real_miou"] > 0 and run["per_class_iou"]
        tag = f"{run['candidate']}-steps-s{run['seed']}"
        assert (tmp_path / "outputs" / "compare" / f"{tag}-grid.png").is_file()
        assert not (tmp_path / run["checkpoint"] / "grid.png").exists()  # only training's files there
    assert {run["method"] for run in result["runs"]} == {"SPADE", "SPADE G + OASIS D"}
    assert result["cpu"] and result["equal_steps"] == 2 and result["reference_candidate"] == "spade"
    assert result["runs_at_a_time"] == 1 and result["threads_per_run"] >= 1
    rows = {(row["candidate"], row["budget"]): row for row in result["summary"]}
    assert rows["spade", "steps"]["seeds"] == [0, 1] and rows["spade", "steps"]["miou_ratio"]["values"]

    # Equal wall time: the reference's runs are its equal-steps runs, recorded again, not trained
    # again; the finished runs are not repeated.
    foreign.joinpath("notes.txt").unlink()
    foreign.rmdir()
    assert script.main(common + ["--budgets", "steps", "time"]) == 0
    printed = capsys.readouterr().out
    assert "spade-steps-s0:" not in printed and "spade-time-s0:" not in printed
    assert "spade_g_oasis_d-steps-s1: mIoU" in printed
    result = json.loads(out.read_text())
    runs = {(run["candidate"], run["budget"], run["seed"]): run for run in result["runs"]}
    assert len(runs) == 8

    # The configuration's own schedule, whatever --steps says.
    assert script.main(common + ["--budgets", "planned", "--seeds", "0", "--candidates", "spade"]) == 0
    assert script.main(common + ["--budgets", "planned", "--seeds", "0", "--candidates", "spade_g_oasis_d"]) == 0
    result = json.loads(out.read_text())
    assert set(result["candidates"]) == {"spade", "spade_g_oasis_d"}  # a later call keeps the earlier ones
    assert result["reference_candidate"] == "spade"
    planned = {run["candidate"]: run for run in result["runs"] if run["budget"] == "planned"}
    assert set(planned) == {"spade", "spade_g_oasis_d"} and len(result["runs"]) == 10
    assert {name: run["steps"] for name, run in planned.items()} == result["planned_steps"]
    assert planned["spade"]["steps"] > 2
    for seed in (0, 1):
        reused = runs["spade", "time", seed]
        assert reused["same_run_as"] == "steps"
        assert reused["train_seconds"] == runs["spade", "steps", seed]["train_seconds"]
        assert runs["spade_g_oasis_d", "time", seed]["steps"] >= 1
