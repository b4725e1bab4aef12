"""The ``gaugan`` command line (typer). The only place in the library that parses arguments.

Each command is a thin wrapper: parse options, call the library, print the result.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="SPADE / GauGAN: semantic image synthesis (Park et al., CVPR 2019).",
)

# ---- networks and checkpoints (issue 2): synthesize, params ----

# ---- datasets (issue 3): check-data ----

# ---- training (issue 4): bench ----

# ---- evaluation (issue 5) ----

# ---- pipeline (issue 6): import-checkpoint, classes, ui, link-experiments ----


def main() -> None:
    app()


if __name__ == "__main__":
    main()
