"""Datasets: the registry of label conventions, readers, the built-in dataset, preprocessing."""
