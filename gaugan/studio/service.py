"""The studio's model: loaded once, used by one request at a time.

Every use of the device (generation, loading and running the segmenter) holds one lock,
so concurrent requests are served in turn and never race on the GPU; the model's request
queue (:mod:`.queue`) bounds how many requests wait for it. A request whose client has
gone (the page cancels a stale generation when the label map changes again) is dropped
when its turn comes instead of occupying the device.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils import remove_spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm

from gaugan.data.classes import class_table
from gaugan.data.io import read_image
from gaugan.data.registry import DatasetSpec
from gaugan.errors import UserError
from gaugan.models.encoder import ConvEncoder
from gaugan.models.loading import LoadedGenerator
from gaugan.segmenters.base import Segmenter
from gaugan.studio.inputs import LabelInput, NamedBytes
from gaugan.studio.queue import RequestQueue
from gaugan.studio.segment import SegmenterUnavailable, labels_from_photo
from gaugan.synthesize import style_tensor, synthesize_image
from gaugan.threads import cpu_model

MAX_LABEL_VALUES = 256  # the page paints 8-bit class indices

SegmenterLoader = Callable[[], Segmenter]


class StudioSetupError(UserError, ValueError):
    """The model cannot be served by the studio as it is."""


@dataclass(frozen=True)
class Generated:
    png: bytes
    milliseconds: float  # time on the device: the generator's forward pass and the copy back


def device_description(device: torch.device) -> str:
    """What the page shows: the GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({cpu_model()}, {threads} thread{'s' if threads > 1 else ''})"


def prepare_for_inference(generator: nn.Module) -> int:
    """Fold spectral normalisation into the weights and switch to channels-last; returns how many were folded.

    In eval mode the spectral-norm hook divides each weight by the same sigma on every call
    (no power iteration); folding it once gives the same weights (identical photos in the
    tests) without that work per request. Both together took a 64x64 CPU forward from
    about 44 to 31 ms in alternating runs on this project's 2-core CPU.
    """
    folded = 0
    for module in generator.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, SpectralNorm):
                remove_spectral_norm(module, hook.name)
                folded += 1
                break
    generator.to(memory_format=torch.channels_last)
    return folded


def label_png(labels: np.ndarray, palette: np.ndarray) -> bytes:
    """Label indices -> an 8-bit palette PNG: the values are the indices, the colours the class table's.

    The palette is padded to 256 entries: Pillow writes fewer bits per pixel for short palettes.
    """
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    padded = np.zeros((256, 3), np.uint8)
    padded[: len(palette)] = palette
    image.putpalette(padded.reshape(-1).tolist())
    return encode_png(image)


def instance_png(ids: np.ndarray) -> bytes:
    """Instance ids (< 65536) -> a 16-bit greyscale PNG."""
    return encode_png(Image.fromarray(ids.astype(np.uint16)))


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # latency over size: these stay on this machine
    return buffer.getvalue()


class StudioService:
    """The generator (and style encoder, segmenter) of one studio, behind one device lock and one request queue."""

    def __init__(
        self,
        loaded: LoadedGenerator,
        spec: DatasetSpec,
        device: torch.device,
        segmenter_loader: SegmenterLoader | None = None,
        encoder: ConvEncoder | None = None,
        manifest: dict | None = None,
    ) -> None:
        if spec.num_label_values > MAX_LABEL_VALUES:
            raise StudioSetupError(
                f"dataset {spec.name!r} has {spec.num_label_values} label values; the studio paints 8-bit "
                f"indices (at most {MAX_LABEL_VALUES})"
            )
        prepare_for_inference(loaded.generator)
        self.loaded = loaded
        self.spec = spec
        self.device = device
        self.encoder = encoder
        # The store's names and colours (a custom dataset's classes file), else the dataset's.
        self.class_names, self.palette = class_table(spec, manifest)
        self._segmenter_loader = segmenter_loader
        self._segmenter: Segmenter | None = None
        self._lock = threading.Lock()
        self.queue = RequestQueue()

    @property
    def is_vae(self) -> bool:
        return self.loaded.z_dim is not None

    def generate(
        self,
        label_input: LabelInput,
        seed: int,
        style: NamedBytes | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
        class_seeds: Mapping[int, int] | None = None,
    ) -> Generated | None:
        """The photo for a label map as PNG bytes; None when the request was cancelled while it waited.

        ``seed`` draws the VAE's z or the 3D noise; ``class_seeds`` re-draw the noise of those classes' regions.
        """
        style_input = style_tensor(style, self.spec.image_size, self.device) if style is not None else None
        with self._lock:
            if is_cancelled():
                return None
            start = time.perf_counter()
            image = synthesize_image(
                self.loaded, label_input.labels, label_input.instance, seed, style_input, self.encoder, class_seeds
            )
            milliseconds = (time.perf_counter() - start) * 1000  # to_pil copied the result back: synchronised
        return Generated(encode_png(image), milliseconds)

    def segment(self, photo: NamedBytes) -> np.ndarray:
        """A photo -> label indices at the network size, with the dataset's segmenter (loaded on first use)."""
        image = read_image(photo)
        with self._lock:
            if self._segmenter is None:
                if self._segmenter_loader is None:
                    raise SegmenterUnavailable("this studio was started without a segmenter")
                self._segmenter = self._segmenter_loader()
            return labels_from_photo(self._segmenter, self.spec, image, self.device)
