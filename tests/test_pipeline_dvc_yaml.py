"""dvc.yaml is wired exactly: code deps = each stage's imports, params keys exist, paths templated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gaugan.config import flatten
from pipeline.params import read_params
from pipeline.stage_deps import code_closure, rewrite_code_deps, stage_code_deps

ROOT = Path(__file__).resolve().parents[1]
# The default pipeline and the benchmark's own (bench/dvc.yaml runs from the root: wdir ..).
STAGES = {**yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"],
          **yaml.safe_load((ROOT / "bench" / "dvc.yaml").read_text())["stages"]}
PARAMS = read_params(ROOT / "params.yaml")
# The stages that compute on train.device start through pipeline/launch.py, which claims their GPUs.
CLAIM_GPUS = {"segmenter", "train", "generate", "evaluate"}


def _path(entry: str | dict) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_runs_its_module_and_depends_on_exactly_its_code(name: str) -> None:
    stage = STAGES[name]
    launcher = "${train_launcher}" if name == "train" else "python"  # launch.yaml: torchrun for several GPUs
    claims = "python -m pipeline.launch " if name in CLAIM_GPUS else ""
    assert stage["cmd"] == f"{claims}{launcher} -m stages.{name}" and stage.get("wdir", "..") == ".."
    code = sorted(d for d in map(_path, stage["deps"]) if d.endswith(".py"))
    assert code == stage_code_deps(name, ROOT), (
        f"dvc.yaml stage {name!r}: code deps differ from its imports; `python -m pipeline.stage_deps {name}` "
        "prints the list")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_exist_in_params_yaml(name: str) -> None:
    keys = set(flatten(PARAMS))
    sections = {key.rsplit(".", 1)[0] for key in keys} | {key.split(".")[0] for key in keys}
    for param in STAGES[name].get("params", []):
        assert param in keys or param in sections, f"stage {name!r}: params key {param!r} is not in params.yaml"


def test_paths_come_from_params_not_literals() -> None:
    """Paths that params.yaml names are written as ${...} so that a -S change moves them."""
    configured = {PARAMS["data"]["root"], PARAMS["data"]["processed_dir"], PARAMS["train"]["checkpoint_dir"],
                  PARAMS["segmenter"]["checkpoint_dir"], PARAMS["evaluate"]["output_dir"]}
    for name, stage in STAGES.items():
        for key in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                path = _path(entry)
                assert not any(path == c or path.startswith(c + "/") for c in configured), (
                    f"stage {name!r} names {path!r} literally; use the ${{...}} of its params key")


def test_closure_follows_function_level_and_package_imports(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    (tmp_path / "gaugan" / "sub").mkdir(parents=True)
    (tmp_path / "stages" / "__init__.py").write_text("import gaugan.unused\n")
    (tmp_path / "stages" / "thing.py").write_text("def f():\n    from gaugan.sub import leaf\nimport numpy\n")
    (tmp_path / "gaugan" / "__init__.py").write_text("")
    (tmp_path / "gaugan" / "unused.py").write_text("")
    (tmp_path / "gaugan" / "sub" / "__init__.py").write_text("from gaugan.helper import x\n")
    (tmp_path / "gaugan" / "sub" / "leaf.py").write_text("")
    (tmp_path / "gaugan" / "helper.py").write_text("x = 1\n")
    assert code_closure(tmp_path / "stages" / "thing.py", tmp_path) == [
        "gaugan/__init__.py", "gaugan/helper.py", "gaugan/sub/__init__.py", "gaugan/sub/leaf.py", "stages/thing.py"]


def test_rewrite_replaces_code_deps_and_keeps_the_rest(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    (tmp_path / "gaugan").mkdir()
    (tmp_path / "stages" / "thing.py").write_text("from gaugan import now\n")
    (tmp_path / "gaugan" / "__init__.py").write_text("")
    (tmp_path / "gaugan" / "now.py").write_text("")
    text = ("stages:\n  # a comment\n  thing:\n    cmd: python -m stages.thing\n    deps:\n"
            "      - gaugan/gone.py\n      - ${data.root}\n      - stages/thing.py\n    outs:\n      - out.txt\n")
    assert rewrite_code_deps(text, tmp_path) == (
        "stages:\n  # a comment\n  thing:\n    cmd: python -m stages.thing\n    deps:\n"
        "      - gaugan/__init__.py\n      - gaugan/now.py\n      - stages/thing.py\n      - ${data.root}\n"
        "    outs:\n      - out.txt\n")


@pytest.mark.parametrize("path", ["dvc.yaml", "bench/dvc.yaml"])
def test_dvc_yaml_is_what_the_rewrite_produces(path: str) -> None:
    text = (ROOT / path).read_text()
    assert rewrite_code_deps(text, ROOT) == text, f"run `python -m pipeline.stage_deps --write {path}`"


def test_a_package_that_imports_all_its_modules_depends_on_all_of_them(tmp_path: Path) -> None:
    """gaugan/metrics/ imports every module it holds (a metric is a file): a stage importing the
    package depends on each of them, also on one added later."""
    package = tmp_path / "gaugan" / "plugins"
    package.mkdir(parents=True)
    (tmp_path / "gaugan" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("import importlib\nimport pkgutil\n\nfor _m in pkgutil.iter_modules(__path__):\n"
                                         "    importlib.import_module(f'{__name__}.{_m.name}')\n")
    for name in ("first", "second"):
        (package / f"{name}.py").write_text("")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "probe.py").write_text("import gaugan.plugins\n")
    assert code_closure(tmp_path / "stages" / "probe.py", tmp_path) == [
        "gaugan/__init__.py", "gaugan/plugins/__init__.py", "gaugan/plugins/first.py", "gaugan/plugins/second.py",
        "stages/probe.py"]
