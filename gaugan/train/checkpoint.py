"""Checkpoints: the resumable ``last.pt`` and the final ``generator.pt`` (docs/ARCHITECTURE.md).

The official code saves only network weights, so a resume restarts Adam and the data order
(REFERENCE.md section 2). Ours holds everything a bit-for-bit continuation needs on CPU:
networks (G, D, E, EMA), optimiser and gradient-scaler states, the position in the data
order, every random-number generator state and the config that produced it. Files are
written to a temporary name in the same folder and renamed, so a crash (even kill -9)
leaves either the previous complete checkpoint or the new complete one.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugan.config import flatten
from gaugan.errors import UserError

CHECKPOINT_FORMAT = "gaugan-checkpoint-v1"
LAST_CHECKPOINT = "last.pt"
GENERATOR_CHECKPOINT = "generator.pt"

# Keys that may change between an interrupted run and its continuation: they change how
# often things are logged or saved, where, how fast, or when to stop, but not the maths
# of a training step. Everything else must match (prefix match on the flattened keys).
RESUMABLE_DIFFERENCES = (
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.checkpoint_dir",
    "train.resume",
    "train.max_steps",
    "train.compile",
    "train.cudnn_benchmark",
    "train.channels_last",  # memory layout: the same maths (float rounding may differ)
    "train.device",
    "train.num_threads",
    "data.num_workers",
    "data.root",
    "data.processed_dir",
    "segmenter.",
    "evaluate.",
    "tracking.",
)


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be read or does not fit the current configuration."""


def atomic_torch_save(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary output file
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read one of our checkpoints (on CPU) and check its format tag."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format {found!r})")
    return payload


def training_config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Flattened config keys whose values differ and that change training, sorted."""
    saved_flat, current_flat = flatten(saved), flatten(current)
    differing = []
    for key in sorted(set(saved_flat) | set(current_flat)):
        if any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in RESUMABLE_DIFFERENCES):
            continue
        if saved_flat.get(key, "<missing>") != current_flat.get(key, "<missing>"):
            differing.append(key)
    return differing


def check_resumable(payload: dict[str, Any], config: dict[str, Any], spec: dict[str, Any], path: Path) -> None:
    """Refuse to continue from a checkpoint whose config or dataset spec changes training."""
    differing = training_config_differences(payload["config"], config)
    if differing:
        saved_flat, current_flat = flatten(payload["config"]), flatten(config)
        details = "; ".join(f"{k}: {saved_flat.get(k)!r} -> {current_flat.get(k)!r}" for k in differing)
        raise CheckpointError(
            f"{path}: cannot resume, the configuration differs in keys that change training: {details}. "
            "Restore those values, or set train.resume=false (or delete the checkpoint) to start afresh."
        )
    if payload.get("spec") != spec:
        raise CheckpointError(
            f"{path}: cannot resume, the dataset spec differs (checkpoint {payload.get('spec')}, "
            f"store {spec}). Set train.resume=false to start afresh."
        )


# ---- random-number generator states ----


def capture_rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            torch.cuda.set_rng_state(cuda_states[0])


def generator_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The final ``generator.pt``: same format, models for generation only, no optimisers."""
    models = {name: state for name, state in payload["models"].items() if name in ("G", "G_ema", "E")}
    return {
        "format": CHECKPOINT_FORMAT,
        "config": payload["config"],
        "spec": payload["spec"],
        "models": models,
        "progress": payload["progress"],
    }
