"""What the test files share: tiny configurations and stores, checkpoints, a stand-in for
Inception, a studio server in a thread, and raw datasets shaped like the real ones.

One builder per thing: :func:`tiny_config` (the built-in run at a few seconds' size),
:func:`write_checkpoint` (a tiny generator in our format), :func:`stand_in_extractor`. Pytest
fixtures live in tests/conftest.py; a local HTTP server for downloads in tests/http_support.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import yaml
from PIL import Image
from starlette.applications import Starlette

from gaugan import checkpoint as ckpt
from gaugan.config import Config, replace
from gaugan.data.registry import DatasetSpec, published_spec
from gaugan.data.semantic import semantic_input
from gaugan.models import build_encoder, build_generator
from gaugan.studio.server import make_server, open_socket, url_of
from pipeline.params import load_config
from stages import download as download_stage
from stages import preprocess as preprocess_stage

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


# ---- configurations and stores ------------------------------------------------------------


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (registered in sys.modules: dataclasses look it up there)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tiny_config(size: int = 32, use_vae: bool = False, noise: bool = False, **train: object) -> Config:
    """params.yaml (the built-in run) at a few seconds' size: 32x32 landscapes (8 train, 4 val
    images), ngf/ndf 8, SPADE hidden 16, nef 8, z 16, global batch 2 (4 steps per epoch), 6
    steps on the CPU. ``use_vae``: the VAE; ``noise``: the OASIS generator with 4 channels of
    3D noise; ``train``: changes of the ``train`` section."""
    generator = {"arch": "oasis", "noise_channels": 4} if noise else {}
    return replace(
        load_config(ROOT / "params.yaml"),
        data={"builtin": {"num_train": 8, "num_val": 4, "size": size, "seed": 0}, "num_workers": 0},
        generator={"ngf": 8, "spade_hidden": 16, **generator},
        discriminator={"ndf": 8},
        encoder={"nef": 8, "z_dim": 16, "use_vae": use_vae},
        optim={"num_epochs_constant": 1, "num_epochs_decay": 2},
        # No EMA unless a test asks for it (the built-in default averages G; the tests that are
        # about EMA set use_ema, the end-to-end tests run params.yaml's setting).
        train={"batch_size": 2, "max_steps": 6, "log_every": 2, "sample_every": 100, "checkpoint_every": 100,
               "device": "cpu", "use_ema": False, **train},
        tracking={"enabled": False},
    )


def make_store(root: Path, size: int = 32) -> Path:
    """The landscapes of :func:`tiny_config` made and preprocessed by the real stages under ``root``; the store."""
    cfg = tiny_config(size)
    download_stage.run(cfg, root, progress=False)
    preprocess_stage.run(cfg, root)
    return root / cfg.data.processed_dir


def write_params(folder: Path, **changes: dict) -> None:
    """params.yaml as shipped, with ``section={key: value}`` changes, written into ``folder``."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def stage_environment() -> dict[str, str]:
    """The environment of a stage run in another folder as DVC would run it: this checkout's code
    first on the path (``PYTHONPATH``), none of the calling DVC's or MLflow's variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DVC_", "MLFLOW_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def write_truncated_torch_file(path: Path) -> None:
    """The first half of a ``torch.save`` archive: a download or copy cut short."""
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(1000)}, buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def landscapes_spec(size: int = 32) -> DatasetSpec:
    """The built-in landscapes (10 classes + instance edges) at ``size`` x ``size``."""
    return dataclasses.replace(published_spec("landscapes"), load_size=size, crop_size=size)


def dontcare_spec(size: int = 32) -> DatasetSpec:
    """A custom dataset with a don't-care value: 5 classes, raw value 255 stored as index 5, instance edges."""
    return DatasetSpec("custom", 5, True, 255, True, size, size, 1.0, "fixed", comparable_to_paper=False)


def coco_spec(size: int = 32) -> DatasetSpec:
    """COCO-Stuff (182 classes, raw 255 stored as the don't-care index 182, instance edges) at ``size``."""
    return dataclasses.replace(published_spec("coco"), load_size=size, crop_size=size)


