"""Checkpoint files: the one place that knows their format, writes them and reads them safely.

Ours (``gaugan-checkpoint-v1``, docs/ARCHITECTURE.md "Checkpoints") is one ``torch.save``
dict: the format tag, the config and dataset spec that built the networks, their state
dicts and, in the resumable ``last.pt``, everything a bit-for-bit continuation on CPU
needs: optimiser and gradient-scaler states, the position in the data order and every
random-number generator state. The official code saves network weights only, so a resume
there restarts Adam and the data order (docs/SPADE.md section 2); its ``latest_net_G.pth``
files (bare state dicts) and the segmenter stage's ``gaugan-segmenter-v1`` files are read
through the same reader.

Reading never runs code: :func:`read_torch_file` is ``torch.load(weights_only=True)``
(tensors, containers, numbers, strings), so a file whose pickle names another Python
object (``os.system``, a class) is refused, and a file that is not a PyTorch checkpoint at
all (text, empty, truncated) gets a message that says what it is. Payloads hold plain data
only; random states are stored as tensors and numbers, not NumPy objects. Writing goes to a
temporary file in the same folder, is fsynced and renamed, so a crash (even kill -9) leaves
the previous complete file or the new complete one.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gaugan.config import Config, config_to_dict, flatten
from gaugan.data.io import OutputMarker, claim_output_dir
from gaugan.errors import UserError

CHECKPOINT_FORMAT = "gaugan-checkpoint-v1"
LAST_CHECKPOINT = "last.pt"
GENERATOR_CHECKPOINT = "generator.pt"
REQUIRED_KEYS = ("config", "spec", "models")
TRAINING_KEYS = ("optimizers", "progress", "rng")  # present in a resumable last.pt only
GENERATION_MODELS = ("G", "G_ema", "E")

# Marks <train.checkpoint_dir> as the project's (gaugan.data.io.claim_output_dir): training
# writes there in place and a rerun continues from it, so it must never be a user's folder.
CHECKPOINT_DIR_MARKER = OutputMarker("checkpoints.json", "gaugan-train-checkpoints-v1", "train.checkpoint_dir")
# What versions before the marker wrote into the folder (fixed history: later files come
# after the marker): checkpoints, the MLflow run file, sample grids, the best generators kept
# during training and how they were chosen, the remains of interrupted saves.
EARLIER_CHECKPOINT_DIR_FILES = ("last.pt", "generator.pt", "run.json", "samples", "selection.json",
                                "generator_best_*.pt", ".*.pt.*.tmp")

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
    "train.cuda_graph",
    "train.label_conv",  # the same function computed another way (float rounding may differ)
    "train.cudnn_benchmark",
    "train.channels_last",  # memory layout: the same maths (float rounding may differ)
    "train.device",
    "train.gpus",  # N processes see exactly the batches one process would
    "train.num_threads",
    "data.num_workers",
    "data.root",
    "data.processed_dir",
    "segmenter.",
    "evaluate.",
    "tracking.",
)

# Wrappers whose prefixes can end up in saved keys: DataParallel / DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
MAX_LISTED_KEYS = 50


class CheckpointError(UserError, ValueError):
    """A checkpoint file cannot be read, is not of the expected kind, or does not fit."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a full disk, a file size limit); the previous file is kept."""


# --------------------------------------------------------------------------------------
# Reading any PyTorch file safely.

# Checkpoints written before random states were stored as tensors hold NumPy's MT19937
# state as an ndarray. These are the constructors of plain arrays and dtypes (no code of
# the file's choosing runs); allowed so that such a last.pt still resumes.
_NUMPY_ARRAY_GLOBALS = [
    np.ndarray.__reduce__(np.zeros(1))[0],  # the array reconstruct function (its module moved in NumPy 2)
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
    type(np.dtype(np.float64)),
]


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that say what the file is.

    Tensors, containers, numbers and strings load; a pickle naming any other Python object
    is refused (unpickling it could run code), naming the object. Every failure is one line:
    torch's warnings about the file and its advice to load with ``weights_only=False`` never
    reach the user.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    not_torch = why_not_a_torch_file(path)
    if not_torch is not None:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({not_torch})")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says it all
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is not None:
            raise CheckpointError(
                f"{path}: refused: the file holds a disallowed Python object ({found.group(1)}) besides tensors and "
                "plain data; loading it could run code. This project never writes such objects: use a checkpoint "
                "from a source you trust"
            ) from err
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_unpickler_reason(err)})") from err
    except EOFError as err:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a damaged one (the file ends early: truncated)") \
            from err
    except Exception as err:  # torch raises RuntimeError, OSError, ... for damaged archives
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint, or a damaged one ({type(err).__name__}: {torch_error_reason(err)})"
        ) from err


