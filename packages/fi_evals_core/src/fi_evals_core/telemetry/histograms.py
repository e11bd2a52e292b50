"""The GenAI request histograms of the providers `register()` (and the export process) builds,
aggregated in plain Python and exported with that meter provider's other metrics.

Why: the SDK's `Histogram.record` makes a `Measurement`, cleans and hashes its attributes and
decides on an exemplar for every point, and a vLLM request records five points: that was the
largest part of the export process's CPU per request (benchmarks/RESULTS.md). Here a point costs a
sorted tuple, a dict lookup and a bisect, with the SDK's semantics kept: explicit buckets with the
semantic conventions' boundaries, count, sum, min and max, cumulative or delta temporality as the
exporter prefers, at most `CARDINALITY_LIMIT` attribute sets per histogram (then one overflow point,
`otel.metric.overflow`), non-finite and negative values refused. The points reach the exporter
through `MergingMetricExporter`, which adds them to what the SDK collected (same resource, one
scope entry per instrumentation scope); tests/fi_evals_core/test_histograms.py compares them with
the SDK's for the same measurements. Providers the application built keep the SDK instruments
(`metrics.GenAIMetrics`): their views and readers are theirs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left
from typing import Any, Mapping, Sequence

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .metrics import HISTOGRAMS, HistogramSpec

logger = logging.getLogger(__name__)

CARDINALITY_LIMIT = 2000  # attribute sets per histogram, as the SDK's default
_OVERFLOW = (("otel.metric.overflow", True),)
REQUESTS_COUNTER = "traceai.telemetry.requests"


class _Point:
    __slots__ = ("attributes", "start_ns", "counts", "count", "sum", "min", "max")

    def __init__(self, attributes: dict[str, Any], start_ns: int, buckets: int) -> None:
        self.attributes = attributes
        self.start_ns = start_ns
        self.counts = [0] * buckets
        self.count = 0
        self.sum: float = 0
        self.min = math.inf
        self.max = -math.inf


class StoreHistogram:
    """One histogram of one instrumentation scope; `record(amount, attributes)` as the SDK's."""

    __slots__ = ("spec", "_store", "_bounds", "_points")

    def __init__(self, spec: HistogramSpec, store: "HistogramStore") -> None:
        self.spec = spec
        self._store = store
        self._bounds = tuple(spec.buckets)
        self._points: dict[tuple, _Point] = {}

    def record(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None:
        store = self._store
        if not store.enabled:
            return
        if not 0 <= amount < math.inf:  # NaN fails too
            store.refused(self.spec.name, amount)
            return
        key = tuple(sorted(attributes.items())) if attributes else ()
        with store.lock:
            try:
                point = self._points.get(key)
            except TypeError:  # a list value: as a tuple, as the SDK hashes it
                key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attributes.items()))
                point = self._points.get(key)
            if point is None:
                point = self._new_point(key, attributes)
            point.counts[bisect_left(self._bounds, amount)] += 1
            point.count += 1
            point.sum += amount
            if amount < point.min:
                point.min = amount
            if amount > point.max:
                point.max = amount

    def _new_point(self, key: tuple, attributes: Mapping[str, Any] | None) -> _Point:
        points = self._points
        if len(points) >= CARDINALITY_LIMIT:
            key, attributes = _OVERFLOW, dict(_OVERFLOW)
            point = points.get(key)
            if point is not None:
                return point
            self._store.overflowed(self.spec.name)
        point = points[key] = _Point(dict(attributes or {}), time.time_ns(), len(self._bounds) + 1)
        return point

    def collect(self, delta: bool, since_ns: int, now_ns: int) -> list[HistogramDataPoint]:
        out = []
        for point in self._points.values():
            if delta and not point.count:
                continue
            out.append(HistogramDataPoint(
                attributes=point.attributes, start_time_unix_nano=since_ns if delta else point.start_ns,
                time_unix_nano=now_ns, count=point.count, sum=point.sum, bucket_counts=tuple(point.counts),
                explicit_bounds=self._bounds, min=point.min, max=point.max, exemplars=[]))
            if delta:
                point.counts = [0] * len(point.counts)
                point.count, point.sum, point.min, point.max = 0, 0, math.inf, -math.inf
        return out


class StoreMetrics:
    """The GenAI histograms of one instrumentation scope, under the names `metrics.GenAIMetrics` uses."""

    def __init__(self, store: "HistogramStore") -> None:
        self.histograms = [StoreHistogram(spec, store) for spec in HISTOGRAMS]
        for histogram in self.histograms:
            setattr(self, histogram.spec.attribute, histogram)


