"""From a `FinishedRequest` to telemetry: its span, its content event, its GenAI histogram points,
and (when inline evaluation is on and the trace is sampled) its completions for evaluation.

`Emitter.emit` is the one place this happens. It runs on the telemetry worker of the serving
process, or in the export process with that process's own providers: the same code either way,
so a request exported from a child looks exactly like one exported in-process.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from . import attributes as A
from . import handoff
from .config import ContentCapture
from .finished import FinishedRequest
from .histograms import HistogramStore, StoreMetrics
from .metrics import GenAIMetrics

logger = logging.getLogger(__name__)

# Attributes copied from the span onto every metric point (the GenAI metric attribute set).
METRIC_KEYS = (A.OPERATION_NAME, A.PROVIDER_NAME, A.REQUEST_MODEL, A.SERVER_ADDRESS, A.SERVER_PORT)


class DirectSpans:
    """Finished spans made straight from records and handed to one span processor, with no SDK
    `Span` in between: for the export process, whose provider and processor are its own. Ids and
    the sampling decision are taken as `Tracer.start_span` takes them (the provider's id generator
    and sampler); the attribute values are the ones emit() built (valid OpenTelemetry types)."""

    def __init__(self, sampler: Sampler, id_generator: IdGenerator, resource: Resource,
                 processor: SpanProcessor) -> None:
        self.sampler = sampler
        self.id_generator = id_generator
        self.resource = resource
        self.processor = processor
        self._scopes: dict[tuple[str, str], InstrumentationScope] = {}

    def emit(self, record: FinishedRequest, attrs: dict[str, Any], event: dict[str, str] | None) -> trace.SpanContext:
        parent = record.parent.span_context() if record.parent is not None else None
        if parent is None:
            trace_id = self.id_generator.generate_trace_id()
            random_trace_id = self.id_generator.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_trace_id = parent.trace_flags.random_trace_id
        kind = SpanKind(record.kind)
        result = self.sampler.should_sample(record.parent.as_parent() if record.parent is not None else None,
                                            trace_id, record.name, kind, record.start_attributes, ())
        flags = trace.TraceFlags.SAMPLED if result.decision.is_sampled() else trace.TraceFlags.DEFAULT
        if random_trace_id:
            flags |= trace.TraceFlags.RANDOM_TRACE_ID
        context = trace.SpanContext(trace_id, self.id_generator.generate_span_id(), is_remote=False,
                                    trace_flags=trace.TraceFlags(flags), trace_state=result.trace_state)
        if not result.decision.is_recording():
            return context
        scope = self._scopes.get(record.scope)
        if scope is None:
            scope = self._scopes[record.scope] = InstrumentationScope(*record.scope)
        attributes = dict(result.attributes or {})  # the start attributes, as the sampler returns them
        attributes.update(attrs)
        end = record.end_wall_ns
        self.processor.on_end(ReadableSpan(
            name=record.name, context=context, parent=parent, resource=self.resource, attributes=attributes,
            events=(Event(A.CONTENT_EVENT, event, end),) if event else (), kind=kind,
            status=Status(StatusCode.ERROR, record.error_message) if record.error_type is not None else _UNSET,
            start_time=record.start_wall_ns, end_time=end, instrumentation_scope=scope))
        return context


_UNSET = Status(StatusCode.UNSET)


class Emitter:
    """Makes spans and histogram points of finished requests on the given providers (None: the
    global ones), one tracer and one set of GenAI histograms per instrumentation scope; request
    spans go straight to `direct` when given, and histogram points to `histograms` (the store of
    a meter provider `providers.meter_provider` built) rather than to SDK instruments."""

    def __init__(self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None,
                 capture: ContentCapture, direct: DirectSpans | None = None,
                 histograms: HistogramStore | None = None) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._capture = capture
        self._direct = direct
        self._store = histograms
        self._scopes: dict[tuple[str, str], tuple[trace.Tracer, GenAIMetrics | StoreMetrics]] = {}

    def use_sdk_spans(self) -> None:
        """Make request spans through the tracer from now on (another span processor must see them)."""
        self._direct = None

    def _instruments(self, scope: tuple[str, str]) -> tuple[trace.Tracer, GenAIMetrics | StoreMetrics]:
        found = self._scopes.get(scope)
        if found is None:
            tracer = trace.get_tracer(scope[0], scope[1], tracer_provider=self._tracer_provider)
            if self._store is not None:
                metrics: GenAIMetrics | StoreMetrics = self._store.metrics(scope)
            else:
                metrics = GenAIMetrics(otel_metrics.get_meter(scope[0], scope[1], meter_provider=self._meter_provider))
            found = self._scopes[scope] = (tracer, metrics)
        return found

    def emit_safely(self, record: FinishedRequest, live_span: Span | None = None, *, histograms: bool = True,
                    evaluate: bool = True) -> trace.SpanContext | None:
        try:
            return self.emit(record, live_span, histograms=histograms, evaluate=evaluate)
        except Exception:  # telemetry never raises into the engine, nor kills its worker
            logger.debug("could not emit a finished request", exc_info=True)
            if live_span is not None:
                try:
                    live_span.end()
                except Exception:
                    pass
            return None

    def emit(self, record: FinishedRequest, live_span: Span | None = None, *, histograms: bool = True,
             evaluate: bool = True) -> trace.SpanContext:
        """The span (made now from the record, or `live_span` finished), then the histograms and the
        evaluation hand-off. A record whose span was made elsewhere (`span_ids`) gets no span here.
        Returns the span's context."""
        tracer, metrics = self._instruments(record.scope)
        attrs: dict[str, Any] = dict(record.framework) if record.framework else {}
        if record.attributes:
            attrs.update(record.attributes)
        if record.input_tokens is not None:
            attrs[A.USAGE_INPUT_TOKENS] = record.input_tokens
        if record.output_tokens is not None:
            attrs[A.USAGE_OUTPUT_TOKENS] = record.output_tokens
        if record.response_model:
            attrs[A.RESPONSE_MODEL] = record.response_model
        duration_s = record.duration_ns / 1e9
        ttft_s, tpot_s = latency(record)
        if ttft_s is not None:
            attrs[A.RESPONSE_TIME_TO_FIRST_CHUNK] = ttft_s
        if tpot_s is not None:
            attrs[A.TIME_PER_OUTPUT_TOKEN] = tpot_s
        if record.output_tokens is not None and duration_s > 0:
            attrs[A.OUTPUT_TOKENS_PER_SECOND] = record.output_tokens / duration_s
        if record.gpu:
            attrs.update(record.gpu)
        if record.error_type is not None:
            attrs[A.ERROR_TYPE] = record.error_type
        event: dict[str, str] | None = None
        if self._capture.enabled:
            for key, value in ((A.INPUT_MESSAGES, record.input_messages), (A.OUTPUT_MESSAGES, record.output_messages)):
                if value is None:
                    continue
                if self._capture.on_span:
                    attrs[key] = value
                if self._capture.on_event:
                    event = event or {}
                    event[key] = value

        if record.span_ids is not None:
            span_context = record.span_ids.span_context()
        elif live_span is None and self._direct is not None:
            span_context = self._direct.emit(record, attrs, event)
        else:
            span = live_span
            if span is None:
                parent = record.parent.as_parent() if record.parent is not None else _ROOT
                span = tracer.start_span(record.name, context=parent, kind=SpanKind(record.kind),
                                         attributes=record.start_attributes, start_time=record.start_wall_ns)
            span.set_attributes(attrs)
            if record.error_type is not None:
                span.set_status(Status(StatusCode.ERROR, record.error_message))
            if event:
                span.add_event(A.CONTENT_EVENT, event)
            span.end(end_time=record.end_wall_ns)
            span_context = span.get_span_context()

        if evaluate and record.eval_pairs and record.error_type is None:
            _offer(record, attrs, span_context, self._capture.enabled)
        if histograms and record.metrics and (self._store is None or self._store.enabled):
            _record_histograms(metrics, record, attrs, duration_s, ttft_s, tpot_s)
            if self._store is not None:
                self._store.count_request()
        return span_context


