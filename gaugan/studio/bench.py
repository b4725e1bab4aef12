"""Generation latency of the studio, measured through the real application.

Each request goes the whole way a browser's does, in process: multipart upload of a label
PNG, validation and decoding, the generator on the device, PNG encoding of the photo, the
response. Requests are timed one after another after a warm-up; the result records the
machine (CPU model, threads, torch version, load average), because on a shared machine the
numbers move with the load.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gaugan.config import GeneratorConfig
from gaugan.data.classes import label_palette
from gaugan.data.registry import DatasetSpec
from gaugan.models import build_generator
from gaugan.models.loading import LoadedGenerator
from gaugan.studio.app import create_app
from gaugan.studio.service import label_png
from gaugan.threads import cpu_model


def random_generator(cfg: GeneratorConfig, spec: DatasetSpec, device: torch.device, seed: int = 0) -> LoadedGenerator:
    """A generator of this configuration with its initial (random) weights: latency does not depend on them."""
    torch.manual_seed(seed)
    generator = build_generator(cfg, spec.label_channels, spec.image_size).to(device).eval()
    return LoadedGenerator(generator, cfg, spec, None, "gaugan", "random initialisation", Path("(none)"))


def blocky_labels(spec: DatasetSpec, seed: int = 0, cells: int = 8) -> np.ndarray:
    """A label map of ``cells`` x ``cells`` blocks of random classes at the network size."""
    rng = np.random.default_rng(seed)
    height, width = spec.image_size
    grid = rng.integers(0, spec.num_label_values, (cells, cells))
    rows = np.arange(height) * cells // height
    columns = np.arange(width) * cells // width
    return grid[rows[:, None], columns[None, :]]


def time_requests(app: Starlette, label: bytes, num_requests: int, warmup: int) -> dict[str, Any]:
    """Latency of ``num_requests`` POST /api/generate after ``warmup`` untimed ones (milliseconds)."""
    files = {"label": ("label.png", label, "image/png")}
    latencies, device_times = [], []
    with TestClient(app) as client:
        for index in range(warmup + num_requests):
            start = time.perf_counter()
            response = client.post("/api/generate", files=files)
            elapsed = (time.perf_counter() - start) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"POST /api/generate answered {response.status_code}: {response.text}")
            if index >= warmup:
                latencies.append(elapsed)
                device_times.append(float(response.headers["Server-Timing"].split("dur=")[1]))
    return {
        "median_ms": statistics.median(latencies),
        "p90_ms": float(np.percentile(latencies, 90)),
        "generator_median_ms": statistics.median(device_times),
        "latencies_ms": [round(value, 2) for value in latencies],
    }


def benchmark_studio(
    loaded: LoadedGenerator, device: torch.device, labels: np.ndarray, num_requests: int, warmup: int, repeats: int
) -> dict[str, Any]:
    """``repeats`` runs of :func:`time_requests` through one app; the median run's numbers lead."""
    if num_requests < 1 or warmup < 0 or repeats < 1:
        raise ValueError(f"need requests >= 1, warmup >= 0, repeats >= 1; got {num_requests}, {warmup}, {repeats}")
    app = create_app(loaded, loaded.spec, None, device)
    label = label_png(labels, label_palette(loaded.spec.num_label_values, loaded.spec.name))
    load_before = [round(value, 2) for value in os.getloadavg()]
    runs = [time_requests(app, label, num_requests, warmup) for _ in range(repeats)]
    ranked = sorted(runs, key=lambda run: run["median_ms"])
    spec = loaded.spec
    return {
        "median_ms": ranked[(len(ranked) - 1) // 2]["median_ms"],
        "p90_ms": ranked[(len(ranked) - 1) // 2]["p90_ms"],
        "run_medians_ms": [round(run["median_ms"], 2) for run in runs],
        "run_p90s_ms": [round(run["p90_ms"], 2) for run in runs],
        "generator_median_ms": [round(run["generator_median_ms"], 2) for run in runs],
        "runs": runs,
        "image_size": list(spec.image_size),
        "label_channels": spec.label_channels,
        "generator": {"arch": loaded.config.arch, "ngf": loaded.config.ngf, "spade_hidden": loaded.config.spade_hidden,
                      "param_free_norm": loaded.config.param_free_norm, "weights": loaded.weights,
                      "checkpoint": str(loaded.path),
                      "parameters": sum(p.numel() for p in loaded.generator.parameters())},
        "requests_per_run": num_requests,
        "warmup_requests": warmup,
        "repeats": repeats,
        "device": str(device),
        "load_average_before": load_before,
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
    }


def machine() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def landscape_labels(spec: DatasetSpec) -> np.ndarray:
    """A built-in landscape's label map at the network size (a realistic scene for the 64x64 model)."""
    from gaugan.data.builtin import generate_landscape

    height, width = spec.image_size
    label = generate_landscape(0, "val", 0, size=max(height, width)).label
    return np.asarray(Image.fromarray(label.astype(np.uint8)).resize((width, height), Image.Resampling.NEAREST))

