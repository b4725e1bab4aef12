"""Device settings that make a training step fast without changing its maths.

- CUDA: bf16 (or fp16) autocast with fp32 master weights, cuDNN autotuning. Spectral
  normalisation's power iteration runs with autocast switched off (CUDA autocast would
  run its matrix-vector products in bf16 and store the vectors from them); the losses
  reduce in fp32 (gaugan.losses).
- CPU: plain fp32. The largest CPU cost outside the convolutions measured here was the
  allocator: glibc returns every large freed block (an activation of 16 MB at 64x64) to the
  kernel and takes it back, zero-filled page by page, on the next step. Raising glibc's
  mmap / trim thresholds keeps those blocks in the process (a classic CPU-training setting,
  as with jemalloc/tcmalloc); it changes no number that is computed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 2**31 - 1  # keep freed memory (the largest C int: mallopt's value is an int)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16/fp16 autocast on CUDA only; the CPU path is plain fp32 (exact and predictable)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def keep_freed_memory() -> bool:
    """Tell glibc malloc to keep large freed blocks (see the module docstring); False if not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # The value is a C int, and ctypes wraps a larger one without a word: 1 << 34 was once
    # passed as the trim threshold, arrived as 0, and glibc handed back every freed block.
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    ok &= mallopt(_M_TOP_PAD, 64 * 1024 * 1024) == 1
    return bool(ok)


class WrappedHook:
    """A forward pre-hook wrapped to run differently; attributes (name, dim, eps, ...) are the hook's."""

    def __init__(self, hook: Callable) -> None:
        self.hook = hook

    def __getattr__(self, name: str):
        hook = self.__dict__.get("hook")  # absent while copy/pickle rebuilds the object
        if hook is None:
            raise AttributeError(name)
        return getattr(hook, name)


class SpectralNormWithoutAutocast(WrappedHook):
    """A spectral-norm forward pre-hook run with autocast off: u, v and sigma in fp32."""

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        device_type = inputs[0].device.type if inputs and isinstance(inputs[0], torch.Tensor) else "cuda"
        with torch.autocast(device_type=device_type, enabled=False):
            self.hook(module, inputs)


def spectral_norm_in_fp32(module: nn.Module) -> int:
    """Make every ``torch.nn.utils.spectral_norm`` below ``module`` compute in fp32 under autocast.

    Returns the number of hooks changed. The normalised weight is then cast to bf16 by the
    convolution itself, like any other fp32 weight under autocast.
    """
    count = 0
    for layer in module.modules():
        for key, hook in list(layer._forward_pre_hooks.items()):
            if isinstance(hook, SpectralNorm):
                layer._forward_pre_hooks[key] = SpectralNormWithoutAutocast(hook)
                count += 1
    return count


def configure_device(device: torch.device, cudnn_benchmark: bool) -> None:
    """Process-wide settings for training on ``device``."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
    else:
        keep_freed_memory()


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak resident set (ru_maxrss)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
