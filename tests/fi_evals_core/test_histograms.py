"""The request histograms of register()'s providers (histograms.py): the same points as the SDK's
own histograms for the same measurements (buckets, count, sum, min, max, attributes, cumulative
and delta), the same refusals and overflow, merged into the SDK's export; and end to end through
register() to the real collector with delta temporality."""

from __future__ import annotations

import logging
import math

import pytest
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from fi_evals_core import register
from fi_evals_core.telemetry import ConfigError, TelemetryConfig
from fi_evals_core.telemetry import attributes as A
from fi_evals_core.telemetry import histograms as H
from fi_evals_core.telemetry import providers
from fi_evals_core.telemetry.metrics import GenAIMetrics

SCOPE = ("traceai_test", "1.0")
BASE = {A.OPERATION_NAME: "chat", A.PROVIDER_NAME: "vllm", A.REQUEST_MODEL: "tiny", A.SERVER_PORT: 8000}
# (histogram, value, attributes): boundaries hit exactly, zero, ints and floats, beyond the last
# boundary, one attribute set written in two key orders, a bool attribute
MEASUREMENTS = [
    ("operation_duration", 0.01, BASE),
    ("operation_duration", 0.0, BASE),
    ("operation_duration", 0.333, dict(reversed(list(BASE.items())))),
    ("operation_duration", 1000.5, {**BASE, A.ERROR_TYPE: "TimeoutError"}),
    ("token_usage", 25, {**BASE, A.TOKEN_TYPE: "input"}),
    ("token_usage", 4, {**BASE, A.TOKEN_TYPE: "output"}),
    ("token_usage", 5, {**BASE, A.TOKEN_TYPE: "output"}),
    ("server_time_per_output_token", 0.0123, {**BASE, "streamed": True}),
    ("server_time_to_first_token", 7.5, BASE),
]


def _sdk(temporality: AggregationTemporality, limit: int | None = None):
    reader = InMemoryMetricReader(preferred_temporality={Histogram: temporality},
                                  cardinality_limits={Histogram: limit} if limit else None)
    provider = MeterProvider(metric_readers=[reader])
    return GenAIMetrics(provider.get_meter(*SCOPE)), reader


def _points_of_sdk(reader: InMemoryMetricReader) -> dict:
    data = reader.get_metrics_data()
    metrics = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics] if data else []
    return _points(metrics)


def _points_of_store(store: H.HistogramStore) -> dict:
    scopes = store.collect()
    assert all((s.scope.name, s.scope.version) == SCOPE for s in scopes)
    return _points([m for s in scopes for m in s.metrics])


def _points(metrics) -> dict:
    out = {}
    for metric in metrics:
        for p in metric.data.data_points:
            key = (metric.name, metric.unit, metric.description, tuple(sorted(p.attributes.items())))
            out[key] = (metric.data.aggregation_temporality, p.count, p.sum, tuple(p.bucket_counts),
                        tuple(p.explicit_bounds), p.min, p.max)
    return out


@pytest.mark.parametrize("temporality", [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA])
def test_same_points_as_the_sdk_histograms(temporality):
    sdk, reader = _sdk(temporality)
    store = H.HistogramStore(temporality)
    ours = store.metrics(SCOPE)
    for name, value, attributes in MEASUREMENTS:
        getattr(sdk, name).record(value, attributes)
        getattr(ours, name).record(value, attributes)
    first = _points_of_store(store)
    assert first == _points_of_sdk(reader)
    assert len(first) == 6  # the two key orders are one attribute set
    # a second collection: cumulative keeps everything, delta only what was recorded since
    sdk.token_usage.record(30, {**BASE, A.TOKEN_TYPE: "input"})
    ours.token_usage.record(30, {**BASE, A.TOKEN_TYPE: "input"})
    second = _points_of_store(store)
    assert second == _points_of_sdk(reader)
    assert len(second) == (6 if temporality is AggregationTemporality.CUMULATIVE else 1)
    (usage,) = [v for k, v in second.items() if k[0] == A.METRIC_TOKEN_USAGE and ("gen_ai.token.type", "input") in k[3]]
    assert usage[1:3] == ((2, 55) if temporality is AggregationTemporality.CUMULATIVE else (1, 30))


def test_refused_values_are_counted_and_logged_once(caplog):
    sdk, reader = _sdk(AggregationTemporality.CUMULATIVE)
    store = H.HistogramStore()
    ours = store.metrics(SCOPE)
    with caplog.at_level(logging.WARNING, logger=H.__name__):
        for value in (math.nan, math.inf, -1.0, 0.5):
            sdk.operation_duration.record(value, BASE)
            ours.operation_duration.record(value, BASE)
    assert _points_of_store(store) == _points_of_sdk(reader)  # only 0.5, in both
    assert store.refused_points == 3
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1