_ROOT = trace.set_span_in_context(trace.INVALID_SPAN)  # an explicit root: never the ambient context


def latency(record: FinishedRequest) -> tuple[float | None, float | None]:
    """Time to first token and time per output token, in seconds (None where unknown): the
    engine's own figures when it measured them, this process's clock otherwise. TPOT is the decode
    time over the decode steps after the first (output tokens where steps are not known)."""
    decode_s = None
    if record.engine_ttft_s is not None:
        ttft_s, decode_s = record.engine_ttft_s, record.engine_decode_s
    elif record.first_token_ns is not None:
        ttft_s = max(0, record.first_token_ns) / 1e9
        decode_s = max(0, record.duration_ns - record.first_token_ns) / 1e9
    else:
        return None, None
    steps = record.decode_steps if record.decode_steps is not None else record.output_tokens
    tpot_s = decode_s / (steps - 1) if decode_s is not None and steps is not None and steps > 1 else None
    return ttft_s, tpot_s


def _record_histograms(metrics: Any, record: FinishedRequest, attrs: dict[str, Any], duration_s: float,
                       ttft_s: float | None, tpot_s: float | None) -> None:
    start = record.start_attributes
    point = {k: start[k] for k in METRIC_KEYS if k in start}
    if record.response_model:
        point[A.RESPONSE_MODEL] = record.response_model
    if record.error_type is not None:
        point[A.ERROR_TYPE] = record.error_type
    if record.metrics == "server":
        metrics.server_request_duration.record(duration_s, point)
        if ttft_s is not None:
            metrics.server_time_to_first_token.record(ttft_s, point)
        if tpot_s is not None:
            metrics.server_time_per_output_token.record(tpot_s, point)
    else:
        metrics.operation_duration.record(duration_s, point)
        if ttft_s is not None and record.streamed:  # the conventions define it for streamed responses
            metrics.time_to_first_chunk.record(ttft_s, point)
    if record.input_tokens is not None:
        metrics.token_usage.record(record.input_tokens, {**point, A.TOKEN_TYPE: "input"})
    if record.output_tokens is not None:
        metrics.token_usage.record(record.output_tokens, {**point, A.TOKEN_TYPE: "output"})


def _offer(record: FinishedRequest, attrs: dict[str, Any], span_context: trace.SpanContext, may_quote: bool) -> None:
    """Offer the completions to inline evaluation if a sink is installed here and samples this trace."""
    sink = handoff.get_sink()
    if sink is None or not span_context.is_valid or not sink.sampled(span_context.trace_id):
        return
    model = record.response_model or record.start_attributes.get(A.REQUEST_MODEL)
    response_id = attrs.get(A.RESPONSE_ID)
    operation = record.start_attributes.get(A.OPERATION_NAME)
    for prompt, completion in record.eval_pairs or ():
        if isinstance(completion, str) and completion.strip():
            sink.offer(handoff.Completion(span_context, prompt if isinstance(prompt, str) else None, completion,
                                          operation, model, response_id, record.eval_context, may_quote))
