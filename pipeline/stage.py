"""How every DVC stage runs as ``python -m stages.<name>``.

One behaviour for all of them: load ``params.yaml`` (with DVC's view of the repository
root), run the stage, and turn a :class:`gaugan.errors.UserError` (a bad setting, file or
missing weights) into one line on stderr, prefixed with the stage's name, and the
user-error exit code. Ctrl-C and SIGTERM end the stage with one line too (exit codes 130
and 143, as a shell reports a process killed by those signals), after the ``finally``
blocks ran: an open MLflow run is marked KILLED, temporary files are removed. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gaugan.config import Config
from gaugan.errors import USER_ERROR_EXIT_CODE, UserError
from pipeline.params import load_config, repo_root

INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT
TERMINATED_EXIT_CODE = 128 + signal.SIGTERM


class MissingStageInput(UserError, FileNotFoundError):
    """A file that an earlier stage writes is missing or unreadable: run that stage."""


def require_input(path: Path, made_by: str) -> Path:
    """``path``, or :class:`MissingStageInput` naming it and the stage ``made_by`` that writes it."""
    if not path.is_file():
        raise MissingStageInput(f"{path}: not found; the {made_by} stage writes it (dvc repro {made_by}, "
                                f"or python -m stages.{made_by})")
    return path


def read_json_input(path: Path, made_by: str) -> Any:
    """The JSON file ``path`` that the stage ``made_by`` writes; a missing or broken one is a user error."""
    try:
        return json.loads(require_input(path, made_by).read_text())
    except json.JSONDecodeError as err:
        raise MissingStageInput(f"{path}: not valid JSON ({err}); run the {made_by} stage again") from err


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, a job scheduler, ``dvc queue kill``): unwind as Ctrl-C does.

    A BaseException like KeyboardInterrupt, so that ``except Exception`` clauses let it pass.
    """


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` instead of ending the process on
    the spot (Python's default), so that cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    installed_by = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != installed_by:
            # A forked child inherited the handler (a multiprocessing pool's worker, which its
            # pool stops with SIGTERM): end it as if there were no handler.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(name: str, run: Callable[[Config, Path], Any]) -> None:
    """``run(config, root)`` for the stage ``name``; user errors and signals exit with one message."""
    try:
        with sigterm_unwinds():
            run(load_config(), repo_root())
    except UserError as err:
        print(f"{name}: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
        print(f"{name}: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
    except Terminated:
        print(f"{name}: terminated (SIGTERM)", file=sys.stderr)
        sys.exit(TERMINATED_EXIT_CODE)
