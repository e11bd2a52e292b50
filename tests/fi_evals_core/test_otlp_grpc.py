"""The OTLP/gRPC span exporter's attribute cache: the request it builds is, byte for byte, the one
the library's encoder builds, whatever repeats; and spans reach a real collector through it."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fi_evals_core import register
from fi_evals_core.telemetry import TelemetryConfig
from fi_evals_core.telemetry.otlp_grpc import AttributeCache, GrpcSpanExporter
from fi_evals_core.telemetry.providers import span_exporter


def _spans(n: int):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "cache"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("a", "1")
    other = provider.get_tracer("b", "2")
    for i in range(n):
        with (tracer if i % 3 else other).start_as_current_span(f"s{i % 4}") as span:
            span.set_attributes({
                "model": "tiny", "framework.version": "2.13", "tp": 1, "stream": True, "flag": i % 2 == 0,
                "count": i % 5, "reasons": ["stop", "length"] if i % 2 else ["stop"], "ids": [1, 2, i % 2],
                # True == 1 and (True, False) == (1, 0): the cache must keep them apart
                "mixed": True if i % 2 else 1, "mixed_list": [True, False] if i % 2 else [1, 0],
                "latency": 0.001 * i, "id": f"req-{i}",
            })
            if i % 7 == 0:
                span.add_event("event", {"k": i})
    return memory.get_finished_spans()


def test_the_cached_encoding_is_the_library_encoding():
    spans = _spans(60)
    cache = AttributeCache(max_entries=16)  # small: it fills and starts afresh many times
    for batch in (spans[:25], spans[25:], spans):  # the second and third passes reuse encoded values
        assert cache.encode(batch).SerializeToString() == encode_spans(batch).SerializeToString()


def test_register_exports_grpc_spans_through_it(collector):
    collector.clear()
    config = TelemetryConfig.from_env({**collector.otel_env("grpc"), "OTEL_SERVICE_NAME": "attribute-cache"})
    assert isinstance(span_exporter(config).exporter, GrpcSpanExporter)  # inside the outage buffer
    telemetry = register(config=config, set_global=False, instrument=False)
    try:
        tracer = telemetry.tracer_provider.get_tracer("app")
        for i in range(3):
            with tracer.start_as_current_span("cached") as span:
                span.set_attributes({"repeated": "same", "flag": True, "n": 1, "i": i})
    finally:
        telemetry.shutdown()
    spans = collector.wait_for_spans(lambda s: s["resource_attributes"].get("service.name") == "attribute-cache",
                                     count=3)
    assert sorted(s["attributes"]["i"] for s in spans) == [0, 1, 2]
    assert all(s["attributes"]["repeated"] == "same" and s["attributes"]["flag"] is True and
               s["attributes"]["n"] == 1 for s in spans)
