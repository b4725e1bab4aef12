"""The ``gaugan`` Typer application and what every command shares.

Commands live in the modules beside this one, one group per module, and register
themselves with :func:`command`. A :class:`gaugan.errors.UserError` raised by a command
(a bad setting, a bad or missing file) is printed as one line on stderr and the command
exits with :data:`gaugan.errors.USER_ERROR_EXIT_CODE`; Ctrl-C and SIGTERM exit with 130
and 143 as the stages do (pipeline/stage.py); anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer

from gaugan.errors import USER_ERROR_EXIT_CODE, UserError
from pipeline.stage import INTERRUPTED_EXIT_CODE, TERMINATED_EXIT_CODE, Terminated, sigterm_unwinds

EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 check-data found problems in the data; 2 a user error (a bad setting or file, "
    "one line naming it); 130/143 interrupted (Ctrl-C/SIGTERM); anything else is a bug (with a traceback)."
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="SPADE / GauGAN: semantic image synthesis (Park et al., CVPR 2019).",
    epilog=EXIT_CODES_HELP,
)

Function = TypeVar("Function", bound=Callable[..., Any])


def fail(message: str) -> NoReturn:
    """A user error: the message on stderr, the user-error exit code, no traceback."""
    typer.echo(message, err=True)
    raise typer.Exit(USER_ERROR_EXIT_CODE)


def command(name: str) -> Callable[[Function], Function]:
    """Register the decorated function as ``gaugan <name>``, printing user errors as one line."""

    def register(function: Function) -> Function:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                with sigterm_unwinds():
                    return function(*args, **kwargs)
            except UserError as err:
                fail(str(err))
            except KeyboardInterrupt:  # click would print "Aborted!" and exit 1
                typer.echo(f"{name}: interrupted (Ctrl-C)", err=True)
                raise typer.Exit(INTERRUPTED_EXIT_CODE) from None
            except Terminated:
                typer.echo(f"{name}: terminated (SIGTERM)", err=True)
                raise typer.Exit(TERMINATED_EXIT_CODE) from None

        app.command(name)(run)
        return function

    return register


def check_dataset_name(dataset: str, option: str = "--dataset") -> None:
    from gaugan.config import DATASET_NAMES

    if dataset not in DATASET_NAMES:
        fail(f"{option}: got {dataset!r}, expected one of {', '.join(DATASET_NAMES)}")
