"""The report: ablation table, offline plots, the static page; runs read from MLflow."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from gaugan import report
from gaugan.data.io import atomic_write_text


def fake_runs() -> pd.DataFrame:
    return pd.DataFrame({
        "run_id": ["aaaaaaaa1111", "bbbbbbbb2222", "cccccccc3333"],
        "start_time": pd.to_datetime([30, 10, 20], unit="s", utc=True),
        "tags.dvc.exp_name": ["norm-instance", None, "ngf-32"],
        "tags.mlflow.runName": ["norm-instance", "train", "ngf-32"],
        "tags.dvc.baseline_rev": ["1234567890", None, "1234567890"],
        "tags.git.commit": ["1234567890", "abcdef0123", "1234567890"],
        "params.method": ["SPADE", "OASIS", "SPADE"],
        "params.generator.ngf": ["16", "16", "32"],
        "params.generator.param_free_norm": ["instance", "syncbatch", "syncbatch"],
        "params.data.dataset": ["landscapes"] * 3,
        "params.tracking.experiment_name": ["a", "b", "c"],  # never an ablation
        "metrics.fid/val": [80.123, 95.0, 70.5],
        "metrics.miou/val": [0.41, 0.38, np.nan],
        "metrics.perf/images_per_s": [12.0, 11.5, 7.25],
        "metrics.time/train_seconds": [120.0, np.nan, 600.0],
        "metrics.final/step": [500, 250, 500],
    })


def test_ablation_table_lists_differing_params_and_headlines() -> None:
    table = report.ablation_table(fake_runs())
    assert list(table["experiment"]) == ["train", "ngf-32", "norm-instance"]  # by start time
    assert list(table.columns[:6]) == ["experiment", "method", "commit", "run", "generator.ngf",
                                       "generator.param_free_norm"]
    assert list(table["method"]) == ["OASIS", "SPADE", "SPADE"]
    assert "status" not in table  # shown only when some run did not finish
    failed = report.ablation_table(fake_runs().assign(status=["FINISHED", "FAILED", "FINISHED"]))
    assert list(failed.columns[:5]) == ["experiment", "method", "commit", "run", "status"]
    assert failed["status"][0] == "FAILED"
    # Runs logged before the method parameter: named by their generator.
    older = report.ablation_table(fake_runs().drop(columns="params.method").assign(
        **{"params.generator.arch": ["spade", "oasis", "clade"]}))
    assert list(older["method"]) == ["OASIS", "CLADE", "SPADE"]
    assert "data.dataset" not in table and "tracking.experiment_name" not in table
    assert list(table["commit"]) == ["abcdef0", "1234567", "1234567"]
    assert table["FID"].tolist() == [95.0, 70.5, 80.123]
    assert table["train time (min)"].fillna(-1).tolist() == [-1, 10.0, 2.0]  # seconds logged, minutes shown
    assert report.headline_json(table.iloc[2]) == {
        "fid": 80.12, "miou": 0.41, "accuracy": None, "real_miou": None, "real_accuracy": None, "kid": None,
        "steps": 500, "images_per_s": 12.0, "train_minutes": 2.0}

    markdown = report.table_markdown(table).splitlines()
    assert markdown[0].startswith("| experiment | method | commit | run | generator.ngf |")
    # every registered metric (gaugan.metrics.registry), then training steps, speed and time
    assert markdown[0].endswith("| FID | mIoU (%) | accuracy (%) | judge mIoU on real (%) | judge accuracy on real (%) "
                                "| KID | steps | images/s | train time (min) |")
    assert "---:" in markdown[1]  # numeric columns right-aligned
    assert markdown[3] == ("| ngf-32 | SPADE | 1234567 | cccccccc | 32 | syncbatch | 70.50 | - | - | - | - | - | 500 "
                           "| 7.2 | 10.0 |")

    page_table = report.table_html(table, highlight_row=2)
    # best FID (lowest, ngf-32) and best mIoU (highest, norm-instance) are bold
    assert "<b>70.50</b>" in page_table and "<b>0.41</b>" in page_table and "<b>95.00</b>" not in page_table
    assert page_table.count('class="current"') == 1


def test_plots_and_page_are_offline(tmp_path: Path) -> None:
    runs = fake_runs()
    table = report.ablation_table(runs)
    history = pd.DataFrame([(run_id, key, step, 1.0 / (step + 1))
                            for run_id in runs["run_id"] for key in ("loss/g_gan", "loss/d_real")
                            for step in range(0, 50, 10)], columns=["run_id", "key", "step", "value"])
    labels = dict(zip(runs["run_id"], report.experiment_labels(runs)))
    assert report.plot_loss_curves(history, labels, tmp_path / "plots" / "losses.png")
    assert report.plot_headlines(table, tmp_path / "plots" / "metrics.png")
    assert not report.plot_loss_curves(history.iloc[:0], labels, tmp_path / "none.png")
    assert (tmp_path / "none.png").stat().st_size > 0  # a placeholder that says why: DVC declares the file
    for name in ("plots/losses.png", "plots/metrics.png", "none.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and min(image.size) > 50

    page = report.render_page("Report <test>", [
        report.Section("Ablations", report.table_html(table)),
        report.Section("Losses", report.figure_html(tmp_path / "plots" / "losses.png", "loss curves")),
        report.Section("Samples", report.figure_html(tmp_path / "none.png", "grid", scale=2)),
        report.Section("Notes", report.text_html("a < b\n\nsecond")),
    ])
    assert "Report &lt;test&gt;" in page and "<p>a &lt; b</p>" in page
    assert page.count("data:image/png;base64,") == 2
    with Image.open(tmp_path / "none.png") as grid:
        assert f'class="pixels" width="{2 * grid.width}" height="{2 * grid.height}"' in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from the network
    atomic_write_text(tmp_path / "index.html", page)
    assert (tmp_path / "index.html").read_text() == page


def test_runs_and_histories_from_mlflow(tmp_path: Path) -> None:
    """A temporary sqlite store with two runs, read back the way the report stage reads it."""
    from mlflow.tracking import MlflowClient

    from pipeline.runs import download_artifact, fetch_histories, fetch_runs

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert fetch_runs(client, "gaugan").empty  # no experiment yet
    experiment = client.create_experiment("gaugan", artifact_location=(tmp_path / "mlartifacts").as_uri())
    run_ids = []
    for name, ngf in (("ngf-16", "16"), ("ngf-32", "32")):
        run_id = client.create_run(experiment, run_name=name, tags={"dvc.exp_name": name}).info.run_id
        client.log_param(run_id, "generator.ngf", ngf)
        for step in (0, 10, 20):
            client.log_metric(run_id, "loss/g_gan", 2.0 - step / 20, step=step)
        client.log_metric(run_id, "fid/val", 50.0 + int(ngf))
        client.set_terminated(run_id)
        run_ids.append(run_id)
    sample = tmp_path / "grid.png"
    Image.new("RGB", (4, 4)).save(sample)
    client.log_artifact(run_ids[0], str(sample), artifact_path="samples")

    runs = fetch_runs(client, "gaugan")
    assert sorted(runs["tags.dvc.exp_name"]) == ["ngf-16", "ngf-32"]
    table = report.ablation_table(runs)
    assert table[["experiment", "generator.ngf", "FID"]].values.tolist() == [["ngf-16", "16", 66.0], ["ngf-32", "32", 82.0]]
    history = fetch_histories(client, run_ids, ["loss/g_gan"])
    assert len(history) == 6 and history.groupby("run_id")["step"].max().tolist() == [20, 20]
    copied = download_artifact(client, run_ids[0], "samples/grid.png", tmp_path / "download")
    assert copied is not None and copied.read_bytes() == sample.read_bytes()
    assert download_artifact(client, run_ids[1], "samples/grid.png", tmp_path / "download2") is None