def why_not_a_torch_file(path: Path) -> str | None:
    """What the file is, when it is plainly not a ``torch.save`` file; None when it may be one."""
    not_an_archive = why_not_a_zip_archive(path)
    if not_an_archive is None:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                return "a zip archive, but not one written by torch.save (no data.pkl)"
        return None
    with open(path, "rb") as file:
        if file.read(1) == b"\x80":  # a pickle: torch's legacy format or a plain pickle; torch decides
            return None
    return not_an_archive


def why_not_a_zip_archive(path: Path) -> str | None:
    """What the file is, when it is not a complete zip archive (the container of torch.save,
    TorchScript and exported programs alike); None when it is one."""
    with open(path, "rb") as file:
        head = file.read(256)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return "a truncated or damaged zip archive: its end is missing, as after an interrupted copy or write"
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"unrecognised binary content, first bytes {head[:8].hex(' ')}"
    first_line = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"a text file, beginning {first_line!r}"


def _unpickler_reason(err: Exception) -> str:
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].strip().splitlines()
        stopped = detail[0] if detail else "an unknown instruction"
        return f"a pickle torch.save did not write, or a damaged one; the weights-only reader stopped at: {stopped}"
    return torch_error_reason(err)


# What torch adds to its errors: the boilerplate after its zip reader's reason, and lines of
# advice (loading with weights_only=False is never ours to suggest).
_TORCH_BOILERPLATE = ("This is an internal miniz error",)
_TORCH_ADVICE = ("weights_only", "Weights only load failed", "torch.load", "trusted source", "trust the source")


def torch_error_reason(err: BaseException) -> str:
    """The reason in one of torch's errors, in one line without torch's advice or boilerplate.

    TorchScript interpreter errors put the reason last, after the scripted code's traceback
    (as ``RuntimeError: <reason>``: the caller names the error type).
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        lines = [re.sub(r"^\w+: ", "", lines[-1])]
    for line in lines:
        reason = line
        for boilerplate in _TORCH_BOILERPLATE:
            reason = reason.split(boilerplate, 1)[0].strip()
        if reason and not any(advice in reason for advice in _TORCH_ADVICE):
            return reason[:300].rstrip(".")
    return type(err).__name__


# --------------------------------------------------------------------------------------
# Writing.


def atomic_torch_save(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A write that fails (a full disk, a file size limit; torch reports them as "enforce fail
    at inline_container.cc") is a :class:`CheckpointWriteError` naming ``path``: the temporary
    file is removed and the previous ``path`` stays as it was.
    """
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
    except BaseException as err:
        Path(temp_name).unlink(missing_ok=True)
        failure = _write_failure(err)
        if failure is None:
            raise
        reason, error_number = failure
        kept = f"the previous {path.name} is kept unchanged" if path.is_file() else f"no {path.name} was written"
        if error_number in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, None):
            advice = "Free space on that disk (or raise the file size limit) and run again"
        else:
            advice = f"Make {path.parent} writable and run again"
        if path.name == LAST_CHECKPOINT and path.is_file():
            advice += f": training resumes from the kept {path.name}"
        raise CheckpointWriteError(f"{path}: could not write the checkpoint ({reason}); {kept}. {advice}") from err


def _write_failure(err: BaseException) -> tuple[str, int | None] | None:
    """(why, errno) when ``err`` is a failed write: an OSError, or torch's zip writer error
    ("enforce fail at inline_container.cc") with the OSError behind it; None for anything else."""
    if isinstance(err, OSError):
        return err.strerror or str(err), err.errno
    if not (isinstance(err, RuntimeError) and "inline_container.cc" in str(err)):
        return None
    cause = err.__cause__ or err.__context__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return f"torch's writer: {torch_error_reason(err)}", None
    return cause.strerror or str(cause), cause.errno


