"""SPADE / GauGAN: semantic image synthesis with spatially-adaptive normalization.

Park et al., CVPR 2019 (arXiv 1903.07291). The library: models, data, losses, metrics,
training. No argv, YAML, MLflow or DVC here (see ``pipeline/`` and ``stages/``).
"""

__version__ = "0.1.0"
