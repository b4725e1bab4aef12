"""Glue between the library and the tools around it: params.yaml, MLflow, DVC.

The only package that imports yaml or mlflow.
"""
