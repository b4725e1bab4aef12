"""Tiny studio models and a real server in a thread, shared by the studio's API and browser tests."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from starlette.applications import Starlette

from gaugan.checkpoint import build_checkpoint
from gaugan.config import Config, replace
from gaugan.data.registry import DatasetSpec, published_spec
from gaugan.data.semantic import semantic_input
from gaugan.models import build_encoder, build_generator
from gaugan.studio.server import make_server, open_socket, url_of


def landscapes_spec(size: int = 32) -> DatasetSpec:
    """The built-in landscapes (10 classes + instance edges) at ``size`` x ``size``."""
    return dataclasses.replace(published_spec("landscapes"), load_size=size, crop_size=size)


def dontcare_spec(size: int = 32) -> DatasetSpec:
    """A custom dataset with a don't-care value: 5 classes, raw value 255 stored as index 5, instance edges."""
    return DatasetSpec("custom", 5, True, 255, True, size, size, 1.0, "fixed", comparable_to_paper=False)


def coco_spec(size: int = 32) -> DatasetSpec:
    """COCO-Stuff (182 classes, raw 255 stored as the don't-care index 182, instance edges) at ``size``."""
    return dataclasses.replace(published_spec("coco"), load_size=size, crop_size=size)


def tiny_config(use_vae: bool = False, noise: bool = False) -> Config:
    """Tiny SPADE networks; ``noise``: the OASIS generator with 4 channels of 3D noise."""
    generator = {"arch": "oasis", "noise_channels": 4} if noise else {}
    return replace(Config(), generator={"ngf": 8, "spade_hidden": 16, **generator},
                   encoder={"nef": 8, "z_dim": 16, "use_vae": use_vae})


def write_checkpoint(path: Path, spec: DatasetSpec, use_vae: bool = False, seed: int = 0, noise: bool = False) -> Path:
    """A tiny generator (and encoder) in our checkpoint format, with weights that make every label visible.

    Initial weights are near zero (the published init); larger ones make the photo depend
    clearly on the label map, z or the 3D noise and the style, which the tests compare.
    """
    cfg = tiny_config(use_vae, noise)
    z_dim = cfg.encoder.z_dim if use_vae else None
    torch.manual_seed(seed)
    generator = build_generator(cfg.generator, spec.label_channels, spec.image_size, z_dim)
    with torch.no_grad():
        for parameter in generator.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.15)
        height, width = spec.image_size
        labels = torch.randint(0, spec.num_label_values, (4, height, width))
        seg = semantic_input(labels, spec.num_label_values, labels if spec.use_instance else None)
        generator.train()(seg, torch.randn(4, z_dim) if use_vae else None)  # running statistics off their init
    models = {"G": generator.state_dict()}
    if use_vae:
        models["E"] = build_encoder(cfg.encoder).state_dict()
    torch.save(build_checkpoint(cfg, spec, models), path)
    return path


@contextlib.contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its URL."""
    listener = open_socket("127.0.0.1", 0)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the studio server did not start")
        time.sleep(0.02)
    try:
        yield url_of(listener)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
