"""DVC stages, one per module, each run as ``python -m stages.<name>`` from the repository root.

Importing this package checks, when DVC runs the stage, that the project's code comes from
the directory the stage runs in: a queued experiment runs in a temporary copy, and an
editable install must not make it run the workspace's code instead (pipeline/dvc.py).
"""

from pipeline.dvc import guard_stage

guard_stage()
