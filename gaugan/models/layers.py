"""Small building blocks shared by the networks: optional spectral norm, conv + plain norm.

Spectral normalisation (Miyato et al. 2018) uses ``torch.nn.utils.spectral_norm``, the
hook-based API, on purpose: it stores ``weight_orig`` / ``weight_u`` / ``weight_v``, the
state-dict keys of the official checkpoints (docs/SPADE.md section 1). The newer
parametrization API names them ``parametrizations.weight.original`` and would break loading
the authors' pretrained files.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

ConvLayer = nn.Conv2d | nn.ConvTranspose2d


def maybe_spectral_norm(layer: nn.Module, enabled: bool) -> nn.Module:
    """``layer`` with spectral normalisation of its weight when ``enabled``."""
    return nn.utils.spectral_norm(layer) if enabled else layer


def conv_norm(conv: ConvLayer, use_spectral_norm: bool, norm: Literal["instance", "none"]) -> nn.Module:
    """A convolution followed by a parameter-free instance norm (the official "spectralinstance").

    With a norm, the convolution's bias is dropped: the norm subtracts the mean right after,
    so a bias could never have an effect (the official code deletes it as well, which is why
    its checkpoints have no ``bias`` key for these layers). Returns the bare (possibly
    spectral-normed) convolution for ``norm="none"``, else ``Sequential(conv, norm)`` -- the
    nesting that gives official key names such as ``model1.0.0.weight_orig``.
    """
    if norm not in ("instance", "none"):
        raise ValueError(f"norm: got {norm!r}, expected 'instance' or 'none'")
    if norm != "none" and conv.bias is not None:
        conv.register_parameter("bias", None)
    conv = maybe_spectral_norm(conv, use_spectral_norm)
    if norm == "none":
        return conv
    out_channels = conv.out_channels
    return nn.Sequential(conv, nn.InstanceNorm2d(out_channels, affine=False))
