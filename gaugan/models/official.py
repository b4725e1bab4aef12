"""Loading the authors' pretrained generators (``latest_net_G.pth``; docs/SPADE.md section 1).

An official checkpoint is a plain state dict saved from the CPU: no config, no channel
count, no image size. The networks here use the official submodule names and PyTorch's
hook-based spectral norm, so the file loads with ``strict=True`` into a
:class:`~gaugan.models.generator.SPADEGenerator` built for the dataset's channel count at
the published configuration. Any disagreement is reported key by key (missing, unexpected,
shape mismatches with both shapes) in one error naming the file; files are read by
:func:`gaugan.checkpoint.read_torch_file`, which never runs pickled code.

What a state dict can tell about the network that built it (width, VAE, "most", SPADE
kernel and hidden width, batch vs instance norm, spectral norm) is read from the file, so a
model trained with the official code at other settings loads too; what it cannot tell
("normal" vs "more" upsamplings change no weight) comes from the published configuration
of the dataset or from the caller.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import Tensor

from gaugan.checkpoint import CheckpointError, load_state_dict_exactly, read_torch_file, strip_wrapper_prefixes
from gaugan.config import GeneratorConfig
from gaugan.models.generator import SPADEGenerator


def official_structure(state_dict: dict[str, Tensor], base: GeneratorConfig) -> tuple[GeneratorConfig, int | None,
                                                                                     int | None]:
    """(generator config, z_dim or None, label channels or None) as far as the file shows them.

    Fields the file cannot show keep ``base``'s values. Keys that are absent leave the
    corresponding field alone; the strict load then reports them.
    """
    state = strip_wrapper_prefixes(state_dict)
    changes: dict[str, Any] = {"arch": "spade"}
    if "head_0.conv_0.weight_orig" in state:
        changes["use_spectral_norm"] = True
    elif "head_0.conv_0.weight" in state:
        changes["use_spectral_norm"] = False
    conv = state.get("head_0.conv_0.weight_orig", state.get("head_0.conv_0.weight"))
    if conv is not None and conv.dim() == 4 and conv.shape[0] % 16 == 0:
        changes["ngf"] = conv.shape[0] // 16
    if any(k.startswith("up_4.") for k in state):
        changes["num_upsampling_layers"] = "most"
    elif base.num_upsampling_layers == "most":
        changes["num_upsampling_layers"] = "normal"
    if "head_0.norm_0.param_free_norm.running_mean" in state:
        if base.param_free_norm == "instance":
            changes["param_free_norm"] = "syncbatch"
    elif "head_0.norm_0.mlp_shared.0.weight" in state:
        changes["param_free_norm"] = "instance"
    label_channels = None
    shared = state.get("head_0.norm_0.mlp_shared.0.weight")
    if shared is not None and shared.dim() == 4:
        hidden, label_channels, kernel, _ = shared.shape
        changes["spade_hidden"] = int(hidden)
        if kernel in (1, 3, 5):
            changes["spade_kernel_size"] = int(kernel)
    z_dim = None
    fc = state.get("fc.weight")
    if fc is not None and fc.dim() == 2:  # VAE: fc is Linear(z_dim -> 16 ngf sh sw)
        z_dim = int(fc.shape[1])
    elif fc is not None and fc.dim() == 4 and label_channels is None:
        label_channels = int(fc.shape[1])
    return dataclasses.replace(base, **changes), z_dim, label_channels


@dataclasses.dataclass(frozen=True)
class OfficialGenerator:
    generator: SPADEGenerator
    config: GeneratorConfig
    z_dim: int | None


def build_official_generator(
    path: str | os.PathLike,
    label_channels: int,
    image_size: tuple[int, int] = (256, 256),
    config: GeneratorConfig | None = None,
    dataset: str | None = None,
    infer_structure: bool = True,
) -> OfficialGenerator:
    """Like :func:`load_official_generator`, also returning the config and z_dim it used."""
    state = read_torch_file(path)
    if not isinstance(state, dict) or "format" in state:
        raise CheckpointError(
            f"{path}: not an official state-dict checkpoint (a plain mapping of names to tensors, "
            f"such as checkpoints/<name>/latest_net_G.pth)"
        )
    base = config or GeneratorConfig()
    structure, z_dim, file_channels = official_structure(state, base)
    if not infer_structure:  # the given settings are the specification; the file is checked against them
        structure = base
    if file_channels is not None and file_channels != label_channels:
        where = f"dataset {dataset!r}" if dataset else "the dataset"
        raise CheckpointError(
            f"{path}: this generator was trained on {file_channels} label channels but {where} gives "
            f"{label_channels} (label_nc + don't-care + instance edge channel); use the dataset the "
            f"checkpoint was trained on (--dataset / data.dataset)"
        )
    generator = SPADEGenerator(structure, label_channels, image_size, z_dim)
    load_state_dict_exactly(generator, state, path)
    return OfficialGenerator(generator, structure, z_dim)


def load_official_generator(
    path: str | os.PathLike,
    label_channels: int,
    image_size: tuple[int, int] = (256, 256),
    config: GeneratorConfig | None = None,
    dataset: str | None = None,
    infer_structure: bool = True,
) -> SPADEGenerator:
    """An official ``latest_net_G.pth`` -> a ready :class:`SPADEGenerator` (eval mode, CPU).

    ``label_channels`` is the dataset's channel count (151 ADE20K, 184 COCO-Stuff, 36
    Cityscapes); ``image_size`` (H, W) its network size (256x256; 256x512 for Cityscapes,
    with ``config.num_upsampling_layers="more"``, see
    :func:`gaugan.models.published_generator_config`). ``config`` (default: the published
    one) is the base; with ``infer_structure`` the fields the file shows (width, "most",
    norms, SPADE kernel / hidden width, spectral norm) are taken from it, without it the file
    must match ``config`` exactly. Whether G is a VAE generator (and its z_dim) is always read
    from ``fc.weight``. Mismatches raise :class:`CheckpointError`, key by key.
    """
    loaded = build_official_generator(path, label_channels, image_size, config, dataset, infer_structure)
    loaded.generator.eval()
    return loaded.generator
