"""Metrics during training in a tiny run: the loop's evaluate_during_training hook, the curves it
reports, the best generators kept (and generated from), resume, the held-out training images,
and the errors that stop a run before it wastes its time."""

from __future__ import annotations

import json

import pytest
import torch

from gaugan.checkpoint import CheckpointError
from gaugan.config import ConfigError, config_to_dict, replace
from gaugan.data.store import read_manifest, spec_from_manifest
from gaugan.errors import UserError
from gaugan.metrics.inputs import Judges
from gaugan.models.loading import load_generator
from gaugan.segmenters.trained import TrainedSegmenter
from gaugan.selection import SELECTION_FILE, check_held_out_unchanged, num_training_samples
from gaugan.train.evaluator import TrainingEvaluator, subset_indices
from gaugan.train.loop import planned_steps, train
from tests.support import stand_in_extractor, tiny_config

CPU = torch.device("cpu")


def judges(spec) -> Judges:
    torch.manual_seed(0)
    return Judges(segmenter=TrainedSegmenter(spec, width=4).eval(), extract=stand_in_extractor)


def evaluated_config(**evaluate):
    """8 training images, batch 2, 1 + 2 epochs (12 steps), scored every 2 epochs and after the last."""
    return replace(tiny_config(max_steps=None),
                   evaluate={"every_epochs": 2, "during_training_images": 3, **evaluate})


def test_scores_are_reported_at_due_epoch_ends_and_the_best_generators_kept(store, tmp_path):
    cfg = evaluated_config()
    spec = spec_from_manifest(read_manifest(store))
    evaluator = TrainingEvaluator(cfg, spec, store, tmp_path, judges(spec), CPU, resume=False)
    calls, reported = [], []

    def recording(generator, epoch, step):
        scores = evaluator(generator, epoch, step)
        calls.append((epoch, step, generator.training))  # evaluated in eval mode, handed back in training mode
        return scores

    train(cfg, store, tmp_path, report=lambda metrics, step: reported.append((step, metrics)), show_progress=False,
          evaluate_during_training=recording)
    assert calls == [(1, 4, True), (2, 8, True), (3, 12, True)]  # every epoch end
    curves = [(step, metrics) for step, metrics in reported if "fid/val" in metrics]
    assert [step for step, _ in curves] == [8, 12]  # every 2 epochs, and the last
    assert {"fid/val", "kid/val", "miou/val", "accuracy/val", "miou/real_val"} <= set(curves[0][1])
    assert evaluator.split == "val" and len(evaluator.items["index"]) == 3

    selection = json.loads((tmp_path / SELECTION_FILE).read_text())
    best_fid = min(curves, key=lambda curve: curve[1]["fid/val"])
    assert selection["best_fid"]["step"] == best_fid[0] and selection["best_fid"]["value"] == best_fid[1]["fid/val"]
    assert selection["best_miou"]["metric"] == "miou" and selection["best_miou"]["num_images"] == 3
    loaded = load_generator(tmp_path / "generator_best_fid.pt", device=CPU)
    assert loaded.spec == spec and loaded.weights == "G"

    resumed = TrainingEvaluator(cfg, spec, store, tmp_path, judges(spec), CPU, resume=True)
    assert resumed.best == selection  # an interrupted run keeps its best scores
    TrainingEvaluator(cfg, spec, store, tmp_path, judges(spec), CPU, resume=False)
    assert not (tmp_path / "generator_best_fid.pt").exists() and not (tmp_path / SELECTION_FILE).exists()


def test_metrics_without_a_judge_are_left_out(store, tmp_path):
    cfg = evaluated_config()
    spec = spec_from_manifest(read_manifest(store))
    evaluator = TrainingEvaluator(cfg, spec, store, tmp_path, Judges(inception_reason="offline"), CPU, resume=False)
    assert evaluator.unavailable()["fid"] == "offline" and "miou" in evaluator.unavailable()
    assert evaluator.metrics == () and evaluator(torch.nn.Identity(), 2, 8) == {}  # due, but nothing to score
    assert not (tmp_path / SELECTION_FILE).exists()


