"""The metric registry: KID against a hand computation, the registry's rules, and a toy metric
that reaches metrics.json, the MLflow keys and the report's table without any other file
knowing its name."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from gaugan import report
from gaugan.metrics import registry
from gaugan.metrics.inputs import Judges, MetricInputs
from gaugan.metrics.kid import kernel_inception_distance
from gaugan.metrics.registry import Metric, MetricUnavailable, compute_metrics, get_metric, registered_metrics
from gaugan.scoring import score_generated
from pipeline.evaluation import write_evaluation
from stages.report import local_runs
from tests.support import CPU


def hand_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 written out pair by pair: k(a, b) = (a.b / d + 1)^3."""
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    within_x = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    within_y = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    across = sum(k(a, b) for a in x for b in y) / (m * n)
    return within_x + within_y - 2 * across


def test_kid_equals_the_pairwise_formula():
    rng = np.random.default_rng(0)
    generated, real = rng.normal(size=(6, 4)), rng.normal(0.5, 1.2, size=(6, 4))
    # Subsets as large as the sets are permutations of them: the estimate is exactly the formula.
    assert kernel_inception_distance(generated, real, num_subsets=3) == pytest.approx(hand_kid(generated, real))
    assert kernel_inception_distance(generated, real) > 0


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    same = kernel_inception_distance(a, b, max_subset_size=100)
    shifted = kernel_inception_distance(a, b + 1.0, max_subset_size=100)
    assert abs(same) < 0.05 < shifted
    assert kernel_inception_distance(a, b, max_subset_size=100) == same  # fixed subset seed
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(a[:1], b)


def test_registry_rules(monkeypatch):
    monkeypatch.setattr(registry, "_METRICS", dict(registry._METRICS))
    names = [metric.name for metric in registered_metrics()]
    assert names[:3] == ["fid", "miou", "accuracy"] and {"kid", "real_miou", "real_accuracy"} <= set(names)
    with pytest.raises(ValueError, match="needs \\['lpips'\\]"):
        registry.register(Metric("x", lambda inputs: 0.0, frozenset({"lpips"}), "x/val", "X", "x"))
    with pytest.raises(ValueError, match="'fid' is registered already"):
        registry.register(Metric("fid", lambda inputs: 0.0, frozenset(), "fid/val", "FID", "another"))
    with pytest.raises(KeyError, match="no metric named 'lpips'; registered: fid, miou"):
        get_metric("lpips")


def test_missing_judges_and_metric_reasons_are_recorded_not_raised():
    def refuse(inputs):
        raise MetricUnavailable("not today")

    metrics = [get_metric("fid"), get_metric("miou"),
               Metric("refusing", refuse, frozenset({"generated"}), "refusing/val", "R", "r")]
    inputs = MetricInputs(lambda: iter(()), Judges(segmenter_reason="evaluate.segmenter is 'none'",
                                                   inception_reason="no weights"), CPU, ())
    values = compute_metrics(metrics, inputs)
    assert values.values == {"fid": None, "miou": None, "refusing": None}
    assert values.unavailable == {"fid": "no weights", "miou": "evaluate.segmenter is 'none'", "refusing": "not today"}
    assert values.tracking(metrics) == {}


def brightness_gap(inputs) -> float:
    """Toy metric: mean absolute difference of mean brightness, generated vs real, in percent."""
    gaps = [(batch["generated"].float().mean() - batch["real"].float().mean()).abs() / 255
            for batch in inputs.batches()]
    return 100 * float(torch.stack(gaps).mean())


def test_a_registered_metric_reaches_metrics_json_mlflow_and_the_report(workspace, tmp_path, monkeypatch):  # noqa: F811
    from gaugan.generate import generate_split
    from gaugan.models.loading import load_generator

    root, cfg, spec = workspace
    monkeypatch.setattr(registry, "_METRICS", dict(registry._METRICS))
    registry.register(Metric("brightness_gap", brightness_gap, frozenset({"generated", "real"}), "brightness_gap/val",
                             "brightness gap", "toy: |mean brightness generated - real|", unit="%",
                             higher_is_better=False, digits=1, rank=70, protocol={"toy": True}))
    store = root / cfg.data.processed_dir
    generate_split(load_generator(root / cfg.train.checkpoint_dir / "generator.pt", spec, device=CPU), store,
                   tmp_path / "generated", CPU, batch_size=5)
    result = score_generated(spec, store, tmp_path / "generated", CPU, 5, Judges())
    value = result.metrics["brightness_gap"]
    assert value > 0 and result.tracking == {"brightness_gap/val": value}
    assert result.metrics["protocol"]["metrics"]["brightness_gap"]["toy"] is True
    write_evaluation(result, tmp_path / "metrics.json", tmp_path / "per_class.csv")
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["brightness_gap"] == value

    runs = local_runs(written, {"perf/images_per_s": 3.0}, "abc")  # the report stage's row without MLflow
    assert runs["metrics.brightness_gap/val"].tolist() == [value]
    table = report.ablation_table(runs)
    assert table["brightness gap (%)"].tolist() == [value]
    assert report.headline_json(table.iloc[0])["brightness_gap"] == round(value, 1)
    assert "brightness gap (%)" in report.table_markdown(table).splitlines()[0]
    two = report.ablation_table(pd.concat([runs, runs.assign(run_id="def", **{"metrics.brightness_gap/val": 0.5})]))
    assert "<b>0.5</b>" in report.table_html(two)  # lower is better, as registered
