"""The segmenter, generate and evaluate stages end to end on a tiny built-in dataset, with a
tiny generator checkpoint in the gaugan-checkpoint-v1 format; FID's unavailable path (an
empty TORCH_HOME) and its computed path (a stand-in feature extractor, tests only); MLflow
logging into the training run; `gaugan evaluate` without stages or MLflow; VAE latents
independent of the batching; error paths."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gaugan.config import replace
from gaugan.data.io import DataError
from gaugan.generate import GenerationError, generate_split
from gaugan.generated import split_stems
from gaugan.metrics.fid import FID_WEIGHTS_URL, pytorch_fid_version
from gaugan.metrics.inputs import Judges
from gaugan.models.loading import load_encoder, load_generator
from gaugan.scoring import real_features_path, score_generated
from stages import evaluate as evaluate_stage
from stages import generate as generate_stage
from stages import segmenter as segmenter_stage
from tests.support import CPU, stand_in_extractor, write_checkpoint


def test_stages_end_to_end_with_fid_unavailable(workspace, tmp_path, monkeypatch):
    root, cfg, spec = workspace
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    segmenter_stage.run(cfg, root)
    segmenter_report = json.loads((root / "reports" / "segmenter.json").read_text())
    assert len(segmenter_report["history"]) == 2 and segmenter_report["history"][-1]["step"] == 2 * 2
    assert segmenter_report["trained"] is True and segmenter_report["num_train_images"] == 10
    assert 0 <= segmenter_report["real_miou"] <= 100 and (root / "checkpoints/segmenter/segmenter.pt").is_file()
    assert set(segmenter_report["per_class_iou"]) == {"sky", "cloud", "mountain", "snow", "water", "sand", "grass",
                                                      "tree", "rock", "bush"}

    generate_stage.run(cfg, root)
    stems = split_stems(root / cfg.data.processed_dir)
    written = sorted(p.name for p in (root / cfg.evaluate.output_dir).glob("*.png"))
    assert written == sorted(f"{stem}.png" for stem in stems) and len(stems) == 5
    assert Image.open(root / cfg.evaluate.output_dir / f"{stems[0]}.png").size == (32, 32)
    grid = Image.open(root / "reports" / "generated_grid.png")
    assert grid.size == (3 * 32, 5 * 32)  # label | generated | real, one row per image (5 < 8)
    generation = json.loads((root / "reports" / "generation.json").read_text())
    assert generation["weights"] == "G_ema" and generation["num_images"] == 5 and generation["checkpoint_source"] == "gaugan"

    evaluate_stage.run(cfg, root)
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["fid"] is None and metrics["kid"] is None and set(metrics["unavailable"]) == {"fid", "kid"}
    assert FID_WEIGHTS_URL in metrics["unavailable"]["fid"] and "evaluate.fid_weights" in metrics["unavailable"]["fid"]
    assert 0 <= metrics["miou"] <= 100 and 0 <= metrics["accuracy"] <= 100
    assert metrics["real_miou"] == segmenter_report["real_miou"]  # the same segmenter, the same real photos
    protocol = metrics["protocol"]
    assert protocol["num_images"] == 5 and protocol["resolution"].startswith("32x32")
    assert protocol["segmenter"]["resolved"] == "trained" and "class_mapping" in protocol["segmenter"]
    assert protocol["comparable_to_paper"] is False and protocol["inception"]["status"] == "unavailable"
    assert protocol["metrics"]["fid"]["pytorch_fid_version"] == pytorch_fid_version() != ""  # recorded, whatever it is
    assert protocol["generation"]["weights"] == "G_ema" and protocol["metrics"]["miou"]["label"] == "mIoU (%)"
    with open(root / "reports" / "per_class_iou.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class_name"] for row in rows][:3] == ["sky", "cloud", "mountain"] and len(rows) == 10
    flagged = [row["class_name"] for row in rows if row["judged_reliably"] == "no"]
    assert metrics["classes_not_judged_reliably"] == flagged
    assert all(float(row["real_iou"]) < 0.2 for row in rows if row["class_name"] in flagged)
    assert not (root / cfg.evaluate.fid_stats_dir).exists()  # nothing computed without the weights


def test_evaluate_logs_into_the_training_run(workspace, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import open_run, write_run_file

    root, cfg, _ = workspace
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    tracked = replace(cfg, tracking={"enabled": True}, segmenter={"checkpoint_dir": "checkpoints/segmenter_tracked"},
                      evaluate={"segmenter": "none"})
    with open_run(tracked, root, "train") as tracker:  # stands in for the train stage
        write_run_file(tracker, root / tracked.train.checkpoint_dir / "run.json")
        run_id = tracker.run_id
    segmenter_stage.run(tracked, root)  # 'none': trains nothing, says so
    status = json.loads((root / "checkpoints/segmenter_tracked/segmenter.json").read_text())
    assert status["trained"] is False and "'none'" in status["reason"]
    assert not (root / "checkpoints/segmenter_tracked/segmenter.pt").exists()
    generate_stage.run(tracked, root)
    evaluate_stage.run(tracked, root)
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["miou"] is None and metrics["unavailable"]["miou"] == "evaluate.segmenter is 'none'"
    with open(root / "reports" / "per_class_iou.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 0
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert "Inception weights" in run.data.tags["evaluate.unavailable.fid"]
    assert run.data.tags["evaluate.pytorch_fid_version"] == pytorch_fid_version()
    assert run.data.params["evaluate.segmenter"] == "none" and run.info.status == "FINISHED"
    assert "fid/val" not in run.data.metrics  # unavailable is never logged as a number
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = {Path(entry.path).name for entry in client.list_artifacts(run_id, "evaluation")}
    assert logged == {"metrics.json", "per_class_iou.csv", "segmenter.json", "generated_grid.png"}
    (root / tracked.train.checkpoint_dir / "run.json").unlink()


def test_fid_computed_and_real_statistics_cached(workspace, tmp_path):
    root, cfg, spec = workspace
    store, generated = root / cfg.data.processed_dir, tmp_path / "generated"
    loaded = load_generator(root / cfg.train.checkpoint_dir / "generator.pt", spec, device=CPU)
    generate_split(loaded, store, generated, CPU, batch_size=3)
    judges = Judges(extract=stand_in_extractor, segmenter_reason="none here")
    arguments = dict(spec=spec, store_dir=store, generated_dir=generated, device=CPU, batch_size=2, judges=judges,
                     fid_stats_dir=tmp_path / "fid_stats")
    first = score_generated(**arguments)
    assert first.metrics["fid"] > 0 and first.metrics["kid"] is not None and "fid" not in first.metrics["unavailable"]
    assert real_features_path(tmp_path / "fid_stats", spec).name == "landscapes_32x32.npz"
    assert real_features_path(tmp_path / "fid_stats", spec).is_file()
    assert first.metrics["protocol"]["inception"]["real_features_cached"] is False
    second = score_generated(**arguments)
    assert second.metrics["protocol"]["inception"]["real_features_cached"] is True
    assert second.metrics["fid"] == first.metrics["fid"] and second.metrics["kid"] == first.metrics["kid"]
    assert second.tracking == {"fid/val": second.metrics["fid"], "kid/val": second.metrics["kid"]}
    # real photos scored as "generated": the distance to themselves is zero
    real_as_generated = tmp_path / "real_as_generated"
    real_as_generated.mkdir()
    images = np.load(store / "val" / "images.npy")
    for stem, image in zip(split_stems(store), images):
        Image.fromarray(image).save(real_as_generated / f"{stem}.png")
    same = score_generated(**{**arguments, "generated_dir": real_as_generated})
    assert same.metrics["fid"] == pytest.approx(0.0, abs=1e-6)
    assert same.metrics["kid"] < first.metrics["kid"]


def test_vae_latents_do_not_depend_on_batching_and_style_images_work(workspace, tmp_path):
    root, cfg, spec = workspace
    store = root / cfg.data.processed_dir
    path = write_checkpoint(tmp_path / "vae.pt", spec, use_vae=True, with_ema=True)
    loaded = load_generator(path, spec, device=CPU)
    assert loaded.z_dim == 16
    one = generate_split(loaded, store, tmp_path / "one", CPU, batch_size=1, seed=3)
    generate_split(loaded, store, tmp_path / "three", CPU, batch_size=3, seed=3)
    generate_split(loaded, store, tmp_path / "other", CPU, batch_size=3, seed=4)
    assert "prior" in one.latent and one.num_images == 5
    def pixels(folder: Path, stem: str) -> np.ndarray:
        return np.asarray(Image.open(folder / f"{stem}.png"), dtype=np.int64)

    # The same z whatever the batching: equal up to rounding (convolutions of another batch
    # size round the last bit differently); another seed's z changes the image clearly.
    for stem in split_stems(store):
        assert np.abs(pixels(tmp_path / "one", stem) - pixels(tmp_path / "three", stem)).max() <= 1
    stem = split_stems(store)[0]
    assert np.abs(pixels(tmp_path / "one", stem) - pixels(tmp_path / "other", stem)).max() > 16
    style = torch.rand(1, 3, 32, 32) * 2 - 1
    styled = generate_split(loaded, store, tmp_path / "styled", CPU, batch_size=2, style=style,
                            encoder=load_encoder(path, CPU))
    assert "posterior of the style image" in styled.latent
    plain = load_generator(root / cfg.train.checkpoint_dir / "generator.pt", spec, device=CPU)
    with pytest.raises(GenerationError, match="needs a VAE generator"):
        generate_split(plain, store, tmp_path / "x", CPU, batch_size=2, style=style)


def test_generation_replaces_the_previous_set_atomically(workspace, tmp_path):
    root, cfg, spec = workspace
    store, out = root / cfg.data.processed_dir, tmp_path / "generated"
    loaded = load_generator(root / cfg.train.checkpoint_dir / "generator.pt", spec, device=CPU)
    generate_split(loaded, store, out, CPU, batch_size=4)
    (out / "stale.png").write_bytes(b"from an older run")
    generate_split(loaded, store, out, CPU, batch_size=4)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{s}.png" for s in split_stems(store)] + ["generated.json"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    # a folder that generate did not write is never replaced (evaluate.output_dir naming a user's folder)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("precious")
    with pytest.raises(DataError, match="evaluate.output_dir names an existing folder that this project did not write"):
        generate_split(loaded, store, mine, CPU, batch_size=4)
    assert [p.name for p in mine.iterdir()] == ["precious.txt"]


def test_generator_for_another_dataset_is_a_clear_error(workspace, tmp_path):
    root, cfg, spec = workspace
    other = dataclasses.replace(spec, label_nc=5)
    path = write_checkpoint(tmp_path / "other.pt", other, with_ema=True)
    loaded = load_generator(path, spec, device=CPU)
    with pytest.raises(GenerationError, match=r"6 label channels.*11 channels.*data.dataset"):
        generate_split(loaded, root / cfg.data.processed_dir, tmp_path / "out", CPU, batch_size=2)


def test_missing_generated_images_are_a_clear_error(workspace, tmp_path):
    root, cfg, spec = workspace
    judges = Judges(extract=stand_in_extractor)
    with pytest.raises(DataError, match="generated image missing; run the generate stage"):
        score_generated(spec, root / cfg.data.processed_dir, tmp_path / "nothing", CPU, 2, judges, tmp_path / "stats")


def test_published_segmenter_missing_under_auto_is_recorded_not_fatal(workspace, tmp_path, monkeypatch):
    """'auto' on a paper dataset without the weight file: mIoU unavailable with the reason;
    'published' asked for explicitly: an error."""
    from gaugan.segmenters.loading import judge_for
    from gaugan.segmenters.published import SegmenterWeightsError

    root, cfg, spec = workspace
    cityscapes_like = dataclasses.replace(spec, name="cityscapes")
    judge = judge_for(cityscapes_like, "auto", CPU, weights_dir=tmp_path / "weights", trained_path=tmp_path / "x.pt")
    assert judge.segmenter is None and judge.status == "unavailable" and "drn_d_105_cityscapes.pth" in judge.reason
    with pytest.raises(SegmenterWeightsError):
        judge_for(cityscapes_like, "published", CPU, weights_dir=tmp_path / "weights", trained_path=tmp_path / "x.pt")


def test_cli_evaluate_scores_any_checkpoint(workspace, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.params import dump_config

    root, cfg, spec = workspace
    monkeypatch.chdir(root)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    (root / "params.yaml").write_text(dump_config(replace(cfg, evaluate={"segmenter": "none"},
                                                          weights={"download": False})))
    other = write_checkpoint(tmp_path / "elsewhere" / "generator.pt", spec, seed=5, with_ema=True)
    out = tmp_path / "scored"
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(other), "--out", str(out),
                                      "-S", "evaluate.batch_size=3"])
    assert result.exit_code == 0, result.output
    assert "FID: -  (unavailable: " in result.output and "mIoU (%): -  (unavailable: evaluate.segmenter is 'none')" \
        in result.output
    printed = json.loads(result.output.strip().splitlines()[-1].split(": ", 1)[1])
    assert printed["fid"] is None and printed["miou"] is None
    assert json.loads((out / "metrics.json").read_text())["unavailable"]["miou"] == "evaluate.segmenter is 'none'"
    generation = json.loads((out / "generation.json").read_text())
    assert generation["checkpoint"] == str(other) and len(list((out / "generated").glob("*.png"))) == 5
    assert (out / "per_class_iou.csv").is_file() and (out / "generated_grid.png").is_file()
    missing = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2 and "nope.pt: checkpoint file not found" in missing.output
    bad = CliRunner().invoke(app, ["evaluate", "-S", "evaluate.batch_size=0"])
    assert bad.exit_code == 2 and "evaluate.batch_size" in bad.output


def test_cli_evaluate_runs_no_stage_code_and_no_mlflow(workspace, tmp_path):
    """`gaugan evaluate` calls pipeline/library functions: no stages package (whose import runs
    DVC's git guard) and no MLflow, checked in a fresh interpreter."""
    import subprocess
    import sys

    from pipeline.params import dump_config

    root, cfg, _ = workspace
    params = tmp_path / "params.yaml"
    params.write_text(dump_config(replace(cfg, evaluate={"segmenter": "none"}, weights={"download": False})))
    script = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from pipeline.cli import app\n"
        f"result = CliRunner().invoke(app, ['evaluate', '--params', {str(params)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
        "print(json.dumps({'code': result.exit_code, 'output': result.output, 'loaded': sorted(\n"
        "    m for m in sys.modules if m.split('.')[0] in ('stages', 'mlflow', 'dvc'))}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TORCH_HOME": str(tmp_path / "th")}
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0, result["output"]
    assert result["loaded"] == [] and (tmp_path / "out" / "metrics.json").is_file()


