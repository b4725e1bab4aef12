"""Every stage fails the same way on a user error: one line naming the stage, exit code 2."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gaugan.errors import USER_ERROR_EXIT_CODE
from pipeline.stage import run_stage

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(path.stem for path in (ROOT / "stages").glob("*.py") if path.stem != "__init__")


def write_params(folder: Path, **changes: dict) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def stage_fails(name: str, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    """Run the stage as its ``__main__`` does, in ``folder``; return its stderr after the exit."""
    monkeypatch.chdir(folder)
    module = importlib.import_module(f"stages.{name}")
    with pytest.raises(SystemExit) as exited:
        run_stage(name, module.run)
    assert exited.value.code == USER_ERROR_EXIT_CODE
    return capsys.readouterr().err


@pytest.mark.parametrize("name", STAGES)
def test_a_bad_setting_is_one_line_and_exit_code_2(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    write_params(tmp_path, train={"batch_size": 0})
    stderr = stage_fails(name, tmp_path, monkeypatch, capsys)
    assert stderr == f"{name}: params.yaml: train.batch_size: got 0, expected an integer >= 1\n"


@pytest.mark.parametrize("name", ["train", "segmenter", "generate", "evaluate"])
def test_a_missing_store_is_one_line_naming_it(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    write_params(tmp_path, data={"processed_dir": "no/store/here"}, tracking={"enabled": False})
    stderr = stage_fails(name, tmp_path, monkeypatch, capsys)
    assert stderr.startswith(f"{name}: ") and "no/store/here" in stderr and stderr.count("\n") == 1


def test_python_dash_m_takes_the_same_path(tmp_path: Path) -> None:
    write_params(tmp_path, data={"processed_dir": "no/store/here"}, tracking={"enabled": False})
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DVC_", "MLFLOW_"))}
    env["PYTHONPATH"] = str(ROOT)  # the stages of this checkout, run in another folder
    result = subprocess.run([sys.executable, "-m", "stages.generate"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == USER_ERROR_EXIT_CODE and "Traceback" not in result.stderr
    assert result.stderr.startswith("generate: ") and "no/store/here" in result.stderr
