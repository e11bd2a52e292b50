"""The OpenTelemetry SDK pieces the configuration asks for, built in one place: the sampler, the
span exporter, the meter provider with its readers and request histograms, and the providers
`register()` builds. The export process builds its own from the same functions and the same
configuration, so both decide alike.
"""

from __future__ import annotations

import importlib
from collections import deque
from typing import Any, Callable

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import NoOpTracer
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)

from .config import ConfigError, TelemetryConfig
from .content import strip_credentials
from .exporters import JsonlSpanExporter
from .histograms import HistogramStore, MergingMetricExporter
from .losses import ENDED_AFTER_SHUTDOWN, QUEUE_FULL, SHUTDOWN_TIMEOUT, CountingSpanExporter, losses, settled
from .outage import SHUTDOWN_WAIT_S, OutageBuffer
from .metric_export import StopWhenRefused
from .worker import finish_queued


class RegisteredTracerProvider(TracerProvider):
    """The tracer provider `register()` builds: its flush and shutdown first emit the requests that
    have ended (and score what inline evaluation holds), and it says when the application adds a
    span processor of its own (`on_processor_added`), so request spans can be made where that
    processor sees them."""

    finishes_queued_first = True
    on_processor_added: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # instrumentation scopes (and their sub-scopes) whose tracers record nothing, and why: an
        # instrumentor's choice (vLLM's own start-up spans), said in register()'s start-up line
        self.muted_scopes: dict[str, str] = {}

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> Any:
        for scope in self.muted_scopes:
            if instrumenting_module_name == scope or instrumenting_module_name.startswith(scope + "."):
                return NoOpTracer()
        return super().get_tracer(instrumenting_module_name, *args, **kwargs)

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        if self.on_processor_added is not None:
            self.on_processor_added()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        queued = finish_queued(timeout_s=timeout_millis / 1000)
        return super().force_flush(timeout_millis) and queued

    def shutdown(self) -> None:
        finish_queued(shutdown=True)
        super().shutdown()


class RegisteredMeterProvider(MeterProvider):
    """The meter provider `register()` builds: flushed after the requests that have ended recorded
    their histogram points."""

    finishes_queued_first = True

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        queued = finish_queued(timeout_s=timeout_millis / 1000)
        return super().force_flush(timeout_millis) and queued

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        finish_queued(shutdown=True)
        super().shutdown(timeout_millis)


def sampler(config: TelemetryConfig) -> Sampler:
    name = config.sampler
    if name == "traceidratio":
        return TraceIdRatioBased(config.sampler_arg if config.sampler_arg is not None else 1.0)
    if name == "parentbased_traceidratio":
        return ParentBasedTraceIdRatio(config.sampler_arg if config.sampler_arg is not None else 1.0)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "parentbased_always_on": DEFAULT_ON,
        "parentbased_always_off": DEFAULT_OFF,
    }[name]


def span_exporter(config: TelemetryConfig) -> SpanExporter | None:
    """The configured span exporter, what it fails to deliver counted (losses.py); OTLP through an
    outage buffer (outage.py)."""
    kind = config.traces_exporter
    if kind == "none":
        return None
    if kind == "console":
        return CountingSpanExporter(ConsoleSpanExporter())
    if kind == "jsonl":
        return CountingSpanExporter(JsonlSpanExporter(config.traces_file))
    otlp = _otlp_exporter(config, "traces", config.otlp_traces_endpoint)
    if config.export_buffer_spans > 0:  # what fails waits (bounded) for the collector; losses counted there
        return OutageBuffer(otlp, config.export_buffer_spans, config.otlp_traces_endpoint)
    return CountingSpanExporter(otlp)


class ExportingSpanProcessor(BatchSpanProcessor):
    """The SDK's batch span processor, with what it drops counted (losses.py): a span pushed out
    of its full queue (`queue_full`; the SDK drops the oldest, as its own warning says), a span
    ended after its shutdown (`ended_after_shutdown`), spans still queued when its shutdown timed
    out (`shutdown_timeout`). Its `force_flush` is True only when its exporter holds nothing back
    (an outage buffer with spans still waiting says False).

    It reads the SDK processor's queue (`_batch_processor._queue`, a bounded deque); with an SDK
    where that is not there, spans go to the SDK's `on_end` and its drops are not counted."""

    def __init__(self, exporter: SpanExporter, **kwargs: Any) -> None:
        super().__init__(exporter, **kwargs)
        self.exporter = exporter
        processor = getattr(self, "_batch_processor", None)
        self._processor = processor if isinstance(getattr(processor, "_queue", None), deque) else None

    def on_end(self, span: ReadableSpan) -> None:
        processor = self._processor
        if processor is None:
            super().on_end(span)
            return
        if not (span.context and span.context.trace_flags.sampled):
            return
        if processor._shutdown:
            losses.add(ENDED_AFTER_SHUTDOWN)
            settled((span,))
            return
        queue = processor._queue
        if len(queue) >= queue.maxlen:
            try:
                settled((queue[-1],))  # the oldest: the SDK's appendleft drops it
                losses.add(QUEUE_FULL)
            except IndexError:  # the worker took a batch meanwhile: nothing is dropped
                pass
        processor.emit(span)

    def shutdown(self) -> None:
        if self._processor is None:
            super().shutdown()
            return
        # its worker is waited for at most SHUTDOWN_WAIT_S (an export that hangs), then the exporter
        # is shut down (an outage buffer aborts such an export: outage.py)
        self._processor.shutdown(timeout_millis=SHUTDOWN_WAIT_S * 1000)
        if self._processor._queue:
            left = list(self._processor._queue)  # its worker did not drain them within the timeout
            self._processor._queue.clear()
            losses.add(SHUTDOWN_TIMEOUT, len(left))
            settled(left)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(super().force_flush(timeout_millis)) and self.exporter.force_flush(timeout_millis)