def test_train_holdout_keeps_the_scored_images_out_of_training(store, tmp_path):
    cfg = evaluated_config(selection_split="train_holdout", during_training_images=2)
    assert num_training_samples(cfg, 8) == 6 and planned_steps(cfg, 8) == 3 * (6 // 2)
    assert subset_indices(cfg, num_val=4, num_train=8) == ("train", [6, 7])
    spec = spec_from_manifest(read_manifest(store))
    evaluator = TrainingEvaluator(cfg, spec, store, tmp_path, judges(spec), CPU, resume=False)
    assert evaluator.items["index"].tolist() == [6, 7]
    result = train(cfg, store, tmp_path, show_progress=False, evaluate_during_training=evaluator)
    assert result.step == 9  # 3 epochs of 6 images in batches of 2: images 6 and 7 were never trained on
    with pytest.raises(ValueError, match="leaving none to train on"):
        num_training_samples(evaluated_config(selection_split="train_holdout", during_training_images=8), 8)


def test_choices_that_cannot_work_fail_before_training(store, tmp_path, monkeypatch):
    from pipeline.evaluation import training_evaluator

    with pytest.raises(ConfigError, match="checkpoint_choice.*'final' while evaluate.every_epochs is 0"):
        replace(tiny_config(), evaluate={"checkpoint_choice": "best_fid"})
    root = store.parent.parent
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    cfg = replace(evaluated_config(checkpoint_choice="best_fid"), evaluate={"segmenter": "none"})
    with pytest.raises(UserError, match="best_fid.*best fid during training, but it cannot be computed: "
                                        "Inception weights for FID unavailable"):
        training_evaluator(cfg, root, tmp_path, resume=False)
    assert training_evaluator(replace(cfg, evaluate={"every_epochs": 0, "checkpoint_choice": "final"}), root,
                              tmp_path, resume=False) is None


def test_generate_uses_the_chosen_best_generator(store, tmp_path):
    from pipeline.generation import generate

    cfg = replace(evaluated_config(checkpoint_choice="best_miou"),
                  train={"checkpoint_dir": str(tmp_path / "ckpt")}, evaluate={"output_dir": str(tmp_path / "out")})
    root = store.parent.parent
    with pytest.raises(UserError, match="generator_best_miou.pt: evaluate.checkpoint_choice='best_miou' needs"):
        generate(cfg, root, tmp_path / "out", None)
    spec = spec_from_manifest(read_manifest(store))
    evaluator = TrainingEvaluator(cfg, spec, store, tmp_path / "ckpt", judges(spec), CPU, resume=False)
    train(cfg, store, tmp_path / "ckpt", show_progress=False, evaluate_during_training=evaluator)
    summary = generate(cfg, root, tmp_path / "out", None)
    assert summary["checkpoint"].endswith("generator_best_miou.pt") and summary["checkpoint_choice"] == "best_miou"
    assert summary["selection"] == evaluator.best["best_miou"] and summary["num_images"] == 4


@pytest.mark.parametrize(("saved", "changed", "refused"), [
    # Which images are held out of training depends on all three keys, but only through
    # num_held_out: with the validation split, or with no evaluation, nothing is held out.
    ({"selection_split": "val", "every_epochs": 2}, {"every_epochs": 3}, False),
    ({"selection_split": "val", "every_epochs": 2}, {"every_epochs": 0}, False),
    ({"selection_split": "val"}, {"during_training_images": 5}, False),
    ({"selection_split": "train_holdout", "every_epochs": 2}, {"every_epochs": 3}, False),
    ({"selection_split": "train_holdout", "every_epochs": 0}, {"during_training_images": 5}, False),
    ({"selection_split": "train_holdout", "every_epochs": 0}, {"selection_split": "val"}, False),
    ({"selection_split": "train_holdout", "every_epochs": 2}, {"every_epochs": 0}, True),
    ({"selection_split": "train_holdout", "every_epochs": 0}, {"every_epochs": 1}, True),
    ({"selection_split": "train_holdout"}, {"during_training_images": 2}, True),
    ({"selection_split": "train_holdout"}, {"selection_split": "val"}, True),
    ({"selection_split": "val"}, {"selection_split": "train_holdout"}, True),
])
def test_resume_refuses_exactly_the_changes_of_the_held_out_images(saved, changed, refused, tmp_path):
    before = replace(evaluated_config(), evaluate=saved)
    after = replace(before, evaluate=changed)
    path = tmp_path / "last.pt"
    if not refused:
        check_held_out_unchanged(config_to_dict(before), after, path)
        return
    with pytest.raises(CheckpointError) as caught:
        check_held_out_unchanged(config_to_dict(before), after, path)
    message = str(caught.value)
    for key, value in changed.items():
        assert f"evaluate.{key}: {getattr(before.evaluate, key)!r} -> {value!r}" in message
    assert message.startswith(f"{path}: cannot resume: the checkpoint trained without the last ")
    assert message.endswith(f"Set those back, or set train.resume=false (or delete {path}) to start afresh.")


def test_a_resume_that_would_train_on_other_images_is_refused(store, tmp_path):
    cfg = evaluated_config(selection_split="train_holdout", during_training_images=2)
    train(replace(cfg, train={"max_steps": 2}), store, tmp_path, show_progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"cannot resume: the checkpoint trained without the last 2 images of "
                                              r"the training split .*, this configuration holds out 0 "
                                              r"\(evaluate.selection_split: 'train_holdout' -> 'val'\)"):
        train(replace(cfg, evaluate={"selection_split": "val"}, train={"max_steps": 4}), store, tmp_path,
              show_progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before
    # A change that keeps the held-out images resumes.
    resumed = train(replace(cfg, evaluate={"every_epochs": 1}, train={"max_steps": 4}), store, tmp_path,
                    show_progress=False)
    assert resumed.resumed_from_step == 2 and resumed.step == 4
