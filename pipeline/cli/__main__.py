"""``python -m pipeline.cli`` = the ``gaugan`` command (e.g. on a machine without the entry point)."""

from pipeline.cli import main

main()
