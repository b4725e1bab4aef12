"""How every DVC stage runs as ``python -m stages.<name>``.

One behaviour for all of them: load ``params.yaml`` (with DVC's view of the repository
root), run the stage, and turn a :class:`gaugan.errors.UserError` (a bad setting, file or
missing weights) into one line on stderr, prefixed with the stage's name, and the
user-error exit code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gaugan.config import Config
from gaugan.errors import USER_ERROR_EXIT_CODE, UserError
from pipeline.params import load_config, repo_root


def run_stage(name: str, run: Callable[[Config, Path], Any]) -> None:
    """``run(config, root)`` for the stage ``name``; user errors exit with one message."""
    try:
        run(load_config(), repo_root())
    except UserError as err:
        print(f"{name}: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
