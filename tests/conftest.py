"""Shared fixtures: tiny CPU configs. The suite never touches the network or a GPU."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from gaugan.config import Config, replace
from pipeline.params import load_config

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def tiny_config(params_config: Config) -> Config:
    """A few-second configuration: 32x32 landscapes, ngf/ndf 8, batch 2."""
    return replace(
        params_config,
        data={"builtin": {"num_train": 8, "num_val": 4, "size": 32, "seed": 0}, "num_workers": 0},
        generator={"ngf": 8, "spade_hidden": 16},
        discriminator={"ndf": 8},
        encoder={"nef": 8, "z_dim": 16},
        train={"batch_size": 2, "max_steps": 2, "log_every": 1, "device": "cpu"},
        tracking={"enabled": False},
    )


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


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (tests/browser.py); skipped only when it is not installed."""
    from tests.browser import chromium_path

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
