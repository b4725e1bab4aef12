"""Every stage fails the same way on a user error: one line naming the stage, exit code 2."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from gaugan.errors import USER_ERROR_EXIT_CODE
from pipeline.stage import run_stage
from tests.support import stage_environment, write_params

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(path.stem for path in (ROOT / "stages").glob("*.py") if path.stem != "__init__")


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
    env = stage_environment()
    result = subprocess.run([sys.executable, "-m", "stages.generate"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == USER_ERROR_EXIT_CODE and "Traceback" not in result.stderr
    assert result.stderr.startswith("generate: ") and "no/store/here" in result.stderr


@pytest.mark.parametrize(("missing", "made_by"), [("metrics.json", "evaluate"), ("train.json", "train")])
def test_report_names_a_missing_input_and_the_stage_that_writes_it(missing: str, made_by: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    write_params(tmp_path, tracking={"enabled": False})
    (tmp_path / "reports").mkdir()
    for name in {"metrics.json", "train.json"} - {missing}:
        (tmp_path / "reports" / name).write_text("{}")
    stderr = stage_fails("report", tmp_path, monkeypatch, capsys)
    assert stderr == (f"report: {tmp_path / 'reports' / missing}: not found; the {made_by} stage writes it "
                      f"(dvc repro {made_by}, or python -m stages.{made_by})\n")


def test_generate_without_a_trained_generator_says_to_train_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from tests.support import make_store
    make_store(tmp_path)
    capsys.readouterr()  # preprocessing's progress bars
    write_params(tmp_path, data={"processed_dir": "data/processed",  # the store's settings (tiny_config)
                                 "builtin": {"num_train": 8, "num_val": 4, "size": 32, "seed": 0}},
                 tracking={"enabled": False})
    stderr = stage_fails("generate", tmp_path, monkeypatch, capsys)
    assert stderr == (f"generate: {tmp_path / 'checkpoints' / 'train' / 'generator.pt'}: not found; the train stage "
                      "writes it (dvc repro train, or python -m stages.train)\n")


def test_a_published_segmenter_for_a_dataset_without_one_is_a_user_error() -> None:
    from gaugan.errors import UserError
    from gaugan.segmenters.published import published_segmenter_for

    with pytest.raises(UserError) as error:
        published_segmenter_for("landscapes")
    assert str(error.value).startswith("no published segmenter for dataset 'landscapes'")  # not quoted as a KeyError


def test_ctrl_c_is_one_line_and_exit_code_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)

    def interrupted(cfg, root):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exited:
        run_stage("train", interrupted)
    assert exited.value.code == 130 and capsys.readouterr().err == "train: interrupted (Ctrl-C)\n"


def test_commands_exit_as_the_stages_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.chdir(ROOT)
    runner = CliRunner()
    assert "Exit codes: 0 done; 1 check-data found problems" in runner.invoke(app, ["--help"]).output
    # An image size the generator cannot take: one line naming the value and the settings.
    result = runner.invoke(app, ["bench", "-S", "data.crop_size=100", "-S", "data.load_size=100", "--steps", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "100x100" in result.stderr and "data.crop_size" in result.stderr and result.stderr.count("\n") == 1

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gaugan.data.registry.published_spec", interrupted)
    result = runner.invoke(app, ["params", "--dataset", "coco"])
    assert result.exit_code == 130 and result.stderr == "params: interrupted (Ctrl-C)\n"


def test_forked_pool_workers_still_stop_on_sigterm(tmp_path: Path) -> None:
    """A multiprocessing pool stops its forked workers with SIGTERM; the stage's SIGTERM handler,
    which they inherit, must not turn that into an exception in them (a hang, tracebacks)."""
    write_params(tmp_path)
    script = ("from multiprocessing import get_context\n"
              "from pipeline.stage import run_stage\n"
              "def run(cfg, root):\n"
              "    with get_context('fork').Pool(2) as pool:\n"
              "        print(sum(pool.map(abs, [-1, -2, -3])))\n"
              "run_stage('probe', run)\n")
    env = stage_environment()
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0 and result.stdout == "6\n" and result.stderr == "", result.stderr


@pytest.mark.parametrize("name", ["train", "segmenter", "generate", "evaluate"])
def test_data_settings_that_disagree_with_the_store_are_one_line_before_any_work(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """data.dataset=custom over a built-in store: no stage trains, generates or scores the other data."""
    from tests.support import make_store
    make_store(tmp_path)
    capsys.readouterr()  # preprocessing's progress bars
    write_params(tmp_path, data={"dataset": "custom", "num_workers": 0}, tracking={"enabled": False},
                 train={"device": "cpu", "max_steps": 1}, segmenter={"num_steps": 1})
    stderr = stage_fails(name, tmp_path, monkeypatch, capsys)
    assert stderr == (f"{name}: {tmp_path / 'data' / 'processed' / 'manifest.json'}: the store was preprocessed for "
                      "dataset 'landscapes', but data.dataset is 'custom'; run the preprocess stage again (dvc repro "
                      "preprocess, or python -m stages.preprocess), or set the setting back\n")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "outputs").exists()
