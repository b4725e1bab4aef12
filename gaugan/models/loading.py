"""A ready generator (and style encoder) from a checkpoint file: ours or the authors'.

Ours (:mod:`gaugan.checkpoint`, docs/ARCHITECTURE.md "Checkpoints") carries the config and
dataset spec that rebuild the networks. The authors' ``latest_net_G.pth`` (docs/SPADE.md
section 1) is a bare state dict and needs the dataset's spec (channel count, size) from the
caller; see :mod:`gaugan.models.official`. Both are read by the same safe reader.

Used by ``gaugan synthesize`` and by evaluation.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from gaugan.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    is_gaugan_checkpoint,
    load_state_dict_exactly,
    read_torch_file,
    validate_payload,
)
from gaugan.config import Config, ConfigError, EncoderConfig, GeneratorConfig, replace
from gaugan.data.registry import DatasetSpec
from gaugan.models import build_encoder, build_generator, published_generator_config
from gaugan.models.encoder import ConvEncoder
from gaugan.models.official import build_official_generator

OFFICIAL_ENCODER_SUFFIX = ("_net_G", "_net_E")  # latest_net_G.pth -> latest_net_E.pth


@dataclass(frozen=True)
class LoadedGenerator:
    """A generator in eval mode on its device, with what is needed to feed it."""

    generator: nn.Module
    config: GeneratorConfig
    spec: DatasetSpec  # label conventions and network size the generator expects
    z_dim: int | None  # None: not a VAE generator
    source: Literal["gaugan", "official"]
    weights: str  # which weights: "G_ema", "G" (ours) or "latest_net_G" (official)
    path: Path

    @property
    def label_channels(self) -> int:
        return self.spec.label_channels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.spec.image_size


def load_generator(
    path: str | os.PathLike,
    spec: DatasetSpec | None = None,
    prefer_ema: bool = True,
    device: torch.device | str = "cpu",
) -> LoadedGenerator:
    """One of our checkpoints or an official ``latest_net_G.pth`` -> a ready generator.

    Ours: the networks are rebuilt from the checkpoint's own config and spec (``spec`` is
    not used: the checkpoint's is the truth, e.g. for a custom dataset's inferred classes);
    ``G_ema`` is used when ``prefer_ema`` and the checkpoint has it. Official: ``spec`` is
    required (the file carries no channel count or size) and the generator is built at
    the published configuration of ``spec.name``.
    """
    path = Path(path)
    payload = read_torch_file(path)
    if is_gaugan_checkpoint(payload):
        loaded = _load_ours(path, payload, prefer_ema)
    else:
        if spec is None:
            raise CheckpointError(
                f"{path}: an official (plain state dict) checkpoint carries no channel count or size; "
                f"name the dataset it was trained on"
            )
        official = build_official_generator(
            path, spec.label_channels, spec.image_size, published_generator_config(spec.name), spec.name
        )
        loaded = LoadedGenerator(official.generator, official.config, spec, official.z_dim, "official",
                                 path.stem, path)
    loaded.generator.to(device).eval()
    return loaded


def _load_ours(path: Path, payload: dict[str, Any], prefer_ema: bool) -> LoadedGenerator:
    validate_payload(payload, path, CHECKPOINT_FORMAT, ("config", "spec"))
    config = checkpoint_config(path, payload)
    saved_spec = checkpoint_spec(path, payload)
    models = payload.get("models")
    if not isinstance(models, dict) or "G" not in models:
        raise CheckpointError(f"{path}: the checkpoint has no generator weights (models['G'])")
    name = "G_ema" if prefer_ema and "G_ema" in models else "G"
    z_dim = config.encoder.z_dim if config.encoder.use_vae else None
    try:
        generator = build_generator(config.generator, saved_spec.label_channels, saved_spec.image_size, z_dim)
    except ConfigError as err:
        raise CheckpointError(f"{path}: cannot rebuild the generator from the checkpoint's config: {err}") from err
    load_state_dict_exactly(generator, models[name], f"{path} (models[{name!r}])")
    return LoadedGenerator(generator, config.generator, saved_spec, z_dim, "gaugan", name, path)


def checkpoint_config(path: Path, payload: dict[str, Any]) -> Config:
    """The generator and encoder sections of a checkpoint's config over today's defaults.

    Only the sections that shape the networks are read, so a checkpoint stays loadable when
    unrelated config keys are added later; unknown keys in these sections are an error.
    """
    saved = payload.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: the checkpoint has no config mapping")
    try:
        return replace(Config(), generator=dict(saved.get("generator", {})), encoder=dict(saved.get("encoder", {})))
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the checkpoint's config is not valid for this version: {err}") from err


def checkpoint_spec(path: Path, payload: dict[str, Any]) -> DatasetSpec:
    saved = payload.get("spec")
    names = {f.name for f in dataclasses.fields(DatasetSpec)}
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: the checkpoint has no dataset spec")
    unknown = sorted(set(saved) - names)
    if unknown:
        raise CheckpointError(f"{path}: unknown dataset spec field(s) {', '.join(unknown)} in the checkpoint")
    try:
        return DatasetSpec(**saved)
    except TypeError as err:
        raise CheckpointError(f"{path}: incomplete dataset spec in the checkpoint ({err})") from err


def load_encoder(path: str | os.PathLike, device: torch.device | str = "cpu") -> ConvEncoder:
    """The VAE style encoder that belongs to the generator checkpoint ``path``, in eval mode.

    Ours: ``models["E"]`` of the same file. Official: ``latest_net_E.pth`` next to
    ``latest_net_G.pth`` (its width and z size are read from the file).
    """
    path = Path(path)
    payload = read_torch_file(path)
    if is_gaugan_checkpoint(payload):
        validate_payload(payload, path, CHECKPOINT_FORMAT, ("config", "spec"))
        config = checkpoint_config(path, payload)
        models = payload.get("models") or {}
        if not config.encoder.use_vae or "E" not in models:
            raise CheckpointError(f"{path}: the checkpoint has no style encoder (encoder.use_vae was false)")
        encoder = build_encoder(config.encoder)
        load_state_dict_exactly(encoder, models["E"], f"{path} (models['E'])", what="encoder")
        return encoder.to(device).eval()
    old, new = OFFICIAL_ENCODER_SUFFIX
    if old not in path.stem:
        raise CheckpointError(f"{path}: cannot locate the official encoder file (expected a name like latest{old}.pth)")
    encoder_path = path.with_name(path.stem.replace(old, new) + path.suffix)
    state = read_torch_file(encoder_path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{encoder_path}: not a state dict")
    encoder = build_encoder(_official_encoder_config(state))
    load_state_dict_exactly(encoder, state, encoder_path, what="encoder")
    return encoder.to(device).eval()


def _official_encoder_config(state: dict[str, torch.Tensor]) -> EncoderConfig:
    """nef, z_dim and spectral norm as the official encoder file shows them."""
    changes: dict[str, Any] = {"use_vae": True}
    first = state.get("layer1.0.weight_orig", state.get("layer1.0.weight"))
    if first is not None:
        changes["nef"] = int(first.shape[0])
        changes["use_spectral_norm"] = "layer1.0.weight_orig" in state
    if "fc_mu.weight" in state:
        changes["z_dim"] = int(state["fc_mu.weight"].shape[0])
    return dataclasses.replace(EncoderConfig(), **changes)
