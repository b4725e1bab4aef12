"""Shared by the training tests: a tiny configuration, its store, checkpoint comparison."""

from __future__ import annotations

from pathlib import Path

import torch

from gaugan import checkpoint as ckpt
from gaugan.config import Config, replace
from pipeline.params import load_config
from stages import download as download_stage
from stages import preprocess as preprocess_stage

ROOT = Path(__file__).resolve().parents[1]


def tiny_train_config(size: int = 32, **train: object) -> Config:
    """32x32 landscapes (8 train images), ngf/ndf 8, global batch 2: 4 steps per epoch."""
    return replace(
        load_config(ROOT / "params.yaml"),
        data={"builtin": {"num_train": 8, "num_val": 4, "size": size, "seed": 0}, "num_workers": 0},
        generator={"ngf": 8, "spade_hidden": 16},
        discriminator={"ndf": 8},
        encoder={"nef": 8, "z_dim": 16},
        optim={"num_epochs_constant": 1, "num_epochs_decay": 2},
        train={"batch_size": 2, "max_steps": 6, "log_every": 2, "sample_every": 100, "checkpoint_every": 100,
               "device": "cpu", **train},
        tracking={"enabled": False},
    )


def make_store(root: Path, size: int = 32) -> Path:
    cfg = tiny_train_config(size)
    download_stage.run(cfg, root, progress=False)
    preprocess_stage.run(cfg, root)
    return root / cfg.data.processed_dir


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's models and optimiser states, by a flat name."""
    payload = ckpt.read_torch_file(path)
    flat = {}
    for model, state in payload["models"].items():
        flat.update({f"{model}.{key}": value for key, value in state.items()})
    for name, state in payload.get("optimizers", {}).items():
        for index, param_state in state["state"].items():
            flat.update({f"opt{name}.{index}.{key}": value for key, value in param_state.items()})
    return flat


def assert_identical(path_a: Path, path_b: Path) -> None:
    a, b = checkpoint_tensors(path_a), checkpoint_tensors(path_b)
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