def claim_checkpoint_dir(folder: str | os.PathLike) -> None:
    """Make ``folder`` (``train.checkpoint_dir``) the project's checkpoint folder before anything
    is written there; a folder of the user's is refused (:func:`gaugan.data.io.claim_output_dir`)."""
    claim_output_dir(folder, CHECKPOINT_DIR_MARKER, "the checkpoints", _earlier_checkpoint_dir)


def _earlier_checkpoint_dir(folder: Path) -> bool:
    """A checkpoint folder of a version before the marker: nothing but its files, and one of
    our checkpoints or sample grids (``samples/step_*.png`` only) among them."""
    names = {entry.name for entry in folder.iterdir()}
    if not all(any(fnmatch.fnmatch(name, pattern) for pattern in EARLIER_CHECKPOINT_DIR_FILES) for name in names):
        return False
    samples = folder / "samples"
    grids = [entry.name for entry in samples.iterdir()] if samples.is_dir() else []
    if "samples" in names and not (grids and all(fnmatch.fnmatch(name, "step_*.png") for name in grids)):
        return False
    return bool(grids) or any(_tagged_as_ours(folder / name) for name in (LAST_CHECKPOINT, GENERATOR_CHECKPOINT))


def _tagged_as_ours(path: Path) -> bool:
    """Whether ``path`` is a torch.save archive whose pickle holds our format tag (another
    project's ``last.pt`` is not), read without unpickling anything or loading its tensors."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        return bool(pickles) and CHECKPOINT_FORMAT.encode() in archive.read(pickles[0])


def remove_stale_temporary_files(folder: Path) -> None:
    """The remains of saves killed mid-write (``.<name>.<random>.tmp``)."""
    for stale in folder.glob(".*.pt.*.tmp"):
        stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# Our format: build, check, load.


def _state(holder: Any) -> Any:
    return holder.state_dict() if hasattr(holder, "state_dict") else holder


def build_checkpoint(
    config: Config | Mapping[str, Any],
    spec: Any,
    models: Mapping[str, Any],
    optimizers: Mapping[str, Any] | None = None,
    scalers: Mapping[str, Any] | None = None,
    progress: Any = None,
    rng: Sequence[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Our checkpoint payload.

    ``models``, ``optimizers`` and ``scalers`` map names (``G``, ``D``, ``E``, ``G_ema``) to
    objects with ``state_dict()`` or to state dicts. ``spec`` is a DatasetSpec or its dict.
    ``progress`` is a :class:`gaugan.train.progress.Progress` (stored as its fields);
    ``rng`` holds one :func:`gaugan.seeding.capture_rng_state` per process. A resumable checkpoint has
    optimizers, progress and rng; a generator-only one (generator.pt, an import) has not.
    """
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "config": config_to_dict(config) if isinstance(config, Config) else dict(config),
        "spec": dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else dict(spec),
        "models": {name: _state(holder) for name, holder in models.items()},
    }
    if optimizers is not None:
        payload["optimizers"] = {name: _state(optimizer) for name, optimizer in optimizers.items()}
        payload["scaler"] = {name: _state(scaler) for name, scaler in scalers.items()} if scalers else None
    if progress is not None:
        payload["progress"] = dataclasses.asdict(progress)
    if rng is not None:
        payload["rng"] = {"per_rank": list(rng)}
    payload.update(extra)
    return payload


