"""`register()`: providers and exporters from the environment, plus every installed instrumentor.

Instrumentors are found through the `traceai.instrumentors` entry-point group, so the core knows
no engine: installing `traceai-huggingface` or `traceai-vllm` is what makes `register()` patch it.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)

from .config import ConfigError, TelemetryConfig, set_config
from .exporters import JsonlSpanExporter

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "traceai.instrumentors"


@dataclass
class Telemetry:
    """What `register()` built; `shutdown()` flushes and stops it, and undoes the patching."""

    config: TelemetryConfig
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    instrumentors: dict[str, Any] = field(default_factory=dict)
    destination: str = ""
    inline_evaluation: Any = None  # fi_evals_core.evals.inline.InlineEvaluator when FI_EVALS_SAMPLE_RATE > 0
    export_process: Any = None  # export_process.ExportProcess with TRACEAI_EXPORT_PROCESS=1

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        traces = self.tracer_provider.force_flush(timeout_millis)
        metrics = self.meter_provider.force_flush(timeout_millis)
        if self.export_process is not None:  # the request histograms recorded there
            metrics = self.export_process.flush(timeout_millis / 1000) and metrics
        return bool(traces and metrics)

    def shutdown(self) -> None:
        for instrumentor in self.instrumentors.values():
            try:
                instrumentor.uninstrument()
            except Exception:
                logger.debug("uninstrument failed", exc_info=True)
        self.instrumentors.clear()
        if self.inline_evaluation is not None:
            from ..evals.inline import stop_inline_evaluation

            stop_inline_evaluation()
            self.inline_evaluation = None
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        if self.export_process is not None:
            self.export_process.close()


def register(
    *,
    service_name: str | None = None,
    config: TelemetryConfig | None = None,
    instrument: bool = True,
    set_global: bool = True,
) -> Telemetry:
    """Build tracer and meter providers from the environment and instrument every installed engine.

    With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans and metrics go there over OTLP (gRPC or HTTP per
    `OTEL_EXPORTER_OTLP_PROTOCOL`); otherwise spans are appended to `TRACEAI_TRACES_FILE`.
    """
    config = config or TelemetryConfig.from_env()
    set_config(config)
    resource = Resource.create({SERVICE_NAME: service_name or config.service_name})
    if service_name is None and config.service_name == "unknown_service":
        resource = Resource.create()  # keep OTEL_RESOURCE_ATTRIBUTES' service.name, if any

    tracer_provider = TracerProvider(resource=resource, sampler=_sampler(config))
    meter_provider = MeterProvider(resource=resource, metric_readers=_metric_readers(config))
    export_process = None
    destination = _span_destination(config)
    exported = config.traces_exporter != "none" or config.metrics_exporter != "none"
    if config.export_process and exported:  # spans and request histograms exported by a child process
        from .export_process import ExportProcess

        export_process = ExportProcess(config, dict(resource.attributes))
        if config.traces_exporter != "none":  # the child builds the exporter
            tracer_provider.add_span_processor(export_process.span_processor())
            tracer_provider._fi_export_process = export_process  # deferred request spans go there directly
            destination += " (from an export process)"
        # The request histograms are recorded there (read by TelemetryRuntime), exported or not:
        # finished requests then go there as records, spans and histograms made by the child.
        meter_provider._fi_export_process = export_process
    else:
        span_exporter = _span_exporter(config)
        if span_exporter is not None:
            tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))

    if set_global:
        trace.set_tracer_provider(tracer_provider)
        otel_metrics.set_meter_provider(meter_provider)

    telemetry = Telemetry(config, tracer_provider, meter_provider, destination=destination,
                          export_process=export_process)
    if os.environ.get("FI_EVALS_SAMPLE_RATE", "").strip():
        from ..evals.inline import start_inline_evaluation  # light: the NLI model loads on first use

        telemetry.inline_evaluation = start_inline_evaluation(tracer_provider, meter_provider)
    if instrument:
        telemetry.instrumentors = instrument_installed(
            tracer_provider=tracer_provider, meter_provider=meter_provider, config=config
        )
    return telemetry


def instrument_installed(**kwargs: Any) -> dict[str, Any]:
    """Instrument every engine whose instrumentor is installed and whose library is present."""
    done: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            instrumentor = ep.load()()
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(**kwargs)
            if instrumentor.is_instrumented_by_opentelemetry:
                done[ep.name] = instrumentor
        except Exception:
            logger.warning("instrumentor %s could not be enabled", ep.name, exc_info=True)
    return done


def _sampler(config: TelemetryConfig) -> Sampler:
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


def _span_exporter(config: TelemetryConfig) -> SpanExporter | None:
    kind = config.traces_exporter
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "jsonl":
        return JsonlSpanExporter(config.traces_file)
    return _otlp_exporter(config, "traces", config.otlp_traces_endpoint)


def _span_destination(config: TelemetryConfig) -> str:
    """Where `_span_exporter(config)` sends, in words (for the user)."""
    return {
        "none": "nowhere (OTEL_TRACES_EXPORTER=none)",
        "console": "the console",
        "jsonl": f"{config.traces_file.resolve()}",
    }.get(config.traces_exporter, f"OTLP {config.otlp_protocol} {config.otlp_traces_endpoint}")


def _metric_readers(config: TelemetryConfig) -> list[MetricReader]:
    if config.metrics_exporter == "none":
        return []
    if config.metrics_exporter == "console":
        return [PeriodicExportingMetricReader(ConsoleMetricExporter())]
    exporter = _otlp_exporter(config, "metrics", config.otlp_metrics_endpoint)
    return [PeriodicExportingMetricReader(exporter)]


_OTLP_EXPORTERS = {
    ("grpc", "traces"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("grpc", "metrics"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ("http/protobuf", "traces"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
    ("http/protobuf", "metrics"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
}


def _otlp_exporter(config: TelemetryConfig, signal: str, endpoint: str | None) -> Any:
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
        "headers": dict(config.otlp_headers) or None,
        "timeout": config.otlp_timeout_s,
    }
    if config.otlp_protocol == "grpc" and endpoint:
        kwargs["insecure"] = endpoint.startswith("http://")
    return exporter_class(**kwargs)
