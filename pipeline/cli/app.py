"""The ``gaugan`` Typer application and what every command shares.

Commands live in the modules beside this one, one group per module, and register
themselves with :func:`command`. A :class:`gaugan.errors.UserError` raised by a command
(a bad setting, a bad or missing file) is printed as one line on stderr and the command
exits with :data:`gaugan.errors.USER_ERROR_EXIT_CODE`; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer

from gaugan.errors import USER_ERROR_EXIT_CODE, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="SPADE / GauGAN: semantic image synthesis (Park et al., CVPR 2019).",
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
                return function(*args, **kwargs)
            except UserError as err:
                fail(str(err))

        app.command(name)(run)
        return function

    return register


def check_dataset_name(dataset: str, option: str = "--dataset") -> None:
    from gaugan.config import DATASET_NAMES

    if dataset not in DATASET_NAMES:
        fail(f"{option}: got {dataset!r}, expected one of {', '.join(DATASET_NAMES)}")