def test_published_segmenter_path_with_user_supplied_weights(workspace, tmp_path, monkeypatch):
    """The published route end to end: the file at the documented path, strict loading, the
    labelId -> trainId mapping, names in the segmenter's class space (a one-block-per-stage DRN
    stands in for the 54 M-parameter one to keep the file small)."""
    import functools

    from gaugan.metrics.registry import registered_metrics
    from gaugan.pinned import write_pin
    from gaugan.segmenters import published
    from gaugan.segmenters.drn import DRND105Cityscapes
    from gaugan.segmenters.loading import judge_for, published_class_names
    from gaugan.segmenters.upernet import UperNet101

    root, cfg, spec = workspace
    entry = published.PUBLISHED_SEGMENTERS["drn_d_105_cityscapes"]
    small = dataclasses.replace(entry, build=functools.partial(DRND105Cityscapes, blocks=(1,) * 8))
    monkeypatch.setitem(published.PUBLISHED_SEGMENTERS, "drn_d_105_cityscapes", small)
    weights = tmp_path / "weights"
    target = small.weight_files(weights)["network"].destination
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in small.build().network.state_dict().items()}}, target)
    write_pin(target, "placed by hand")  # as the weights stage does when it first sees the file
    store = root / cfg.data.processed_dir
    generated = tmp_path / "generated"
    generate_split(load_generator(root / cfg.train.checkpoint_dir / "generator.pt", spec, device=CPU), store,
                   generated, CPU, batch_size=5)
    # the landscapes store under Cityscapes' name: label ids 7 and 8 are the only scored ones
    cityscapes_like = dataclasses.replace(spec, name="cityscapes")
    judge = judge_for(cityscapes_like, "auto", CPU, weights_dir=weights, trained_path=tmp_path / "x.pt")
    assert judge.status == "ok" and judge.protocol["resolved"] == "published"
    assert judge.segmenter.class_names()[:2] == ["road", "sidewalk"] and len(judge.segmenter.class_names()) == 19
    judges = Judges(segmenter=judge.segmenter, segmenter_protocol=judge.protocol)
    report = score_generated(cityscapes_like, store, generated, CPU, 5, judges)
    scored = [row["class_name"] for row in report.per_class_rows if row["ground_truth_pixels"] > 0]
    assert set(scored) <= {"road", "sidewalk"} and report.metrics["protocol"]["segmenter"]["resolved"] == "published"
    assert set(report.metrics["unavailable"]) == {m.name for m in registered_metrics() if "inception" in m.needs}
    ade_names = published_class_names(UperNet101((1, 1, 1, 1)), dataclasses.replace(spec, name="ade20k"))
    assert ade_names[0] == "wall" and ade_names[149] == "flag"  # CSAIL class k-1 = ADE20K class k