def test_attribute_sets_beyond_the_limit_go_to_one_overflow_point(monkeypatch, caplog):
    monkeypatch.setattr(H, "CARDINALITY_LIMIT", 3)
    sdk, reader = _sdk(AggregationTemporality.CUMULATIVE, limit=3)
    store = H.HistogramStore()
    ours = store.metrics(SCOPE)
    with caplog.at_level(logging.WARNING, logger=H.__name__):
        for i in range(6):
            sdk.operation_duration.record(0.1 * (i + 1), {**BASE, A.REQUEST_MODEL: f"m{i}"})
            ours.operation_duration.record(0.1 * (i + 1), {**BASE, A.REQUEST_MODEL: f"m{i}"})
    points = _points_of_store(store)
    assert points == _points_of_sdk(reader)
    overflow = [v for k, v in points.items() if k[3] == (("otel.metric.overflow", True),)]
    assert len(points) == 4 and len(overflow) == 1 and overflow[0][1] == 3
    assert len([r for r in caplog.records if "otel.metric.overflow" in r.getMessage()]) == 1


def test_a_disabled_store_records_nothing():
    store = H.HistogramStore(enabled=False)
    store.metrics(SCOPE).operation_duration.record(0.5, BASE)
    assert store.collect() == []


class _Keep(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exported = []

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        self.exported.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        pass


def test_merged_into_the_sdk_export_with_the_providers_resource():
    """The store's points join the SDK's collection: one resource, the SDK's own instruments kept,
    and a scope both have is one entry; the request counter makes a collection with nothing else
    reach the exporter."""
    inner = _Keep()
    resource = Resource.create({"service.name": "merge-test"})
    store = H.HistogramStore()
    reader = PeriodicExportingMetricReader(H.MergingMetricExporter(inner, store, resource),
                                           export_interval_millis=3_600_000)
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    store.attach(provider)
    try:
        store.metrics(SCOPE).operation_duration.record(0.5, BASE)
        store.count_request()
        provider.get_meter(*SCOPE).create_counter("app.requests").add(2)  # an SDK instrument, same scope
        provider.force_flush()
        (data,) = inner.exported
        (resource_metrics,) = data.resource_metrics
        assert resource_metrics.resource.attributes["service.name"] == "merge-test"
        scopes = {(s.scope.name, s.scope.version): [m.name for m in s.metrics] for s in resource_metrics.scope_metrics}
        assert sorted(scopes[SCOPE]) == sorted(["app.requests", A.METRIC_OPERATION_DURATION])
        (counter,) = [m for s in resource_metrics.scope_metrics for m in s.metrics if m.name == H.REQUESTS_COUNTER]
        assert counter.data.data_points[0].value == 1
    finally:
        provider.shutdown()


def test_temporality_preference_is_read_once_and_a_bad_one_names_the_variable():
    config = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "Delta"})
    assert providers.temporality(config)[Histogram] is AggregationTemporality.DELTA
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE='weekly'"):
        TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "weekly"})
    exponential = TelemetryConfig.from_env({
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "base2_exponential_bucket_histogram"})
    provider, store = providers.meter_provider(exponential, Resource.create({}))
    provider.shutdown()
    assert store is None  # exponential histograms: the SDK's instruments record them


def test_register_exports_delta_request_histograms_to_the_collector(collector, model_dirs):
    """Through register(), in-process: each flush exports the points since the one before."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    collector.clear()
    env = {**collector.otel_env("grpc"), "OTEL_SERVICE_NAME": "delta-histograms",
           "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"}
    telemetry = register(config=TelemetryConfig.from_env(env), set_global=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"])
        tok = AutoTokenizer.from_pretrained(model_dirs["gpt2"])
        enc = tok("hello there", return_tensors="pt")
        for tokens in (3, 2):
            model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        assert telemetry.force_flush()
        model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert telemetry.force_flush()
    finally:
        telemetry.shutdown()

    def ours(metric):
        return metric["resource_attributes"].get("service.name") == "delta-histograms"

    usages = [m for m in collector.wait_for_metrics(A.METRIC_TOKEN_USAGE) if ours(m)]
    outputs = [p for m in usages for p in m["data_points"] if p["attributes"][A.TOKEN_TYPE] == "output"]
    assert [(p["count"], p["sum"]) for p in outputs][:2] == [(2, 5), (1, 4)]
    assert all(m["aggregation_temporality"] == "DELTA" for m in usages)
    requests = [m for m in collector.wait_for_metrics(H.REQUESTS_COUNTER) if ours(m)]
    assert requests and requests[0]["data_points"][0]["value"] == 2