def generator_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The final ``generator.pt``: same format, the models for generation only, no optimisers."""
    kept = {key: payload[key] for key in ("format", *REQUIRED_KEYS, "progress") if key in payload}
    kept["models"] = {name: state for name, state in payload["models"].items() if name in GENERATION_MODELS}
    return kept


def is_gaugan_checkpoint(payload: Any) -> bool:
    """Ours (a dict with a format tag) rather than an official bare state dict."""
    return isinstance(payload, dict) and "format" in payload


def validate_payload(payload: Any, path: str | os.PathLike, expected_format: str,
                     required: Sequence[str]) -> dict[str, Any]:
    """``payload`` if it is a dict with ``expected_format`` and every ``required`` key."""
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a {expected_format} file (it holds a {type(payload).__name__})")
    found = payload.get("format")
    if found is None:
        raise CheckpointError(f"{path}: not a {expected_format} file (no format tag: a bare state dict, such as an "
                              "official latest_net_G.pth?)")
    if found != expected_format:
        raise CheckpointError(f"{path}: checkpoint format {found!r} is not supported (expected {expected_format!r})")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete {expected_format} file: no {', '.join(missing)}")
    return payload


def load_checkpoint(path: str | os.PathLike, resumable: bool = False) -> dict[str, Any]:
    """One of our checkpoints, read safely and checked (``resumable``: with the training state)."""
    required = REQUIRED_KEYS + (TRAINING_KEYS if resumable else ())
    return validate_payload(read_torch_file(path), path, CHECKPOINT_FORMAT, required)


def load_for_resume(path: Path) -> dict[str, Any]:
    """``last.pt`` for a continuation; an unusable one says how to start afresh instead."""
    try:
        return load_checkpoint(path, resumable=True)
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}. To start afresh instead, set train.resume=false or delete {path}"
        ) from err


# --------------------------------------------------------------------------------------
# Resume compatibility.

_ABSENT = object()


def _may_differ(key: str) -> bool:
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed))
               for allowed in RESUMABLE_DIFFERENCES)


def _flat_with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    # A key added to the schema after the checkpoint was written: the run trained as that
    # key's default, so the default stands in for it (not a spurious difference).
    return {**flatten(config_to_dict(Config())), **flatten(dict(config))}


def training_config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Flattened config keys whose values differ and that change training, sorted."""
    saved_flat, current_flat = _flat_with_defaults(saved), _flat_with_defaults(current)
    return [
        key for key in sorted(set(saved_flat) | set(current_flat))
        if not _may_differ(key) and saved_flat.get(key, _ABSENT) != current_flat.get(key, _ABSENT)
    ]


def check_resumable(payload: dict[str, Any], config: dict[str, Any], spec: dict[str, Any], path: Path) -> None:
    """Refuse to continue from a checkpoint whose config or dataset spec changes training."""
    differing = training_config_differences(payload["config"], config)
    if differing:
        saved_flat, current_flat = _flat_with_defaults(payload["config"]), _flat_with_defaults(config)

        def shown(flat: dict[str, Any], key: str) -> str:
            return repr(flat[key]) if key in flat else "(not a setting of this version)"

        details = "; ".join(f"{key}: {shown(saved_flat, key)} -> {shown(current_flat, key)}" for key in differing)
        raise CheckpointError(
            f"{path}: cannot resume, the configuration differs in keys that change training: {details}. "
            "Restore those values, or set train.resume=false (or delete the checkpoint) to start afresh."
        )
    if payload.get("spec") != spec:
        raise CheckpointError(
            f"{path}: cannot resume, the dataset spec differs (checkpoint {payload.get('spec')}, "
            f"store {spec}). Set train.resume=false to start afresh."
        )


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
    """Keys without a leading ``module.`` (DataParallel / DDP) or ``_orig_mod.`` (torch.compile).

    The per-module version metadata that ``state_dict()`` attaches is kept (re-keyed too):
    PyTorch's loading hooks use it to convert files written by older versions.
    """
    stripped = OrderedDict((_strip(key), value) for key, value in state_dict.items())
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        stripped._metadata = OrderedDict(  # type: ignore[attr-defined]
            (_strip(name + ".")[:-1] if name else name, value) for name, value in metadata.items()
        )
    return stripped


def load_state_dict_exactly(module: nn.Module, state_dict: Any, source: str | os.PathLike, what: str = "generator",
                            error: type[Exception] = CheckpointError) -> None:
    """``module.load_state_dict(state_dict, strict=True)``, with one key-by-key ``error`` on mismatch.

    Wrapper prefixes are stripped. A missing ``num_batches_tracked`` is tolerated: PyTorch
    fills it for files saved before it existed, as its own strict loading does.
    """
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise error(f"{source}: expected a state dict (names -> tensors) for the {what}")
    state_dict = strip_wrapper_prefixes(state_dict)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source}: the checkpoint does not fit the {what} ({type(module).__name__}, {len(expected)} keys; "
                 f"the file has {len(state_dict)} keys)."]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = items[:MAX_LISTED_KEYS]
                more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
                parts.append(f"  {title} ({len(items)}):\n    " + "\n    ".join(shown) + more)
        raise error("\n".join(parts))
    for key in expected.keys() - state_dict.keys():  # num_batches_tracked only, after the check above
        state_dict[key] = expected[key]
    module.load_state_dict(state_dict, strict=True)
