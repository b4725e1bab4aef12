"""How the library reports what it measures without knowing where it goes.

Training loops (gaugan.train.loop, gaugan.segmenters.trained) call an injected
``report(metrics, step)`` with namespaced values (``loss/g_gan``, ``perf/images_per_s``)
and ``report_image(path, step)`` with the paths of sample grids; the stages connect them to
MLflow, the tests to lists. Keeping logging out of the maths is what lets the library run
without MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

MetricsCallback = Callable[[dict[str, float], int], None]
ImageCallback = Callable[[Path, int], None]