# ---- checkpoints ----------------------------------------------------------------------------


def _visible_generator(cfg: Config, spec: DatasetSpec, z_dim: int | None) -> torch.nn.Module:
    """A generator whose photo clearly depends on the label map, z, the 3D noise and the style.

    Initial weights are near zero (the published init); larger ones make the differences
    visible, and a pass in training mode moves the running statistics off their init.
    """
    generator = build_generator(cfg.generator, spec.label_channels, spec.image_size, z_dim)
    with torch.no_grad():
        for parameter in generator.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.15)
        height, width = spec.image_size
        labels = torch.randint(0, spec.num_label_values, (4, height, width))
        seg = semantic_input(labels, spec.num_label_values, labels if spec.use_instance else None)
        generator.train()(seg, torch.randn(4, z_dim) if z_dim is not None else None)
    return generator


def write_checkpoint(path: Path, spec: DatasetSpec, use_vae: bool = False, noise: bool = False, seed: int = 0,
                     with_ema: bool = False) -> Path:
    """A tiny generator of :func:`tiny_config` (``use_vae``, ``noise``) for ``spec`` in our
    checkpoint format, as ``generator.pt`` holds it (no optimisers), from ``seed``: G, the
    encoder with the VAE, and with ``with_ema`` a second generator of other weights as G_ema
    (so that which one a reader takes shows)."""
    cfg = tiny_config(use_vae=use_vae, noise=noise)
    z_dim = cfg.encoder.z_dim if use_vae else None
    torch.manual_seed(seed)
    models = {"G": _visible_generator(cfg, spec, z_dim).state_dict()}
    if with_ema:
        models["G_ema"] = _visible_generator(cfg, spec, z_dim).state_dict()
    if use_vae:
        models["E"] = build_encoder(cfg.encoder).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_torch_save(ckpt.build_checkpoint(cfg, spec, models), path)
    return path


def state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``module`` and its shape."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


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
    """Two checkpoints hold the same tensors, bit for bit."""
    a, b = checkpoint_tensors(path_a), checkpoint_tensors(path_b)
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def no_work(*args: object, **kwargs: object) -> None:
    """Stands in for a stage's or a job's work where it must not start (an output folder is checked first)."""
    raise AssertionError("the work started before the output folders were checked")


# ---- judges ---------------------------------------------------------------------------------

