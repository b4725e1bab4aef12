"""End to end: `dvc repro` on a tiny built-in configuration, then a queued sweep.

A tiny copy of the working tree (tests/dvc_support.py: 32x32 images, a few training steps,
tracking on) becomes a git repository, and DVC runs the real stages. The queued sweep then
checks the traps of docs/SPADE.md section 6: every queued experiment's MLflow run, with its
artifacts, ends up under the real root, and an experiment that DVC completes without running
anything is listed as such by `gaugan link-experiments`. `gaugan sweep --jobs 2` runs
experiments in parallel through one loopback MLflow server.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from gaugan.config import flatten
from pipeline.dvc import parse_exp_show
from pipeline.params import apply_overrides, read_params
from tests.dvc_support import run, tiny_repo

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp clone whose baseline ran `dvc repro` with the tiny params, committed."""
    return tiny_repo(tmp_path_factory.mktemp("e2e") / "repo")


def mlflow_client(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def test_dvc_repro_produces_every_output(repo: Path) -> None:
    cfg = flatten(read_params(repo / "params.yaml"))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    assert set(lock["stages"]) == set(dvc_yaml["stages"]), "every stage of the default pipeline ran"
    for stage in lock["stages"].values():  # every declared output exists
        for out in stage.get("outs", []):
            assert (repo / out["path"]).exists(), out["path"]

    assert json.loads((repo / "data" / "download.json").read_text())["dataset"] == "landscapes"
    manifest = json.loads((repo / cfg["data.processed_dir"] / "manifest.json").read_text())
    assert manifest["spec"]["crop_size"] == 32
    checkpoints = repo / cfg["train.checkpoint_dir"]
    assert {"last.pt", "generator.pt", "run.json"} <= {p.name for p in checkpoints.iterdir()}
    generated = sorted((repo / cfg["evaluate.output_dir"]).rglob("*.png"))
    assert len(generated) >= cfg["data.builtin.num_val"]

    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["miou"] is not None and metrics["accuracy"] is not None, metrics
    headline = json.loads((repo / "reports" / "headline.json").read_text())
    assert headline["miou"] == round(metrics["miou"], 2) and headline["images_per_s"] > 0, headline
    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert json.loads(shown)[""]["data"]["reports/headline.json"]["data"]["miou"] == headline["miou"], shown

    for name in ("index.html", "ablations.md", "ablations.csv"):
        assert (repo / "reports" / name).stat().st_size > 0, name
    page = (repo / "reports" / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # grids and plots inlined
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "the page must not load anything from the network"

    run_id = json.loads((checkpoints / "run.json").read_text())["run_id"]
    mlrun = mlflow_client(repo).get_run(run_id)
    assert mlrun.info.status == "FINISHED"
    assert "miou/val" in mlrun.data.metrics and any(k.startswith("loss/") for k in mlrun.data.metrics)
    assert mlrun.info.artifact_uri.startswith((repo / "mlartifacts").as_uri())

    status = run(["dvc", "status", "--json", "dvc.yaml"], repo).stdout
    assert json.loads(status) == {}, f"after repro everything is up to date: {status}"


def test_a_parameter_change_reruns_only_what_it_affects(repo: Path) -> None:
    params = read_params(repo / "params.yaml")
    try:
        changed = apply_overrides(params, ["evaluate.seed=1"])
        (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        stale = set(json.loads(run(["dvc", "status", "--json", "dvc.yaml"], repo).stdout))
        assert stale == {"generate", "evaluate"}, stale
        changed = apply_overrides(params, ["generator.ngf=4"])
        (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        stale = set(json.loads(run(["dvc", "status", "--json", "dvc.yaml"], repo).stdout))
        assert stale == {"train"}, stale  # dvc status lists changed stages, not their descendants
    finally:
        run(["git", "checkout", "-q", "params.yaml"], repo)


def test_queued_sweep_keeps_every_run_under_the_real_root(repo: Path) -> None:
    # e2e-oasis-d: the one-line ablation that swaps SPADE's discriminator for OASIS's.
    experiments = {"e2e-ngf4": ["generator.ngf=4"],
                   "e2e-oasis-d": ["discriminator.arch=oasis", "loss.use_feat_loss=false"],
                   "e2e-unchanged": []}  # nothing to run: DVC restores the baseline's outputs
    for name, overrides in experiments.items():
        command = ["dvc", "exp", "run", "--queue", "-n", name]
        for override in overrides:
            command += ["-S", override]
        run(command, repo)
    run(["dvc", "queue", "start", "-j", "1"], repo)
    deadline = time.monotonic() + 900
    while True:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, f"sweep still running after 900 s:\n{status}"
        time.sleep(5)
    assert status.count("Success") == 3, status

    client = mlflow_client(repo)
    experiment = client.get_experiment_by_name(read_params(repo / "params.yaml")["tracking"]["experiment_name"])
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.data.tags.get("dvc.exp_name"): r for r in runs}
    for name in ("e2e-ngf4", "e2e-oasis-d"):
        mlrun = by_name[name]
        assert mlrun.info.status == "FINISHED" and "miou/val" in mlrun.data.metrics, name
        artifact_dir = Path(mlrun.info.artifact_uri.removeprefix("file://"))
        assert artifact_dir.is_relative_to(repo / "mlartifacts"), mlrun.info.artifact_uri
        assert client.list_artifacts(mlrun.info.run_id) and any(artifact_dir.rglob("*")), name
    assert "e2e-unchanged" not in by_name
    assert not (repo / ".dvc" / "tmp" / "exps").exists() or not any(
        p.is_dir() and p.name.startswith("tmp") for p in (repo / ".dvc" / "tmp" / "exps").iterdir())

    # `python -m pipeline.cli` is `gaugan` with the copy's own code (the installed one may be another checkout's).
    linked = run([sys.executable, "-m", "pipeline.cli", "link-experiments"], repo).stdout
    lines = {line.split()[0]: line for line in linked.splitlines() if line.startswith("e2e-")}
    assert " ran " in lines["e2e-ngf4"] and " ran " in lines["e2e-oasis-d"], linked
    # The method is a parameter runs filter by; the swapped discriminator really trained.
    assert by_name["e2e-ngf4"].data.params["method"] == "SPADE"
    assert by_name["e2e-oasis-d"].data.params["method"] == "SPADE G + OASIS D (no LabelMix)"
    assert "loss/g_feat" not in by_name["e2e-oasis-d"].data.metrics and "loss/g_feat" in by_name["e2e-ngf4"].data.metrics
    assert " restored " in lines["e2e-unchanged"], linked
    assert "made no MLflow run of their own" in linked and "e2e-unchanged" in linked
    tagged = {r.data.tags.get("dvc.exp_name"): r.data.tags.get("dvc.exp_rev") for r in client.search_runs(
        [experiment.experiment_id])}
    shown = parse_exp_show(json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout))
    revs = {e.name: e.rev for e in shown if not e.is_baseline}
    assert tagged["e2e-ngf4"] == revs["e2e-ngf4"] and tagged["e2e-oasis-d"] == revs["e2e-oasis-d"]
    for experiment in shown:  # `dvc exp show` lists the headline metrics of every row
        assert experiment.metrics.get("reports/headline.json:miou") is not None, experiment


def test_gaugan_sweep_runs_experiments_in_parallel_through_one_tracking_server(repo: Path) -> None:
    """`gaugan sweep --jobs 2`: three experiments, two at a time, every stage writing to MLflow
    through one loopback server over mlflow.db; then the runs linked and the report rebuilt."""
    experiments = {"sweep-ngf6": "generator.ngf=6", "sweep-kernel5": "generator.spade_kernel_size=5",
                   "sweep-seed1": "train.seed=1"}  # settings no earlier test ran (DVC would restore those)
    listing = repo.parent / "sweep.txt"
    listing.write_text("".join(f"{name} {override}\n" for name, override in experiments.items()))
    started = time.monotonic()
    result = run([sys.executable, "-m", "pipeline.cli", "sweep", "--jobs", "2", "--from-file", str(listing)], repo,
                 timeout=900)
    repo.joinpath(".e2e_sweep_seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    output = result.stdout + result.stderr
    assert "3 experiment(s) to run, 2 at a time on the CPU, tracked through http://127.0.0.1:" in output, output
    assert "3 succeeded, 0 failed" in output and "report rebuilt over every run" in output, output

    client = mlflow_client(repo)  # the same file, read directly now that the server is stopped
    experiment = client.get_experiment_by_name(read_params(repo / "params.yaml")["tracking"]["experiment_name"])
    runs = {r.data.tags.get("dvc.exp_name"): r for r in client.search_runs([experiment.experiment_id])}
    for name in experiments:
        mlrun = runs[name]
        assert mlrun.info.status == "FINISHED", name
        assert "miou/val" in mlrun.data.metrics and "loss/g_gan" in mlrun.data.metrics, name
        assert mlrun.data.params["runtime.gpus"] == "none" and mlrun.data.params["runtime.num_threads"] == "1"
        assert mlrun.info.artifact_uri.startswith((repo / "mlartifacts").as_uri()), mlrun.info.artifact_uri
        assert {a.path for a in client.list_artifacts(mlrun.info.run_id)} >= {"checkpoints", "evaluation"}, name
    spans = sorted((runs[name].info.start_time, runs[name].info.end_time) for name in experiments)
    assert spans[1][0] < spans[0][1], f"two experiments ran at the same time: {spans}"
    shown = parse_exp_show(json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout))
    assert set(experiments) <= {row.name for row in shown if not row.is_baseline}

    logs = [output, (repo / ".dvc" / "tmp" / "gaugan-sweep" / "mlflow.log").read_text()]
    logs += [path.read_text(errors="replace") for path in (repo / ".dvc" / "tmp" / "exps" / "run").rglob("*.out")]
    assert sum("Running stage 'train'" in log for log in logs) >= 3
    assert not [log for log in logs if "database is locked" in log]
    server = re.search(r"tracked through (http://127\.0\.0\.1:\d+)", output)[1]
    with pytest.raises(OSError):  # stopped with the sweep
        urllib.request.urlopen(f"{server}/health", timeout=5)
    table = (repo / "reports" / "ablations.md").read_text()
    assert all(name in table for name in experiments), table
