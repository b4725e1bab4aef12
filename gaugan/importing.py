"""Importing the authors' pretrained generator into our checkpoint format.

The official ``latest_net_G.pth`` (docs/SPADE.md section 1) is a bare state dict: it does not
say which dataset, size or generator settings it belongs to. The imported file is one of
ours (docs/ARCHITECTURE.md "Checkpoints": format tag, config, dataset spec, models), so
``gaugan synthesize``, the generate stage and anything else that reads ``generator.pt``
take it without being told the dataset again. The structure (width, upsamplings, norms,
VAE or not) is read from the file by :mod:`gaugan.models.official`; the dataset's
published spec supplies the channels and size. With a VAE generator, the style encoder
``latest_net_E.pth`` next to it is imported too.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from gaugan.checkpoint import CHECKPOINT_FORMAT, CheckpointError, atomic_torch_save, build_checkpoint
from gaugan.config import Config, EncoderConfig, replace
from gaugan.data.io import file_digest
from gaugan.data.registry import DatasetSpec
from gaugan.models import count_parameters
from gaugan.models.encoder import ConvEncoder
from gaugan.models.loading import load_encoder, load_generator


def _encoder_config(encoder: ConvEncoder) -> EncoderConfig:
    """The settings that rebuild ``encoder``, read from its layers."""
    state = encoder.state_dict()
    return dataclasses.replace(
        EncoderConfig(), use_vae=True, nef=encoder.fc_mu.in_features // (8 * 4 * 4),
        z_dim=encoder.fc_mu.out_features, use_spectral_norm="layer1.0.weight_orig" in state,
    )


def import_official_generator(source: str | os.PathLike, destination: str | os.PathLike,
                              spec: DatasetSpec) -> dict[str, Any]:
    """Convert ``source`` (an official ``latest_net_G.pth`` for ``spec``'s dataset) into ours.

    Writes ``destination`` atomically, reads it back to check that it rebuilds the same
    weights, and returns a summary (settings read from the file, parameter count).
    """
    source, destination = Path(source), Path(destination)
    loaded = load_generator(source, spec=spec)
    if loaded.source != "official":
        raise CheckpointError(f"{source}: already one of our checkpoints (format {CHECKPOINT_FORMAT}); nothing to import")
    models: dict[str, Any] = {"G": {k: v.detach().cpu() for k, v in loaded.generator.state_dict().items()}}
    encoder_config = dataclasses.replace(EncoderConfig(), use_vae=False)
    if loaded.z_dim is not None:
        encoder = load_encoder(source)
        encoder_config = _encoder_config(encoder)
        models["E"] = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    config = replace(Config(), data={"dataset": spec.name}, generator=dataclasses.asdict(loaded.config),
                     encoder=dataclasses.asdict(encoder_config))
    payload = build_checkpoint(config, spec, models, imported_from={"path": str(source), "sha256": file_digest(source)})
    atomic_torch_save(payload, destination)

    reloaded = load_generator(destination)
    for key, value in reloaded.generator.state_dict().items():
        if not value.equal(models["G"][key]):
            destination.unlink()
            raise CheckpointError(f"{destination}: the imported weights do not read back identically ({key}); removed")
    return {
        "destination": str(destination),
        "dataset": spec.name,
        "generator": dataclasses.asdict(loaded.config),
        "vae": loaded.z_dim is not None,
        "parameters": count_parameters(reloaded.generator),
    }
