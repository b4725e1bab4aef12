"""Glue between the library and the tools around it: params.yaml, MLflow, DVC.

The only package that imports yaml or mlflow.
"""

# The project's own packages: a stage's code deps are followed through them
# (pipeline.stage_deps), and a stage must import them from the folder it runs in (pipeline.dvc).
PROJECT_PACKAGES = ("gaugan", "pipeline", "stages")
