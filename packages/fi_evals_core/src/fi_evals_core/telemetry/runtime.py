"""What an instrumentor holds while instrumented: its scope, tracer, content policy, GPU monitor and
the sink its finished requests go to."""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Any, Iterator

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import SpanKind, TracerProvider

from . import handoff
from .config import TelemetryConfig, get_config
from .content import ContentPolicy
from .emit import Emitter
from .finished import FinishedRequest, SpanIds
from .gpu import GpuMemorySource, GpuMonitor, TorchNvmlSource
from .request import RequestSpan, parent_context
from .sinks import RequestSink, WorkerSink
from .worker import get_worker

_default_gpu_source: GpuMemorySource | None = None
# The grouping request whose span is deferred and which encloses the current call (a pipeline
# call, LLM.generate): requests started inside it become its children.
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
        sink: RequestSink | None = None,
    ) -> None:
        self.config = config or get_config()
        self.scope = (scope_name, scope_version)
        self.tracer = trace.get_tracer(scope_name, scope_version, tracer_provider=tracer_provider)
        # for the gauges an instrumentor reads at collection time (engine memory)
        self.meter = metrics.get_meter(scope_name, scope_version, meter_provider=meter_provider)
        self.content = ContentPolicy(self.config.capture_content, self.config.max_content_length)
        # register() hands its sink over; otherwise requests are emitted on this process's
        # telemetry worker, on the providers given (None: the global ones).
        self.sink = sink or WorkerSink(Emitter(tracer_provider, meter_provider, self.config.capture_content))
        self._gpu_source = gpu_source or _default_gpu_source
        self.gpu: GpuMonitor | None = None

    @property
    def wants_text(self) -> bool:
        """Inline evaluation is on, here or where the sink emits: keep prompts and completions."""
        return handoff.get_sink() is not None or self.sink.evaluates_remotely

    def finish(self, record: FinishedRequest, deferred_parent: RequestSpan | None = None) -> None:
        """Hand a finished request to the sink. A deferred parent's span is made (and the record's
        parent set to it) on the telemetry worker, not on the request path."""
        if deferred_parent is None:
            self.sink.submit(record)  # a sink that is not `direct` takes it to the worker itself
            return

        def with_parent() -> None:
            parent = SpanIds.of(deferred_parent.ensure_span().get_span_context())
            self.sink.submit(record._replace(parent=parent))

        get_worker().run_or_submit(with_parent)

    def current_parent(self) -> Any:
        """What a request starting now has as parent: the enclosing deferred request, or the
        current Context."""
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
        request.encloses = True
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
        """Start a request now; `attributes` are given at start so samplers can see them.

        `metrics`: which GenAI histograms the request feeds, "client" (operation duration, time
        to first chunk) or "server" (request duration, time to first token, time per output
        token), both with token usage; None for spans that only group others (a pipeline call).
        `late_attributes` (e.g. the framework's, shared per model) are written when it is emitted.

        `start_wall_ns` backdates the start to when the request arrived (an engine's arrival
        time). `defer_span=True` makes no SDK span on the request path: it is made from the
        finished request where the sink emits it (`request.span` stays None). Requests started
        within `runtime.enclosing(request)` become its children.
        """
        now_wall_ns = time.time_ns()
        start_ns = time.perf_counter_ns()
        if start_wall_ns is None:
            start_wall_ns = now_wall_ns
        else:  # the request arrived earlier (an engine's arrival time): same instant on both clocks
            start_ns -= now_wall_ns - start_wall_ns
        parent = context if context is not None else self.current_parent()
        span = None
        if not defer_span:
            span = self.tracer.start_span(name, context=parent_context(parent), kind=kind, attributes=attributes,
                                          start_time=start_wall_ns)
        if gpu_index is not None:
            self._gpu_monitor().begin(gpu_index)
        return RequestSpan(self, name, kind, parent, attributes, start_wall_ns, start_ns, gpu_index=gpu_index,
                           metrics=metrics, framework=late_attributes, span=span)
