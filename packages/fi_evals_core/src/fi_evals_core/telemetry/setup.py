"""`register()`: providers and exporters from the environment, the sink finished requests go to,
and every installed instrumentor.

Instrumentors are found through the `traceai.instrumentors` entry-point group and completion sinks
(inline evaluation) through `fi_evals_core.completion_sinks`, so the core knows no engine and no
evaluator: installing a package is what makes `register()` use it.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource

from . import handoff, logs, providers
from .losses import losses
from .outage import SHUTDOWN_WAIT_S
from .config import TelemetryConfig, set_config
from .emit import DirectSpans, Emitter
from .export_process import ExportProcess
from .exporters import JsonlSpanExporter
from .sinks import ExportProcessSink, RequestSink, WorkerSink

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "traceai.instrumentors"


@dataclass
class Telemetry:
    """What `register()` built; `shutdown()` flushes and stops it, and undoes the patching."""

    config: TelemetryConfig
    tracer_provider: providers.RegisteredTracerProvider
    meter_provider: providers.RegisteredMeterProvider
    sink: RequestSink
    instrumentors: dict[str, Any] = field(default_factory=dict)
    destination: str = ""
    completion_sink: Any = None  # inline evaluation, when it runs in this process
    export_process: ExportProcess | None = None  # with TRACEAI_EXPORT_PROCESS=1
    _stopped: bool = field(default=False, repr=False)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        traces = self.tracer_provider.force_flush(timeout_millis)
        metrics = self.meter_provider.force_flush(timeout_millis)
        if self.export_process is not None:  # the request histograms are recorded there
            metrics = self.export_process.flush(timeout_millis / 1000) and metrics
        return bool(traces and metrics)

    def shutdown(self) -> None:
        atexit.unregister(self._shutdown_at_exit)
        for instrumentor in self.instrumentors.values():
            try:
                instrumentor.uninstrument()
            except Exception:
                logger.debug("uninstrument failed", exc_info=True)
        self.instrumentors.clear()
        self._stop()

    def _shutdown_at_exit(self) -> None:
        """At interpreter exit (register() asks for it; its providers do not register their own):
        everything stopped in the order `_stop` keeps, the patching left in place."""
        try:
            self._stop()
        except Exception:
            logger.debug("telemetry shutdown at exit failed", exc_info=True)

    def _stop(self) -> None:
        """Traces first (the requests that ended are emitted, the export process drains and stops,
        counting what it could not deliver), then metrics (their last export carries those counts),
        then the totals logged. Once."""
        if self._stopped:
            return
        self._stopped = True
        self.tracer_provider.shutdown()  # emits what has ended and stops inline evaluation first
        if self.export_process is not None:
            self.export_process.close()
        self.meter_provider.shutdown(timeout_millis=SHUTDOWN_WAIT_S * 1000)  # a hung collector: then aborted
        if self.completion_sink is not None and handoff.get_sink() is self.completion_sink:
            handoff.set_sink(None)
        self.completion_sink = None
        losses.report_totals()  # what never reached the backend, once, by reason


def register(
    *,
    service_name: str | None = None,
    config: TelemetryConfig | None = None,
    instrument: bool = True,
    set_global: bool = True,
) -> Telemetry:
    """Build tracer and meter providers from the environment and instrument every installed engine.

    With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans and metrics go there over OTLP (gRPC or HTTP per
    `OTEL_EXPORTER_OTLP_PROTOCOL`); otherwise spans are appended to `TRACEAI_TRACES_FILE`. With
    `TRACEAI_EXPORT_PROCESS=1`, finished requests are made into spans and histograms, and exported,
    by a child process (export_process.py).
    """
    logs.make_visible()
    config = config or TelemetryConfig.from_env()
    set_config(config)
    resource = Resource.create({SERVICE_NAME: service_name or config.service_name})
    if service_name is None and config.service_name == "unknown_service":
        resource = Resource.create()  # keep OTEL_RESOURCE_ATTRIBUTES' service.name, if any

    # No exit hooks of their own: the SDK would shut the meter provider down first (the last one
    # made), before the export process's last losses are counted. `Telemetry._shutdown_at_exit` does.
    tracer_provider = providers.RegisteredTracerProvider(resource=resource, sampler=providers.sampler(config),
                                                         shutdown_on_exit=False)
    meter_provider, histograms = providers.meter_provider(config, resource, providers.RegisteredMeterProvider,
                                                          shutdown_on_exit=False)
    local = Emitter(tracer_provider, meter_provider, config.capture_content, histograms=histograms)
    sinks = handoff.enabled_sink_factories()
    destination = providers.span_destination(config)
    export_process = completion_sink = None
    exported = config.traces_exporter != "none" or config.metrics_exporter != "none"
    if config.export_process and exported and config.traces_exporter == "jsonl":
        JsonlSpanExporter(config.traces_file)  # the child appends there: an unusable file fails now, here
    if config.export_process and exported:
        # The child makes and exports the request spans and histograms, and runs the completion
        # sinks (it starts them from the same environment): texts go there with the requests.
        export_process = ExportProcess(config, dict(resource.attributes))
        if config.traces_exporter != "none":
            tracer_provider.add_span_processor(export_process.span_processor())
            destination += " (from an export process)"
        sink: RequestSink = ExportProcessSink(export_process, local, evaluates_remotely=bool(sinks))
        # A span processor the application adds must see the request spans: then they are made here.
        tracer_provider.on_processor_added = sink.keep_spans_here
    else:
        span_exporter = providers.span_exporter(config)
        if span_exporter is not None:
            batch = providers.ExportingSpanProcessor(span_exporter)
            tracer_provider.add_span_processor(batch)
            # Request spans go straight to it (no SDK Span), until the application adds a processor.
            local = Emitter(tracer_provider, meter_provider, config.capture_content,
                            DirectSpans(tracer_provider.sampler, tracer_provider.id_generator, resource, batch),
                            histograms=histograms)
            tracer_provider.on_processor_added = local.use_sdk_spans
        sink = WorkerSink(local)
        completion_sink = handoff.start_sink(sinks, tracer_provider, meter_provider)

    if set_global:
        trace.set_tracer_provider(tracer_provider)
        otel_metrics.set_meter_provider(meter_provider)

    telemetry = Telemetry(config, tracer_provider, meter_provider, sink, destination=destination,
                          completion_sink=completion_sink, export_process=export_process)
    atexit.register(telemetry._shutdown_at_exit)
    if instrument:
        telemetry.instrumentors = instrument_installed(
            tracer_provider=tracer_provider, meter_provider=meter_provider, config=config, telemetry_sink=sink
        )
    logger.info("traceai: %s", describe(telemetry, instrument, bool(sinks)))
    return telemetry


def describe(telemetry: Telemetry, instrument: bool, evaluating: bool) -> str:
    """What `register()` set up, in one line: the start-up log line of each process."""
    config = telemetry.config
    if instrument:
        instrumented = "instrumented " + (", ".join(sorted(telemetry.instrumentors)) or "nothing (no engine installed)")
    else:
        instrumented = "providers built (instrument=False)"
    sampler = config.sampler + (f" {config.sampler_arg:g}" if config.sampler_arg is not None else "")
    where = " in the export process" if telemetry.export_process is not None else ""
    muted = "".join(f"; no spans of {scope}.* ({why})" for scope, why in telemetry.tracer_provider.muted_scopes.items())
    return (f"{instrumented}; spans to {telemetry.destination}; metrics to {providers.metric_destination(config)}; "
            f"sampler {sampler}; content capture {config.capture_content.value}; "
            f"inline evaluation {('on' + where) if evaluating else 'off'}{muted}")


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