_PROJECTION = torch.randn(3 * 4 * 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def stand_in_extractor(images: torch.Tensor) -> torch.Tensor:
    """Tests only, in place of Inception: 6 features per uint8 image (its 4x4 average pooling
    through a fixed random projection); never called FID outside tests."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(images.double() / 255, 4)
    return pooled.reshape(images.shape[0], -1) @ _PROJECTION


# ---- servers --------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    """Poll ``condition`` until it holds; an AssertionError naming ``what`` after ``seconds`` (no fixed sleeps)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its URL."""
    listener = open_socket("127.0.0.1", 0)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the studio server started")
    if not server.started:
        raise RuntimeError("the studio server did not start")
    try:
        yield url_of(listener)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


# ---- raw datasets, with tiny files shaped exactly like the real ones -------------------------

W, H = 24, 16  # every photo/label below is W x H unless a test says otherwise


def save_photo(path: Path, size: tuple[int, int] = (W, H), seed: int = 0, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)


def save_index(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    """8-bit ("L"), 16-bit ("I;16") or palette ("P") PNG of index values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":  # indices with a random colour palette, as annotation tools save them
        img = Image.frombytes("P", (array.shape[1], array.shape[0]), array.astype(np.uint8).tobytes())
        img.putpalette([int(v) for v in np.random.default_rng(1).integers(0, 255, 768)])
        img.save(path)
    elif mode == "I;16" or array.max() > 255:
        Image.fromarray(array.astype(np.uint16)).save(path)
    else:
        Image.fromarray(array.astype(np.uint8)).save(path)


def label_map(values: list[int], seed: int = 0, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """Vertical stripes of the given values in shuffled column order (every value present)."""
    rng = np.random.default_rng(seed)
    out = np.asarray(values)[np.arange(shape[0] * shape[1]) * len(values) // (shape[0] * shape[1])].reshape(shape)
    return out[:, rng.permutation(shape[1])]


# The official layouts, one builder each, and a custom dataset.


def make_ade20k(root: Path, num_train: int = 3, num_val: int = 2, scenes: dict[str, str] | None = None) -> Path:
    base = root / "ADEChallengeData2016"
    lines = []
    for split, folder, count in (("train", "training", num_train), ("val", "validation", num_val)):
        for i in range(1, count + 1):
            stem = f"ADE_{split}_{i:08d}"
            save_photo(base / "images" / folder / f"{stem}.jpg", seed=i)
            save_index(base / "annotations" / folder / f"{stem}.png", label_map([0, 3, 150, 17], seed=i))
            lines.append(f"{stem} {(scenes or {}).get(stem, 'bathroom' if i % 2 else 'street')}")
    (base / "sceneCategories.txt").write_text("\n".join(lines) + "\n")
    return root


def make_coco_spade(root: Path, num_train: int = 3, num_val: int = 2) -> Path:
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            stem = f"{i + 9:012d}"
            save_photo(root / f"{split}_img" / f"{stem}.jpg", seed=i)
            label = label_map([0, 90, 181, 255], seed=i)
            save_index(root / f"{split}_label" / f"{stem}.png", label)
            instance = label.copy()
            instance[2:6, 3:9] = 7  # an object
            save_index(root / f"{split}_inst" / f"{stem}.png", instance)
    return root


def make_cityscapes(root: Path, cities: tuple[str, ...] = ("aachen", "bochum")) -> Path:
    for split, city_list in (("train", cities), ("val", ("frankfurt",))):
        for city in city_list:
            for frame in (19, 20):
                stem = f"{city}_000000_{frame:06d}"
                save_photo(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", size=(32, 16), seed=frame)
                label = label_map([7, 11, 23, 26, 33], seed=frame, shape=(16, 32))
                save_index(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
                instance = label.astype(np.int64).copy()  # stuff: the labelId itself
                instance[label == 26] = 26000  # car instance 0
                instance[4:8, 0:6] = 26001  # car instance 1 (class*1000 + k)
                instance[10:14, 20:26] = 24000  # a person
                save_index(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", instance, mode="I;16")
                # the real archive also holds colour and polygon files, which must be ignored
                save_photo(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", size=(32, 16))
                (root / "gtFine" / split / city / f"{stem}_gtFine_polygons.json").write_text("{}")
    return root


def make_facades(root: Path, count: int = 10) -> Path:
    for i in range(1, count + 1):
        save_photo(root / "base" / f"cmp_b{i:04d}.jpg", seed=i)
        save_index(root / "base" / f"cmp_b{i:04d}.png", label_map(list(range(1, 13)), seed=i))
        (root / "base" / f"cmp_b{i:04d}.xml").write_text("<annotation/>")
    return root


def make_custom(root: Path, num_train: int = 3, num_val: int = 2, values: list[int] | None = None,
                instances: bool = True, label_mode: str | None = None) -> Path:
    values = values or [0, 1, 2, 255]
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            size = (W + 4 * i, H + 2 * i)  # photos of differing sizes
            save_photo(root / split / "images" / f"img_{i}.jpg", size=size, seed=i)
            label = label_map(values, seed=i, shape=(size[1], size[0]))
            save_index(root / split / "labels" / f"img_{i}.png", label, mode=label_mode)
            if instances:
                save_index(root / split / "instances" / f"img_{i}.png", label.astype(np.int64) * 10 + (i % 2))
    return root


def data_config(dataset: str, **data) -> Config:
    """The dataclass defaults with ``data`` changed: a raw dataset's checks and preprocessing, one process."""
    return replace(Config(), data={"dataset": dataset, "num_workers": 0, **data})