def span_destination(config: TelemetryConfig) -> str:
    """Where `span_exporter(config)` sends, in words (for the user; no credentials)."""
    return {
        "none": "nowhere (OTEL_TRACES_EXPORTER=none)",
        "console": "the console",
        "jsonl": f"{config.traces_file.resolve()}",
    }.get(config.traces_exporter, f"OTLP {config.otlp_protocol} {strip_credentials(config.otlp_traces_endpoint or '')}")


def metric_destination(config: TelemetryConfig) -> str:
    """Where the metric reader exports, in words (for the user; no credentials)."""
    return {
        "none": "nowhere (OTEL_METRICS_EXPORTER=none)",
        "console": "the console",
    }.get(config.metrics_exporter, f"OTLP {config.otlp_protocol} {strip_credentials(config.otlp_metrics_endpoint or '')}")


_DELTA, _CUMULATIVE = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE
# What OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE means per instrument kind (the OTLP spec's table).
_TEMPORALITIES = {
    "cumulative": {},
    "delta": {Counter: _DELTA, Histogram: _DELTA, ObservableCounter: _DELTA},
    "lowmemory": {Counter: _DELTA, Histogram: _DELTA},
}


def temporality(config: TelemetryConfig) -> dict[type, AggregationTemporality]:
    """The temporality of each instrument kind, as the configuration prefers."""
    kinds = (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge)
    preferred = _TEMPORALITIES[config.metrics_temporality]
    return {kind: preferred.get(kind, _CUMULATIVE) for kind in kinds}


def meter_provider(config: TelemetryConfig, resource: Resource, provider_class: type[MeterProvider] = MeterProvider,
                   **kwargs: Any) -> tuple[MeterProvider, HistogramStore | None]:
    """A meter provider exporting as the configuration asks, and the store its request histograms
    are recorded in (histograms.py). None when the histograms are exponential: then the SDK's own
    instruments record them. With no exporter the store is disabled and recording costs nothing."""
    preferred = temporality(config)
    explicit = config.histogram_aggregation == "explicit_bucket_histogram"
    store = HistogramStore(preferred[Histogram], enabled=config.metrics_exporter != "none") if explicit else None
    readers = []
    if config.metrics_exporter != "none":
        if config.metrics_exporter == "console":
            exporter = ConsoleMetricExporter(preferred_temporality=preferred)
        else:
            exporter = StopWhenRefused(
                _otlp_exporter(config, "metrics", config.otlp_metrics_endpoint, preferred_temporality=preferred),
                config.otlp_protocol, config.otlp_metrics_endpoint or "", config.otlp_metrics_headers, preferred)
        if store is not None:
            exporter = MergingMetricExporter(exporter, store, resource, preferred)
        readers.append(PeriodicExportingMetricReader(exporter))
    provider = provider_class(resource=resource, metric_readers=readers, **kwargs)
    if readers:
        losses.attach(provider)  # traceai.telemetry.dropped
    if store is not None and store.enabled:
        store.attach(provider)
    return provider, store


_OTLP_EXPORTERS = {
    ("grpc", "traces"): ("fi_evals_core.telemetry.otlp_grpc", "GrpcSpanExporter"),  # attributes encoded once
    ("grpc", "metrics"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ("http/protobuf", "traces"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
    ("http/protobuf", "metrics"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
}


def _otlp_exporter(config: TelemetryConfig, signal: str, endpoint: str | None, **extra: Any) -> Any:
    module_name, class_name = _OTLP_EXPORTERS[(config.otlp_protocol, signal)]
    try:
        exporter_class = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            config.otlp_protocol,
            f"its exporter is not installed ({exc.name}); pip install 'fi-evals-core[otlp]'",
        ) from exc
    kwargs: dict[str, Any] = {
        "endpoint": endpoint,
        "headers": dict(config.otlp_headers if signal == "traces" else config.otlp_metrics_headers) or None,
        "timeout": config.otlp_timeout_s,
    }
    if config.otlp_protocol == "grpc" and endpoint:
        kwargs["insecure"] = endpoint.startswith("http://")
        kwargs["channel_options"] = GRPC_CHANNEL_OPTIONS
    return exporter_class(**kwargs, **extra)


# gRPC's own reconnect backoff grows to 120 s while a collector is down, and channels share it
# (the global subchannel pool), so a collector back after a 30 s outage would not be reached for
# tens of seconds more, and a stop in that window would count every kept span as lost. Here: the
# collector is asked again at most 5 s apart, and each exporter's channel keeps its own state.
GRPC_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.use_local_subchannel_pool", 1),
)
