"""The one base class of errors a user can fix.

A :class:`UserError` is a bad setting, a bad or missing file, missing weights: something
the person running the command can correct. Every command and every DVC stage prints such
an error as one line, without a traceback, and exits with :data:`USER_ERROR_EXIT_CODE`;
anything else is a bug and keeps its traceback. The library's error classes
(``ConfigError``, ``DataError``, ``CheckpointError``, ...) derive from it, beside the
built-in class they always had (``ValueError``, ``FileNotFoundError``), so existing
``except`` clauses keep working.
"""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """An error the user can fix; its message names the file, the value and the setting involved."""