def _truncated_png(path: Path) -> None:
    Image.new("RGB", (32, 32), (10, 200, 30)).save(path)
    path.write_bytes(path.read_bytes()[:60])


DAMAGED_IMAGES = {
    "empty": lambda path: path.write_bytes(b""),
    "truncated": _truncated_png,
    "text": lambda path: path.write_text("not an image"),
}


@pytest.mark.parametrize("kind", DAMAGED_IMAGES)
def test_an_empty_or_damaged_generated_image_is_one_line(tmp_path, kind):
    """Item 16: a 0-byte (or cut-off) PNG in evaluate.output_dir names the file and what to do."""
    from gaugan.generated import read_generated

    DAMAGED_IMAGES[kind](tmp_path / "a.png")
    with pytest.raises(DataError) as caught:
        read_generated(tmp_path, ["a"], (32, 32))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'a.png'}: generated image unreadable (") and "\n" not in message
    assert message.endswith("run the generate stage again (python -m stages.generate)")


def test_a_generated_image_of_the_wrong_size_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    from gaugan import generated

    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    monkeypatch.setattr(generated.Image.Image, "convert", lambda *args: pytest.fail("decoded"))
    with pytest.raises(DataError, match=r"^\S*a.png: generated image is 64x48 \(WxH\), expected 32x32; re-run"):
        generated.read_generated(tmp_path, ["a"], (32, 32))
