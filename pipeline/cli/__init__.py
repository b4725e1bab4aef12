"""The ``gaugan`` command line (typer): the one place that parses arguments.

It is glue, like the rest of ``pipeline/``: commands parse options, call the library
(``gaugan``) or the pipeline's helpers, and print the result. Heavy imports (torch, MLflow)
happen inside the commands, so that ``gaugan --help`` stays instant. One module per group,
registered in the order ``gaugan --help`` lists them: :mod:`.networks` (synthesize,
params, import-checkpoint, classes), :mod:`.data` (check-data, bench-loader),
:mod:`.training` (bench), :mod:`.evaluation` (evaluate), :mod:`.experiments` (preset, ui,
link-experiments, sweep), :mod:`.studio` (studio, bench-studio).
"""

# isort: off
from pipeline.cli import networks, data, training, evaluation, experiments, studio  # noqa: F401  (registers the commands)
# isort: on
from pipeline.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
