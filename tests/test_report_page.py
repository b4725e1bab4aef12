"""The report page leads with what matters: the headline numbers (and why one is missing) and
the label | generated | real grid at a readable size, then the judge per class, the runs and
plots, and the full protocol collapsed at the end; one self-contained file. Checked in the HTML
and in a real headless chromium (screenshot under the test's tmp dir)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from gaugan.config import replace
from gaugan.data.io import atomic_write_json
from gaugan.metrics.segmentation import PER_CLASS_COLUMNS, write_csv_atomic
from pipeline.params import load_config
from stages import report as report_stage

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["headline", "samples", "judge", "runs", "methods", "plots", "more", "protocol"]
FID_REASON = "the weights stage could not provide the Inception weights: offline"


def write_run_outputs(root: Path) -> None:
    """What the stages before the report leave in reports/, for a 64x64 run with FID unavailable."""
    reports = root / "reports"
    metrics = {"fid": None, "miou": 61.0214, "accuracy": 89.2611, "real_miou": 72.1598, "real_accuracy": 94.5063,
               "kid": None, "unavailable": {"fid": FID_REASON, "kid": FID_REASON},
               "classes_not_judged_reliably": ["bush"],
               "protocol": {"dataset": "landscapes", "num_images": 100, "resolution": "64x64 (HxW), the model's",
                            "segmenter": {"segmenter": "pipeline-trained segmenter"},
                            "generation": {"checkpoint": "checkpoints/train/generator.pt", "weights": "G"}}}
    atomic_write_json(reports / "metrics.json", metrics)
    rows = [{"class_index": 0, "class_name": "sky", "generated_iou": 0.9, "real_iou": 0.95, "ground_truth_pixels": 9000,
             "judged_reliably": "yes"},
            {"class_index": 1, "class_name": "bush", "generated_iou": 0.01, "real_iou": 0.05, "ground_truth_pixels": 80,
             "judged_reliably": "no"}]
    write_csv_atomic(rows, reports / "per_class_iou.csv", PER_CLASS_COLUMNS)
    history = [{"epoch": 5, "step": 625, "fid/val": 90.0, "miou/val": 50.0},
               {"epoch": 10, "step": 1250, "fid/val": 80.0, "miou/val": 60.0}]
    atomic_write_json(reports / "train.json", {"method": "OASIS", "step": 1250, "perf/images_per_s": 30.0,
                                               "time/train_seconds": 360.0,
                                               "evaluation_during_training": {"every_epochs": 5, "history": history}})
    def stat(*values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "values": list(values)}
    runs = [{"candidate": name, "method": method, "budget": "steps", "seed": seed, "steps": 500, "real_miou": 82.7,
             "per_class_iou": {"sky": iou, "bush": None}}
            for name, method, iou in (("spade", "SPADE", 0.5), ("oasis", "OASIS", 0.8)) for seed in (0, 1)]
    summary = [{"candidate": "spade", "method": "SPADE", "budget": "steps", "seeds": [0, 1], "steps": stat(500, 500),
                "train_seconds": stat(300, 310), "images_per_s": stat(13.3, 12.9), "miou": stat(50.0, 52.0),
                "accuracy": stat(85.0, 86.0), "miou_ratio": stat(0.605, 0.629), "fid": None},
               {"candidate": "oasis", "method": "OASIS", "budget": "time", "seeds": [0, 1], "steps": stat(400, 400),
                "train_seconds": stat(305, 300), "images_per_s": stat(10.5, 10.7), "miou": stat(66.0, 67.0),
                "accuracy": stat(90.0, 91.0), "miou_ratio": stat(0.798, 0.810), "fid": None},
               {"candidate": "spade_ema_b4", "label": "SPADE + EMA, batch 4", "method": "SPADE", "budget": "planned",
                "seeds": [0, 1], "steps": stat(1000, 1000), "train_seconds": stat(600, 610),
                "images_per_s": stat(6.6, 6.5), "miou": stat(64.0, 65.0), "accuracy": stat(90.0, 91.0),
                "miou_ratio": stat(0.774, 0.786), "fid": None}]
    atomic_write_json(reports / "compare_methods.json", {
        "what": "SPADE and OASIS on the built-in landscapes", "cpu": "AMD EPYC", "num_threads": 2, "torch": "2.14.1",
        "runs_at_a_time": 2, "threads_per_run": 1,
        "equal_steps": 500, "reference_candidate": "spade", "runs": runs, "summary": summary})
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8 * 64, 3 * 64, 3), dtype=np.uint8)).save(reports / "generated_grid.png")
    (reports / "data").mkdir()
    Image.fromarray(rng.integers(0, 255, (64, 256, 3), dtype=np.uint8)).save(reports / "data" / "samples.png")


def build_report(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    (root / "reports").mkdir(parents=True)
    write_run_outputs(root)
    cfg = replace(load_config(ROOT / "params.yaml"), tracking={"enabled": False})
    report_stage.run(cfg, root)
    return root / "reports" / "index.html"


def test_page_order_and_content(tmp_path):
    page = build_report(tmp_path).read_text()
    positions = [page.index(f'<section id="{anchor}">') for anchor in ORDER]
    assert positions == sorted(positions), "sections out of order"
    assert re.search(r'<section id="protocol"><details><summary><h2>Protocol</h2></summary>', page)  # closed
    headline = page[positions[0]:positions[1]]
    assert 'data-metric="fid"' in headline and 'data-metric="miou"' in headline and "61.02" in headline
    assert f"<b>FID, KID</b> unavailable: {FID_REASON}" in headline and "judged by pipeline-trained" in headline
    assert 'class="pixels" width="576" height="1536"' in page[positions[1]:positions[2]]  # 64 px tiles x3
    judge = page[positions[2]:positions[3]]
    assert '<tr class="unreliable"><td>bush</td><td>1.0</td><td>5.0</td>' in judge and "not judged reliably" in judge
    assert "<td>OASIS</td>" in page[positions[3]:positions[4]]  # the method column of the runs table
    methods = page[positions[4]:positions[5]]  # scripts/compare_methods.py's results
    for cell in ("<td>SPADE</td><td>equal steps</td><td>0, 1</td><td>500</td>", "<td>0.617 ± 0.017</td>",
                 "<td>OASIS</td><td>equal time</td>", "<td>82.7</td>", "<th>sky</th>", "<td>50.0</td>", "<td>80.0</td>"):
        assert cell in methods, cell
    assert "<td>SPADE + EMA, batch 4</td><td>full schedule</td><td>0, 1</td><td>1000</td>" in methods
    assert "AMD EPYC, 2 runs at a time, 1 thread each" in methods and "-" in methods
    curves = Image.open(tmp_path / "run" / "reports" / "plots" / "training_metrics.png")
    assert curves.width > 500  # the curves from reports/train.json, not the one-line placeholder
    assert json.loads((tmp_path / "run" / "reports" / "headline.json").read_text())["miou"] == 61.02
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page


def test_page_in_a_real_browser(tmp_path, browser_page):
    path = build_report(tmp_path)
    page = browser_page
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    assert page.locator("section").evaluate_all("sections => sections.map(s => s.id)") == ORDER
    tops = [page.locator(f"#{anchor}").bounding_box()["y"] for anchor in ORDER]
    assert tops == sorted(tops)
    assert tops[1] < 900, "the grid starts within the first screen"
    grid = page.locator("#samples img").bounding_box()
    assert grid["width"] >= 3 * 180, f"the grid is shown {grid['width']} px wide"
    assert page.locator('[data-metric="fid"] .value').inner_text() == "-"
    assert page.locator('[data-metric="miou"] .value').inner_text().replace("\n", "") == "61.02%"
    assert page.locator("#protocol dl").is_visible() is False  # collapsed
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    page.locator("#protocol summary").click()
    assert page.locator("#protocol dl").is_visible()
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    with Image.open(tmp_path / "report.png") as screenshot:
        assert screenshot.width == 1440 and screenshot.height > 2000