class HistogramStore:
    """The request histograms of one meter provider (see the module docstring). `enabled` is False
    when the provider has no metric reader: then recording costs nothing."""

    def __init__(self, temporality: AggregationTemporality = AggregationTemporality.CUMULATIVE,
                 enabled: bool = True) -> None:
        self.delta = temporality is AggregationTemporality.DELTA
        self.enabled = enabled
        self.lock = threading.Lock()
        self.requests = 0  # finished requests whose points were recorded here
        self.refused_points = 0  # non-finite or negative values, as the SDK refuses them
        self._scopes: dict[tuple[str, str], StoreMetrics] = {}
        self._last_collection_ns = time.time_ns()
        self._warned: set[str] = set()

    def metrics(self, scope: tuple[str, str]) -> StoreMetrics:
        found = self._scopes.get(scope)
        if found is None:
            with self.lock:
                found = self._scopes.setdefault(scope, StoreMetrics(self))
        return found

    def count_request(self) -> None:
        with self.lock:
            self.requests += 1

    def attach(self, meter_provider: MeterProvider) -> None:
        """Count recorded requests on `meter_provider`: the SDK exports only a collection that holds
        a point, so this counter makes every collection reach `MergingMetricExporter`."""
        meter = meter_provider.get_meter("fi_evals_core.telemetry")
        meter.create_observable_counter(REQUESTS_COUNTER, callbacks=[self._observe], unit="{request}",
                                        description="Finished requests whose GenAI histogram points were recorded")

    def _observe(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(self.requests)]

    def collect(self) -> list[ScopeMetrics]:
        """The points since the last collection (delta) or since the start (cumulative)."""
        now = time.time_ns()
        out = []
        with self.lock:
            since, self._last_collection_ns = self._last_collection_ns, now
            for (name, version), scope_metrics in self._scopes.items():
                metrics = []
                for histogram in scope_metrics.histograms:
                    points = histogram.collect(self.delta, since, now)
                    if points:
                        spec = histogram.spec
                        temporality = AggregationTemporality.DELTA if self.delta else AggregationTemporality.CUMULATIVE
                        metrics.append(Metric(name=spec.name, description=spec.description, unit=spec.unit,
                                              data=Histogram(data_points=points, aggregation_temporality=temporality)))
                if metrics:
                    out.append(ScopeMetrics(scope=InstrumentationScope(name, version), metrics=metrics,
                                            schema_url=None))
        return out

    def refused(self, name: str, amount: float) -> None:
        self.refused_points += 1
        self._warn_once(f"refused:{name}", "traceai: %s refused %r (histograms take finite values >= 0); further "
                        "refusals are counted, not logged", name, amount)

    def overflowed(self, name: str) -> None:
        self._warn_once(f"overflow:{name}", "traceai: %s has %d attribute sets; further ones are aggregated into "
                        "one otel.metric.overflow point", name, CARDINALITY_LIMIT)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)


class MergingMetricExporter(MetricExporter):
    """A metric exporter that adds the store's points to every export of `exporter`."""

    def __init__(self, exporter: MetricExporter, store: HistogramStore, resource: Resource,
                 preferred_temporality: Mapping[type, AggregationTemporality] | None = None) -> None:
        super().__init__(preferred_temporality=dict(preferred_temporality) if preferred_temporality else None)
        self.exporter = exporter
        self.store = store
        self.resource = resource

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        scopes = self.store.collect()
        if scopes:
            metrics_data = merged(metrics_data, scopes, self.resource)
        return self.exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.exporter.shutdown(timeout_millis=timeout_millis, **kwargs)


def merged(metrics_data: MetricsData, scopes: Sequence[ScopeMetrics], resource: Resource) -> MetricsData:
    """`metrics_data` with `scopes` added to its first resource (a scope already there gets the
    metrics appended to its own entry)."""
    if not metrics_data.resource_metrics:
        return MetricsData(resource_metrics=[ResourceMetrics(resource=resource, scope_metrics=list(scopes),
                                                             schema_url=resource.schema_url)])
    first, *rest = metrics_data.resource_metrics
    scope_metrics = list(first.scope_metrics)
    index = {entry.scope: i for i, entry in enumerate(scope_metrics)}
    for entry in scopes:
        i = index.get(entry.scope)
        if i is None:
            scope_metrics.append(entry)
        else:
            old = scope_metrics[i]
            scope_metrics[i] = ScopeMetrics(scope=old.scope, metrics=list(old.metrics) + list(entry.metrics),
                                            schema_url=old.schema_url)
    return MetricsData(resource_metrics=[ResourceMetrics(resource=first.resource, scope_metrics=scope_metrics,
                                                         schema_url=first.schema_url)] + rest)
