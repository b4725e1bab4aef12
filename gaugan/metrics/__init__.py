"""Evaluation metrics (paper section 4), one module each: FID (:mod:`gaugan.metrics.fid`),
KID (:mod:`gaugan.metrics.kid`), mIoU / pixel accuracy and the segmenter's ceiling
(:mod:`gaugan.metrics.segmentation`), all in the registry of :mod:`gaugan.metrics.registry`.

Every module of this package is imported here, so a module that calls
``gaugan.metrics.registry.register(...)`` is a metric: adding a metric is adding a file.
(pipeline/stage_deps.py sees this loop and counts every module of the package as a code
dependency of the stages that import it.)
"""

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    importlib.import_module(f"{__name__}.{_module.name}")
