"""The OTLP/gRPC span exporter `register()` and the export process use: OpenTelemetry's own, with
span attributes encoded once per distinct value.

Encoding a span's attributes into protobuf messages is most of the exporter's CPU (each attribute a
`KeyValue` built in Python), and most attributes of request spans repeat from span to span: the
model, provider and operation, the sampling parameters, the framework and engine versions, dtype
and device. `AttributeCache` keeps the encoded `KeyValue` of such values and reuses it (protobuf
copies it into the span), so only the per-request values (ids, timings, token counts) are built
each time. The request is otherwise made by the library's `encode_spans`, and the bytes sent are
the same (tests/fi_evals_core/test_telemetry_core.py compares them). Measurements:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.sdk.trace import ReadableSpan

MAX_CACHED = 4096  # distinct (key, value) pairs kept; when full the cache starts afresh


class AttributeCache:
    """Encoded `KeyValue`s of attribute values seen before (floats are never cached: they rarely
    repeat). A value that cannot be a dictionary key (a list) is cached as a tuple."""

    def __init__(self, max_entries: int = MAX_CACHED) -> None:
        self.max_entries = max_entries
        self._encoded: dict[tuple, KeyValue] = {}

    def key_values(self, attributes: Mapping[str, Any] | None) -> list[KeyValue]:
        out = []
        encoded = self._encoded
        for key, value in (attributes or {}).items():
            kind = type(value)
            if kind is float:  # rarely repeats: not cached
                out.append(KeyValue(key=key, value=AnyValue(double_value=value)))
                continue
            # the type is part of the key: True == 1 and (True,) == (1,), but they encode differently
            if kind is list or kind is tuple:
                cache_key: tuple = (key, tuple(value), tuple(map(type, value)))
            else:
                cache_key = (key, kind, value)
            try:
                kv = encoded.get(cache_key)
            except TypeError:  # an unhashable value inside: encode it every time
                out.append(KeyValue(key=key, value=any_value(value)))
                continue
            if kv is None:
                if len(encoded) >= self.max_entries:
                    encoded.clear()
                kv = encoded[cache_key] = KeyValue(key=key, value=any_value(value))
            out.append(kv)
        return out

    def encode(self, spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        """`encode_spans(spans)`, the attributes from the cache."""
        request = encode_spans([_WithoutAttributes(span) for span in spans])
        by_id = {span.context.span_id.to_bytes(8, "big"): span for span in spans}
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for encoded in scope_spans.spans:
                    encoded.attributes.extend(self.key_values(by_id[encoded.span_id].attributes))
        return request


def any_value(value: Any) -> AnyValue:
    """A value as OTLP's AnyValue, as the library's encoder makes it."""
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, Sequence):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, Mapping):
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=str(k), value=any_value(v))
                                                          for k, v in value.items()]))
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


class _WithoutAttributes:
    """A span as `encode_spans` reads it, less its attributes (added from the cache afterwards)."""

    __slots__ = ("_span",)
    attributes = None

    def __init__(self, span: ReadableSpan) -> None:
        self._span = span

    def __getattr__(self, name: str) -> Any:
        return getattr(self._span, name)

    def get_span_context(self) -> Any:
        return self._span.get_span_context()


class GrpcSpanExporter(OTLPSpanExporter):
    """OpenTelemetry's OTLP/gRPC span exporter (retries, headers, compression, TLS as configured),
    translating spans through an `AttributeCache` (`_translate_data` is its extension point)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attribute_cache = AttributeCache()

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        return self._attribute_cache.encode(data)
