"""The metric registry: every number evaluation reports, registered once with what it needs
and how it is logged and shown.

Paper section 4 scores a generator with FID, mIoU and pixel accuracy; other papers add
KID, LPIPS diversity, ... Each such number is one :class:`Metric`: a name (its key in
``reports/metrics.json`` and ``reports/headline.json``), a ``compute`` function, what it
needs (generated images, real images, label maps, a segmenter, Inception weights), its
MLflow key (``fid/val``) and how the report shows it (label, unit, better higher or lower,
digits). A module of ``gaugan/metrics/`` that calls :func:`register` is a metric: the
package imports all its modules (``gaugan/metrics/__init__.py``), so adding one is adding
a file. Evaluation (:mod:`gaugan.scoring`), the report (:mod:`gaugan.report`), the stages
and the command line read :func:`registered_metrics`; nothing else lists metric names.
The model is stylegan3's ``metric_main``: small and explicit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# What a metric can need. A missing one (no segmenter, no Inception weights) makes the
# metric unavailable with the reason, never a wrong number.
NEEDS = ("generated", "real", "labels", "segmenter", "inception")


class MetricUnavailable(Exception):
    """Raised by ``Metric.compute`` when the number cannot be computed; the message is the reason."""


class Inputs(Protocol):
    """What ``compute`` receives (:class:`gaugan.metrics.inputs.MetricInputs`)."""

    def missing(self, needs: Iterable[str]) -> str | None: ...


@dataclass(frozen=True)
class Metric:
    name: str  # key in reports/metrics.json and reports/headline.json
    compute: Callable[[Any], float]  # MetricInputs -> the value in ``unit``
    needs: frozenset[str]
    tracking_key: str  # MLflow key, namespaced (docs STYLE): "fid/val"
    label: str  # column heading in the report
    description: str  # one line for the report and the protocol
    unit: str = ""  # "%" or "" (shown after the label)
    higher_is_better: bool | None = None  # None: not a quality measure
    digits: int = 2
    rank: int = 100  # display order (lower first); ties by name
    protocol: Mapping[str, Any] = field(default_factory=dict)  # fixed settings recorded with the number

    @property
    def heading(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def format(self, value: float | None) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{self.digits}f}"


_METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (at import of its module); returns it."""
    unknown = sorted(set(metric.needs) - set(NEEDS))
    if unknown:
        raise ValueError(f"metric {metric.name!r} needs {unknown}; known needs: {', '.join(NEEDS)}")
    existing = _METRICS.get(metric.name)
    if existing is not None and existing.compute is not metric.compute:
        raise ValueError(f"a metric named {metric.name!r} is registered already")
    _METRICS[metric.name] = metric
    return metric


def registered_metrics() -> tuple[Metric, ...]:
    """Every registered metric in display order."""
    return tuple(sorted(_METRICS.values(), key=lambda metric: (metric.rank, metric.name)))


def get_metric(name: str) -> Metric:
    if name not in _METRICS:
        raise KeyError(f"no metric named {name!r}; registered: {', '.join(m.name for m in registered_metrics())}")
    return _METRICS[name]


@dataclass(frozen=True)
class MetricValues:
    values: dict[str, float | None]  # by metric name, None where unavailable
    unavailable: dict[str, str]  # metric name -> reason

    def tracking(self, metrics: Iterable[Metric]) -> dict[str, float]:
        """``{tracking_key: value}`` of the computed ones (an unavailable number is never logged)."""
        return {m.tracking_key: float(self.values[m.name]) for m in metrics if self.values.get(m.name) is not None}


def compute_metrics(metrics: Iterable[Metric], inputs: Inputs) -> MetricValues:
    """Each metric's value, or why it is unavailable (a missing need, or its own reason)."""
    values: dict[str, float | None] = {}
    unavailable: dict[str, str] = {}
    for metric in metrics:
        reason = inputs.missing(metric.needs)
        if reason is None:
            try:
                values[metric.name] = float(metric.compute(inputs))
                continue
            except MetricUnavailable as err:
                reason = str(err)
        values[metric.name] = None
        unavailable[metric.name] = reason
    return MetricValues(values, unavailable)
