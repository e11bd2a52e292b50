"""What an instrumentor holds while instrumented: tracer, instruments, content policy, GPU monitor."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from functools import partial
from typing import Any, Iterator

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import SpanKind, TracerProvider

from . import handoff
from .config import TelemetryConfig, get_config
from .content import ContentPolicy
from .gpu import GpuMemorySource, GpuMonitor, TorchNvmlSource
from .metrics import GenAIMetrics
from .request import RequestSpan, finish_described
from .worker import get_worker

logger = logging.getLogger(__name__)

_default_gpu_source: GpuMemorySource | None = None
# The request whose span is deferred and which encloses the current call (a pipeline call):
# requests started inside it become its children when their spans are created.
_deferred_parent: contextvars.ContextVar[RequestSpan | None] = contextvars.ContextVar(
    "traceai_deferred_parent", default=None
)


def set_gpu_memory_source(source: GpuMemorySource | None) -> None:
    """Replace where GPU memory numbers come from for runtimes created afterwards (None: torch+NVML)."""
    global _default_gpu_source
    _default_gpu_source = source


class TelemetryRuntime:
    def __init__(
        self,
        scope_name: str,
        scope_version: str,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        config: TelemetryConfig | None = None,
        gpu_source: GpuMemorySource | None = None,
    ) -> None:
        self.config = config or get_config()
        self.tracer = trace.get_tracer(scope_name, scope_version, tracer_provider=tracer_provider)
        self.scope = (scope_name, scope_version, None)
        self._tracer_provider = tracer_provider
        meter = otel_metrics.get_meter(scope_name, scope_version, meter_provider=meter_provider)
        # register(TRACEAI_EXPORT_PROCESS=1) marks its meter provider: the request histograms are
        # then recorded in the export process (export_process.py), not here.
        export_process = getattr(meter_provider or otel_metrics.get_meter_provider(), "_fi_export_process", None)
        self.metrics: Any = (export_process.genai_metrics(scope_name, scope_version) if export_process is not None
                             else GenAIMetrics(meter))
        self.content = ContentPolicy(self.config.capture_content, self.config.max_content_length)
        self._gpu_source = gpu_source or _default_gpu_source
        self.gpu: GpuMonitor | None = None
        self._record_export: tuple = (None, None, None)  # (provider, its processors, process): see record_export

    def direct_export(self) -> Any:
        """The export process deferred request spans go to without an SDK span (export_process.py),
        or None: then they are SDK spans."""
        return _direct_export(self._tracer_provider or trace.get_tracer_provider())

    def record_export(self) -> Any:
        """The export process that finished requests go to as records (RequestSpan._record), or
        None: the process the provider's spans go to directly (`direct_export`) when the request
        histograms are recorded there too. Kept while the provider's span processors stay the same
        (the SDK replaces their tuple when one is added), so a request pays two identity checks."""
        provider = self._tracer_provider or trace.get_tracer_provider()
        processors = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", None)
        cached_provider, cached_processors, process = self._record_export
        if cached_provider is provider and cached_processors is processors:
            return process
        process = self.direct_export()
        if process is not None and getattr(self.metrics, "process", None) is not process:
            process = None
        self._record_export = (provider, processors, process)
        return process

    def parent_ids(self, parent: Any) -> tuple | None:
        """The span context a request's span will have as parent, as plain values (or None for a
        root): `parent` is a Context, or a deferred parent RequestSpan (its span is made now)."""
        if parent is None:
            return None
        if isinstance(parent, RequestSpan):
            context = parent.ensure_span().get_span_context()
        else:
            context = trace.get_current_span(parent).get_span_context()
        if not context.is_valid:
            return None
        return (context.trace_id, context.span_id, int(context.trace_flags), context.is_remote,
                context.trace_state.to_header() if context.trace_state else "")

    @staticmethod
    def context_from_ids(ids: tuple | None) -> otel_context.Context:
        """The Context `parent_ids` described (an empty one for a root: never the current one)."""
        if ids is None:
            return otel_context.Context()
        trace_id, span_id, flags, is_remote, state = ids
        return trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
            trace_id, span_id, is_remote=is_remote, trace_flags=trace.TraceFlags(flags),
            trace_state=trace.TraceState.from_header([state]) if state else None)), otel_context.Context())

    def finish_off_path(self, describe: Any, facts: Any) -> None:
        """Have a request's span made from `facts` by `describe` (see request.finish_described),
        off the request path: in the export process when requests go there as records (then
        `describe` and `facts` must pickle: a module-level function and plain values), on the
        telemetry worker otherwise (and whenever inline evaluation is on: it needs the span here)."""
        process = self.record_export() if handoff.get_sink() is None else None
        if process is not None:
            process.send_request(self.scope, describe, facts)
        else:
            get_worker().submit(partial(_finish_described_safely, self, describe, facts))

    def start_finished_span(self, name: str, kind: SpanKind, context: Any, attributes: dict[str, Any],
                            start_time: int) -> Any:
        """The span of a request whose creation was deferred until it finished (on the telemetry
        worker): handed straight to the export process when that is all the provider has, an SDK
        span otherwise."""
        provider = self._tracer_provider or trace.get_tracer_provider()
        process = _direct_export(provider)
        if process is not None:
            from .export_process import start_direct_span

            return start_direct_span(process, provider, self.scope, name, kind, context, attributes, start_time)
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes, start_time=start_time)

    def current_parent(self) -> Any:
        """What a request starting now will have as parent (see `start`): the enclosing deferred
        request, or the current Context. For a request whose span is made later (`finish_off_path`)."""
        return _deferred_parent.get() or otel_context.get_current()

    def gpu_begin(self, index: int) -> None:
        """A request started on GPU `index` (in this process): see GpuMonitor.begin."""
        self._gpu_monitor().begin(index)

    def gpu_end(self, index: int) -> dict[str, Any]:
        """The GPU memory attributes of a request ending now on GPU `index` (host-side reads)."""
        return self._gpu_monitor().end(index)

    def _gpu_monitor(self) -> GpuMonitor:
        if self.gpu is None:
            self.gpu = GpuMonitor(self._gpu_source or TorchNvmlSource(self.config.gpu_poll_interval_s))
        return self.gpu

    @contextlib.contextmanager
    def enclosing(self, request: RequestSpan) -> Iterator[None]:
        """Make deferred `request` the parent of the requests started in this block."""
        token = _deferred_parent.set(request)
        try:
            yield
        finally:
            _deferred_parent.reset(token)

    def start(
        self,
        name: str,
        attributes: dict[str, Any],
        *,
        kind: SpanKind = SpanKind.CLIENT,
        context: otel_context.Context | None = None,
        gpu_index: int | None = None,
        metrics: str | None = "client",
        late_attributes: dict[str, Any] | None = None,
        defer_span: bool = False,
        start_wall_ns: int | None = None,
    ) -> RequestSpan:
        """Start a request span now; `attributes` are given at start so samplers can see them.

        `metrics`: which GenAI histograms the request feeds, "client" (operation duration, time
        to first chunk) or "server" (request duration, time to first token, time per output
        token), both with token usage; None for spans that only group others (a pipeline call),
        so durations and tokens are recorded once, by the request span itself. `late_attributes` (e.g. the
        framework's) are written when the span is finished, off the request path.

        `start_wall_ns` backdates the start to when the request arrived (e.g. vLLM's
        `arrival_time`). `defer_span=True` creates the SDK span only when the request is finished, on the
        telemetry worker, with the same parent, start time and start attributes: the request path
        then pays for no span at all. `request.span` is None until then; requests started within
        `runtime.enclosing(request)` become its children, other spans cannot.
        """
        now_wall_ns = time.time_ns()
        start_ns = time.perf_counter_ns()
        if start_wall_ns is None:
            start_wall_ns = now_wall_ns
        else:  # the request arrived earlier (an engine's arrival time): same instant on both clocks
            start_ns -= now_wall_ns - start_wall_ns
        if defer_span:
            span = None
        else:
            span = self.tracer.start_span(
                name, context=context, kind=kind, attributes=attributes, start_time=start_wall_ns
            )
        if gpu_index is not None:
            self._gpu_monitor().begin(gpu_index)
        request = RequestSpan(self, span, attributes, start_wall_ns, start_ns, gpu_index, metrics)
        if defer_span:
            parent = context or _deferred_parent.get() or otel_context.get_current()
            request._deferred_start = (name, kind, parent, attributes)
        if late_attributes:
            request._late_attrs = late_attributes
        return request


def _finish_described_safely(runtime: TelemetryRuntime, describe: Any, facts: Any) -> None:
    try:
        finish_described(runtime, describe, facts)
    except Exception:
        logger.debug("could not make a request span", exc_info=True)


def _direct_export(provider: Any) -> Any:
    if getattr(provider, "_fi_export_process", None) is None:  # the usual case: no import, one getattr
        return None
    from .export_process import direct_export_process

    return direct_export_process(provider)
