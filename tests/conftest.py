"""Shared fixtures (helpers are in tests/support.py). The suite never touches the network or a GPU."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from gaugan.config import Config, replace
from gaugan.data.registry import DatasetSpec
from gaugan.data.store import read_manifest, spec_from_manifest
from pipeline.params import load_config
from stages import download as download_stage
from stages import preprocess as preprocess_stage
from tests.support import ROOT, make_store, tiny_config, write_checkpoint


@pytest.fixture(autouse=True)
def one_thread_per_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stages choose their CPU threads (gaugan/threads.py); in tests they take OMP_NUM_THREADS=1:
    the tiny networks gain nothing from more, and the machine is shared with other jobs. The
    thread count a test leaves behind (a stage, `gaugan bench`) is restored."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # also for the library code that tests call directly
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with an empty torch hub cache of its own (``$TORCH_HOME``): the user's
    downloaded weights never change a result, and nothing a test verifies or writes there
    (weights, gaugan.pinned's hash cache) reaches the user's."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture
def params_config() -> Config:
    """params.yaml as shipped."""
    return load_config(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The landscapes store of :func:`tests.support.tiny_config`, made by the real stages once per test module."""
    return make_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config, DatasetSpec]:
    """The evaluation tests' project: raw landscapes (10 train, 5 val, 32x32) and their store,
    made by the real stages, and a tiny generator (with G_ema) at
    ``<train.checkpoint_dir>/generator.pt``; (root, config, spec)."""
    root = tmp_path_factory.mktemp("evalroot")
    cfg = replace(
        tiny_config(),
        data={"builtin": {"num_train": 10, "num_val": 5, "size": 32, "seed": 0},
              "root": "data/raw", "processed_dir": "data/processed"},
        train={"checkpoint_dir": "checkpoints/train"},
        segmenter={"width": 4, "num_steps": 4, "batch_size": 5},
        evaluate={"batch_size": 2, "output_dir": "outputs/generated"},
    )
    download_stage.run(cfg, root, progress=False)
    preprocess_stage.run(cfg, root)
    spec = spec_from_manifest(read_manifest(root / cfg.data.processed_dir))
    write_checkpoint(root / cfg.train.checkpoint_dir / "generator.pt", spec, with_ema=True)
    return root, cfg, spec


class RunsACommand:
    """Pickles as a call of os.system: unpickling it (without weights_only) runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def write_crafted_checkpoint() -> Callable[[Path, Path], None]:
    """Writes a file tagged as our checkpoint whose pickle runs ``touch <marker>`` when loaded unsafely."""

    def write(path: Path, marker: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": "gaugan-checkpoint-v1", "hook": RunsACommand(f"touch {marker}")}, path)

    return write


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The browser the page tests drive: ``GAUGAN_CHROMIUM`` if set, else the first Chromium on
    PATH (Debian's, ``apt-get install chromium``: Playwright's own download needs the internet)."""
    configured = os.environ.get("GAUGAN_CHROMIUM")
    if configured:
        return configured
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (:func:`chromium_path`); skipped only when it is not installed."""
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium installed (apt-get install chromium, or set GAUGAN_CHROMIUM); "
                    "the browser tests need a real browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path)
        yield launched
        launched.close()


@pytest.fixture
def browser_page(browser):
    """A fresh page (1440x900, downloads allowed); the test fails if the page raises a JavaScript error."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if (
        message.type == "error" and not message.text.startswith("Failed to load resource")) else None)  # 4xx on purpose
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
