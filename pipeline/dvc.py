"""Where a stage runs under DVC, which code it runs, and which DVC experiment an MLflow run belongs to.

Facts measured with dvc 3.67 (docs/SPADE.md section 6) that this module is built around:

- ``dvc repro`` runs a stage with ``DVC_ROOT`` and ``DVC_STAGE`` set; ``dvc exp run`` adds
  ``DVC_EXP_NAME`` and ``DVC_EXP_BASELINE_REV``. A queued experiment runs in a temporary
  copy under ``.dvc/tmp/exps/`` (the working directory) while ``DVC_ROOT`` still names the
  real repository. Outputs belong in the working directory; MLflow's store in the real root.
- With an editable install a queued experiment could import the workspace's code instead
  of its own copy; :func:`check_code_location` refuses to run a stage in that state.
- An experiment's own commit exists only after it finished, and DVC's run-cache (or an
  unchanged stage) can complete an experiment without running anything, so no MLflow run
  is created for it. :func:`link_experiments` matches MLflow runs to experiments after a
  sweep and reports the experiments without a run instead of hiding them.

No MLflow here (stages import this before anything slow); runs arrive as a pandas
DataFrame in the shape of ``mlflow.search_runs`` (columns ``run_id``, ``tags.<name>``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gaugan.config import flatten
from gaugan.errors import UserError
from pipeline import PROJECT_PACKAGES

if TYPE_CHECKING:  # pandas is imported where runs are linked, not by every stage's guard
    import pandas as pd

# MLflow run tags written by pipeline.tracking (at run time) and by link_experiments (after).
TAG_EXP_NAME = "dvc.exp_name"
TAG_BASELINE_REV = "dvc.baseline_rev"
TAG_EXP_REV = "dvc.exp_rev"


class DvcError(UserError, RuntimeError):
    """DVC could not be run or answered something this module does not understand."""


class CodeLocationError(RuntimeError):
    """A stage would run code from another directory than its own (e.g. the workspace's)."""


@dataclass(frozen=True)
class DvcContext:
    """What DVC tells a stage about where and why it runs."""

    workdir: Path  # where the stage runs and writes its outputs (a temp copy for queued runs)
    root: Path  # the real repository: MLflow's database and artifacts live here
    stage: str | None = None  # DVC_STAGE; None outside DVC
    exp_name: str | None = None  # DVC_EXP_NAME; None for plain `dvc repro`
    baseline_rev: str | None = None  # DVC_EXP_BASELINE_REV: the commit the experiment starts from
    commit: str | None = None  # HEAD of the working directory

    @property
    def under_dvc(self) -> bool:
        return self.stage is not None

    @property
    def in_temp_copy(self) -> bool:
        """True for queued (and ``--temp``) experiments, which run outside the real root."""
        return self.workdir != self.root


def git_commit(root: Path) -> str | None:
    """HEAD of the git checkout at ``root`` (None outside git or without a commit)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def current_context(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> DvcContext:
    """The context of this process, read from DVC's environment variables and git."""
    environ = os.environ if environ is None else environ
    workdir = (cwd or Path.cwd()).resolve()
    root = Path(environ["DVC_ROOT"]).resolve() if environ.get("DVC_ROOT") else workdir
    return DvcContext(
        workdir=workdir,
        root=root,
        stage=environ.get("DVC_STAGE") or None,
        exp_name=environ.get("DVC_EXP_NAME") or None,
        baseline_rev=environ.get("DVC_EXP_BASELINE_REV") or None,
        commit=git_commit(workdir),
    )


def check_code_location(workdir: Path, packages: tuple[str, ...] = PROJECT_PACKAGES) -> None:
    """Raise :class:`CodeLocationError` unless every package would be imported from ``workdir``.

    Uses import specs, not imports, so it can run before the packages are loaded.
    """
    workdir = workdir.resolve()
    for name in packages:
        spec = importlib.util.find_spec(name)
        locations = [] if spec is None else list(spec.submodule_search_locations or [spec.origin])
        if not locations:
            raise CodeLocationError(f"package {name!r} cannot be found from {workdir}")
        for location in locations:
            if not Path(location).resolve().is_relative_to(workdir):
                raise CodeLocationError(
                    f"package {name!r} would be imported from {location}, not from the stage's own "
                    f"directory {workdir}: an editable install or PYTHONPATH points elsewhere. Run stages "
                    "as `python -m stages.<name>` from the repository root (dvc.yaml does), or unset PYTHONPATH."
                )


def guard_stage(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
    """Under DVC, refuse to run a stage with another directory's code (see the module docstring)."""
    context = current_context(environ, cwd)
    if context.under_dvc:
        check_code_location(context.workdir)


# --------------------------------------------------------------------------------------
# Experiments after a sweep.


@dataclass(frozen=True)
class Experiment:
    """One row of ``dvc exp show``: a baseline commit, or an experiment derived from one."""

    name: str  # experiment name, or the branch/short rev of a baseline
    rev: str  # the experiment's (or baseline's) commit
    baseline_rev: str  # the commit it started from (itself for a baseline)
    is_baseline: bool
    state: str | None = None  # executor state of an experiment: success, failed, running, queued
    params: dict[str, Any] = field(default_factory=dict)  # flattened params.yaml
    metrics: dict[str, Any] = field(default_factory=dict)  # flattened, "<file>:<key>"
    outs: dict[str, str | None] = field(default_factory=dict)  # out path -> content hash


def run_dvc_json(args: list[str], root: Path, timeout: float = 300.0) -> Any:
    """Run ``dvc <args>`` (which must print JSON) in ``root`` and parse its output."""
    # The dvc of this interpreter's environment, whatever PATH says.
    command = [sys.executable, "-m", "dvc", *args]
    try:
        result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DvcError(f"`dvc {' '.join(args)}` in {root} failed: {err}") from err
    if result.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` in {root} exited with {result.returncode}: {result.stderr.strip()}")
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as err:
        raise DvcError(f"`dvc {' '.join(args)}` in {root} did not print JSON: {result.stdout[:200]!r}") from err


def _row(entry: dict[str, Any], name: str, baseline_rev: str, is_baseline: bool, state: str | None) -> Experiment:
    data = entry.get("data") or {}
    params: dict[str, Any] = {}
    for values in (data.get("params") or {}).values():
        params.update(flatten(values.get("data") or {}))
    metrics: dict[str, Any] = {}
    for path, values in (data.get("metrics") or {}).items():
        metrics.update({f"{path}:{key}": value for key, value in flatten(values.get("data") or {}).items()})
    outs = {path: (info or {}).get("hash") for path, info in (data.get("outs") or {}).items()}
    return Experiment(name, entry["rev"], baseline_rev, is_baseline, state, params, metrics, outs)


def parse_exp_show(data: list[dict[str, Any]]) -> list[Experiment]:
    """Baselines and their experiments from ``dvc exp show --json`` (the workspace row skipped)."""
    if not isinstance(data, list):
        raise DvcError(f"`dvc exp show --json` returned {type(data).__name__}, expected a list")
    rows = []
    for baseline in data:
        if baseline.get("rev") == "workspace":
            continue
        rev = baseline["rev"]
        rows.append(_row(baseline, baseline.get("name") or rev[:7], rev, True, None))
        for group in baseline.get("experiments") or []:
            executor = group.get("executor") or {}
            for revision in group.get("revs") or []:
                name = group.get("name") or revision.get("name") or revision["rev"][:7]
                rows.append(_row(revision, name, rev, False, executor.get("state")))
    return rows


def list_experiments(root: Path) -> list[Experiment]:
    """Every experiment DVC knows in ``root`` (``dvc exp show -A``), with its baseline
    commit, and HEAD. Commits without experiments are left out (the history can be long)."""
    rows = parse_exp_show(run_dvc_json(["exp", "show", "--json", "--all-commits"], root))
    with_experiments = {row.baseline_rev for row in rows if not row.is_baseline}
    head = next((row.rev for row in rows if row.is_baseline), None)  # DVC lists HEAD first
    return [row for row in rows if not row.is_baseline or row.rev in with_experiments or row.rev == head]


def read_run_id_at(root: Path, rev: str, run_file: str) -> str | None:
    """The MLflow run id in ``run_file`` (a DVC-tracked run.json) as committed at ``rev``.

    This names the run that produced the outputs DVC recorded at that commit, also when
    DVC restored them from its run-cache. None when the file is not tracked there or is
    not in the local cache.
    """
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc_data.index.index import DataIndexError

    try:
        data = json.loads(dvc.api.read(run_file, repo=str(root), rev=rev))
    except (DvcException, DataIndexError, OSError, json.JSONDecodeError):
        return None  # not tracked at that commit, or its outputs are not in the local cache
    return data.get("run_id") if isinstance(data, dict) else None


@dataclass(frozen=True)
class ExperimentLink:
    """An experiment (or baseline), the MLflow runs made for it, and the run behind its outputs."""

    experiment: Experiment
    run_ids: tuple[str, ...]  # runs made while this experiment ran, newest first
    source_run_id: str | None  # the run whose training outputs this experiment holds
    source_name: str | None  # the experiment that run was made for, when it is another one

    @property
    def status(self) -> str:
        """``ran``, ``restored`` (outputs of another experiment's run) or ``no-run``."""
        if self.source_run_id and self.source_run_id in self.run_ids:
            return "ran"
        if self.source_run_id:
            return "restored"
        return "ran" if self.run_ids else "no-run"


def link_experiments(
    experiments: list[Experiment], runs: pd.DataFrame, source_run_ids: Mapping[str, str | None]
) -> list[ExperimentLink]:
    """Match MLflow runs to experiments after a sweep.

    ``runs`` has the columns of ``mlflow.search_runs``: ``run_id``, ``start_time`` and the
    tags ``tags.dvc.exp_name`` / ``tags.dvc.baseline_rev`` written at run time (a missing
    column means no run carries that tag). ``source_run_ids`` maps a commit to the run
    named in its tracked run.json (:func:`read_run_id_at`). An experiment that DVC
    completed without running its training (run-cache restore, nothing changed) has no
    runs of its own; its source run then belongs to another experiment or baseline.
    """
    import pandas as pd

    ordered = runs.sort_values("start_time", ascending=False) if "start_time" in runs.columns else runs

    def tag(name: str) -> pd.Series:
        column = f"tags.{name}"
        return ordered[column] if column in ordered.columns else pd.Series(None, index=ordered.index, dtype=object)

    names, baselines = tag(TAG_EXP_NAME), tag(TAG_BASELINE_REV)
    exp_name_of_run = dict(zip(ordered["run_id"], names))
    run_owner: dict[str, str] = {}
    own_runs: dict[str, tuple[str, ...]] = {}
    for experiment in experiments:
        if experiment.is_baseline:
            # A baseline's outputs come from `dvc repro`, whose runs carry no experiment name.
            source = source_run_ids.get(experiment.rev)
            own = (source,) if source in exp_name_of_run and pd.isna(exp_name_of_run[source]) else ()
        else:
            own = tuple(ordered.loc[(names == experiment.name) & (baselines == experiment.baseline_rev), "run_id"])
        own_runs[experiment.rev] = own
        run_owner.update({run_id: experiment.name for run_id in own})

    links = []
    for experiment in experiments:
        source = source_run_ids.get(experiment.rev)
        owner = run_owner.get(source) if source else None
        links.append(ExperimentLink(
            experiment, own_runs[experiment.rev], source, owner if owner != experiment.name else None,
        ))
    return links
