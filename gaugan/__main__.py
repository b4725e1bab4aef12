"""``python -m gaugan`` = the ``gaugan`` command."""

from gaugan.cli import main

main()
