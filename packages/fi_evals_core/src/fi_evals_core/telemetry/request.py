"""One generation request: its span, its clock, and the numbers derived when it ends.

Instrumentors create a `RequestSpan` at the patched boundary, feed it what the engine reports
(first token, usage, finish reasons, content) and end it exactly once, from whichever path gets
there first: completion, exception, stream close, cancellation or garbage collection. Ending
notes the instant; the span is finished on the telemetry worker (worker.py), or in the export
process from a record of plain values (`_record`). An instrumentor may also gather plain facts on
the request path and have the RequestSpan made from them off it (`finish_described`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from . import attributes as A
from . import handoff
from .worker import get_worker

if TYPE_CHECKING:
    from .runtime import TelemetryRuntime

logger = logging.getLogger(__name__)

# Attributes copied from the span onto every metric point (the GenAI metric attribute set).
_METRIC_KEYS = (A.OPERATION_NAME, A.PROVIDER_NAME, A.REQUEST_MODEL, A.SERVER_ADDRESS, A.SERVER_PORT)


class RequestSpan:
    __slots__ = (
        "runtime",
        "span",
        "_metric_attrs",
        "_start_wall_ns",
        "_start_ns",
        "_first_token_ns",
        "_input_tokens",
        "_output_tokens",
        "_decode_steps",
        "_gpu_index",
        "_response_model",
        "_event_attrs",
        "_attrs",
        "_late_attrs",
        "_gpu_at_end",
        "_deferred_start",
        "_engine_ttft_s",
        "_engine_decode_s",
        "_metrics_role",
        "_streamed",
        "_eval_on",
        "_eval_context",
        "_eval_texts",
        "_ended",
        "_lock",
    )

    def __init__(
        self,
        runtime: "TelemetryRuntime",
        span: Span | None,
        start_attributes: dict[str, Any],
        start_wall_ns: int,
        start_ns: int,
        gpu_index: int | None,
        metrics: str | None = "client",
    ) -> None:
        self.runtime = runtime
        self.span = span
        self._metric_attrs = {k: start_attributes[k] for k in _METRIC_KEYS if k in start_attributes}
        self._start_wall_ns = start_wall_ns
        self._start_ns = start_ns
        self._first_token_ns: int | None = None
        self._input_tokens: int | None = None
        self._output_tokens: int | None = None
        self._decode_steps: int | None = None
        self._gpu_index = gpu_index
        self._response_model: str | None = None
        self._event_attrs: dict[str, str] | None = None
        self._attrs: dict[str, Any] = {}
        self._late_attrs: dict[str, Any] | None = None  # shared (e.g. per engine), under `_attrs`
        self._gpu_at_end: dict[str, Any] | None = None  # GPU memory read at the end instant
        # (name, kind, parent context or parent RequestSpan, attributes) for a span created at finish
        self._deferred_start: tuple | None = None
        self._engine_ttft_s: float | None = None
        self._engine_decode_s: float | None = None
        self._metrics_role = metrics  # "client", "server" (the GenAI histograms of that side) or None
        self._streamed = bool(start_attributes.get(A.REQUEST_STREAM))
        # Inline evaluation (handoff.py): off unless a sink is installed; the app's eval_context
        # is read here, at the request's start, in the caller's context.
        self._eval_on = handoff.get_sink() is not None
        self._eval_context = handoff.current_eval_context() if self._eval_on else None
        self._eval_texts: list[Any] | None = None
        self._ended = False
        self._lock = threading.Lock()

    @property
    def start_ns(self) -> int:
        """The request's start on the `time.perf_counter_ns()` clock."""
        return self._start_ns

    def mark_first_token(self, now_ns: int | None = None) -> None:
        """The first output token (or streamed chunk) is available to the caller; first call wins."""
        if self._first_token_ns is None:
            self._first_token_ns = time.perf_counter_ns() if now_ns is None else now_ns

    def set_attribute(self, key: str, value: Any) -> None:
        """Kept until the span is finished (one validated write instead of many)."""
        if value is not None:
            self._attrs[key] = value

    def set_usage(
        self,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_input_tokens: int | None = None,
        decode_steps: int | None = None,
    ) -> None:
        """Real token counts only; `None` means unknown and is left out (never written as 0)."""
        if input_tokens is not None:
            self._input_tokens = int(input_tokens)
            self.set_attribute(A.USAGE_INPUT_TOKENS, self._input_tokens)
        if output_tokens is not None:
            self._output_tokens = int(output_tokens)
            self.set_attribute(A.USAGE_OUTPUT_TOKENS, self._output_tokens)
        if cache_read_input_tokens is not None:
            self.set_attribute(A.USAGE_CACHE_READ_INPUT_TOKENS, int(cache_read_input_tokens))
        if decode_steps is not None:
            self._decode_steps = int(decode_steps)

    def use_engine_latency(self, time_to_first_token_s: float, decode_s: float | None = None) -> None:
        """The engine measured these itself (vLLM's request stats): derive TTFT and TPOT from
        them instead of from this process's clock."""
        self._engine_ttft_s = time_to_first_token_s
        self._engine_decode_s = decode_s

    def set_response(
        self,
        response_id: str | None = None,
        model: str | None = None,
        finish_reasons: Sequence[str] | None = None,
    ) -> None:
        self.set_attribute(A.RESPONSE_ID, response_id)
        if model:
            self._response_model = model
            self.set_attribute(A.RESPONSE_MODEL, model)
        if finish_reasons:
            self.set_attribute(A.RESPONSE_FINISH_REASONS, [str(r) for r in finish_reasons])

    def record_content(self, input_json: str | None = None, output_json: str | None = None) -> None:
        """GenAI message JSON, placed where the capture mode says (span, event, or nowhere)."""
        mode = self.runtime.content.mode
        if not mode.enabled:
            return
        for key, value in ((A.INPUT_MESSAGES, input_json), (A.OUTPUT_MESSAGES, output_json)):
            if value is None:
                continue
            if mode.on_span:
                self.set_attribute(key, value)
            if mode.on_event:
                if self._event_attrs is None:
                    self._event_attrs = {}
                self._event_attrs[key] = value

    @property
    def wants_text(self) -> bool:
        """Inline evaluation is on: offer the prompt and completion with `offer_text`."""
        return self._eval_on

    def offer_text(self, prompt: Any, completion: Any) -> None:
        """Text for inline evaluation (never exported): strings, or zero-argument callables that
        produce them on the telemetry worker (e.g. a decode). One call per choice or batch item."""
        if self._eval_on:
            if self._eval_texts is None:
                self._eval_texts = []
            self._eval_texts.append((prompt, completion))

    def offer_texts(self, pairs: Callable[[], Any]) -> None:
        """Like `offer_text`, for a batch: `pairs()` returns (prompt, completion) pairs, on the worker."""
        if self._eval_on:
            if self._eval_texts is None:
                self._eval_texts = []
            self._eval_texts.append(pairs)

    def end(
        self,
        error: BaseException | None = None,
        *,
        end_ns: int | None = None,
        extra: dict[str, Any] | None = None,
        finalize: Callable[["RequestSpan"], None] | None = None,
        cheap_finalize: bool = False,
    ) -> None:
        """End the request now; the span itself is finished on the telemetry worker.

        The caller's cost is noting the instant and the GPU allocator counters (host-side, no
        device sync); `finalize` (e.g. counting tokens) runs on the worker before the span ends.
        `cheap_finalize=True` says `finalize` only reads host-side numbers: when the request is
        handed to the export process as a record (see `_shipped_to`), that is then done right here,
        with no worker hop.
        """
        end_ns = time.perf_counter_ns() if end_ns is None else end_ns
        with self._lock:
            if self._ended:
                return
            self._ended = True
        try:
            if self._gpu_index is not None and self.runtime.gpu is not None:
                self._gpu_at_end = self.runtime.gpu.end(self._gpu_index)
            if extra:
                self._attrs.update(extra)
            process = self._shipped_to() if cheap_finalize else None
            if process is not None:
                self._finish_safely(error, end_ns, finalize, process)
                return
            worker = get_worker()
            if worker.on_worker_thread:
                self._finish_safely(error, end_ns, finalize, self._shipped_to())
            else:
                worker.submit(lambda: self._finish_safely(error, end_ns, finalize, self._shipped_to()))
        except Exception:  # telemetry must never break the caller
            logger.debug("failed to end request span", exc_info=True)

    def _finish_safely(
        self, error: BaseException | None, end_ns: int, finalize: Callable[["RequestSpan"], None] | None,
        process: Any,
    ) -> None:
        """Finalize, then finish here (`_finish`) or, given an export `process`, hand it the record."""
        if finalize is not None:
            try:
                finalize(self)
            except Exception:
                logger.debug("request finalizer failed", exc_info=True)
        error_type, message = error_details(error)
        try:
            if process is not None:
                process.send_request(self.runtime.scope, request_from_record,
                                     self._record(error_type, message, end_ns))
            else:
                self._finish(error_type, message, end_ns)
        except Exception:
            logger.debug("failed to finish request span", exc_info=True)
            try:
                if self.span is not None:
                    self.span.end()
            except Exception:
                pass

    # -- the hand-over to an export process ---------------------------------------------------------
    def _shipped_to(self) -> Any:
        """The export process this request is finished in, as a record (`_record`), or None.

        That is the case for a span whose creation was deferred and never needed here (no child
        made it, no inline evaluation wants its context), when the provider's spans and the request
        histograms both go to the same export process (register() with TRACEAI_EXPORT_PROCESS=1):
        the child then derives the attributes, samples, assigns ids, exports and records the
        histograms, exactly as `_finish` does here."""
        if self.span is not None or self._deferred_start is None or self._eval_on:
            return None
        return self.runtime.record_export()

    def _record(self, error_type: str | None, error_message: str | None, end_ns: int) -> tuple:
        """Everything `_finish` reads, as plain values (read back by `request_from_record`)."""
        name, kind, parent, start_attrs = self._deferred_start
        return (
            name, kind.value, self.runtime.parent_ids(parent), start_attrs, self._late_attrs, self._attrs,
            self._start_wall_ns, self._start_ns, end_ns, self._first_token_ns, self._input_tokens,
            self._output_tokens, self._decode_steps, self._gpu_at_end, self._response_model, self._event_attrs,
            self._engine_ttft_s, self._engine_decode_s, self._metrics_role, self._streamed, error_type,
            error_message,
        )

    def use_eval_context(self, eval_context: Any) -> None:
        """What inline evaluation checks this request against, when the span is made away from the
        request's own context (see `finish_described`)."""
        if self._eval_on:
            self._eval_context = eval_context

    def ensure_span(self, attributes: dict[str, Any] | None = None) -> Span:
        """The SDK span, created now (with the recorded start time) if its creation was deferred.
        A deferred child calls this on its deferred parent, so the parent exists first.
        `attributes`, if given, are written too: at creation, in the same pass as the start
        attributes (cheaper than a second write), or on the existing span."""
        if self.span is None and self._deferred_start is not None:
            with self._lock:  # a deferred parent: its children may finish on different threads
                if self.span is None:
                    self._create_deferred_span(attributes)
                    return self.span
        if attributes:
            self.span.set_attributes(attributes)
        return self.span

    def _create_deferred_span(self, attributes: dict[str, Any] | None) -> None:
        name, kind, parent, start_attrs = self._deferred_start
        if isinstance(parent, RequestSpan):
            parent = trace.set_span_in_context(parent.ensure_span())
        if attributes:
            start_attrs = {**start_attrs, **attributes}
        self.span = self.runtime.start_finished_span(name, kind, parent, start_attrs, self._start_wall_ns)

    def _finish(self, error_type: str | None, error_message: str | None, end_ns: int) -> None:
        runtime = self.runtime
        attrs = self._attrs
        if self._late_attrs:
            attrs = {**self._late_attrs, **attrs}
        duration_s = max(0, end_ns - self._start_ns) / 1e9
        ttft_s = decode_s = tpot_s = None
        if self._engine_ttft_s is not None:
            ttft_s, decode_s = self._engine_ttft_s, self._engine_decode_s
        elif self._first_token_ns is not None:
            ttft_s = max(0, self._first_token_ns - self._start_ns) / 1e9
            decode_s = max(0, end_ns - self._first_token_ns) / 1e9
        if ttft_s is not None:
            attrs[A.RESPONSE_TIME_TO_FIRST_CHUNK] = ttft_s
            steps = self._decode_steps if self._decode_steps is not None else self._output_tokens
            if decode_s is not None and steps is not None and steps > 1:
                tpot_s = attrs[A.TIME_PER_OUTPUT_TOKEN] = decode_s / (steps - 1)
        if self._output_tokens is not None and duration_s > 0:
            attrs[A.OUTPUT_TOKENS_PER_SECOND] = self._output_tokens / duration_s
        if self._gpu_at_end is not None:
            attrs.update(self._gpu_at_end)
        metric_attrs = self._metric_attrs
        if self._response_model:
            metric_attrs = {**metric_attrs, A.RESPONSE_MODEL: self._response_model}
        if error_type is not None:
            attrs[A.ERROR_TYPE] = error_type
            metric_attrs = {**metric_attrs, A.ERROR_TYPE: error_type}
        span = self.ensure_span(attrs)
        if error_type is not None:
            span.set_status(Status(StatusCode.ERROR, error_message))
        if self._event_attrs:
            span.add_event(A.CONTENT_EVENT, self._event_attrs)
        span.end(end_time=self._start_wall_ns + (end_ns - self._start_ns))
        if self._eval_texts is not None and error_type is None:
            self._hand_off(span)
        if not self._metrics_role:
            return

        metrics = runtime.metrics
        if self._metrics_role == "server":
            metrics.server_request_duration.record(duration_s, metric_attrs)
            if ttft_s is not None:
                metrics.server_time_to_first_token.record(ttft_s, metric_attrs)
            if tpot_s is not None:
                metrics.server_time_per_output_token.record(tpot_s, metric_attrs)
        else:
            metrics.operation_duration.record(duration_s, metric_attrs)
            if ttft_s is not None and self._streamed:  # the conventions define it for streamed responses
                metrics.time_to_first_chunk.record(ttft_s, metric_attrs)
        if self._input_tokens is not None:
            metrics.token_usage.record(self._input_tokens, {**metric_attrs, A.TOKEN_TYPE: "input"})
        if self._output_tokens is not None:
            metrics.token_usage.record(self._output_tokens, {**metric_attrs, A.TOKEN_TYPE: "output"})


    def _hand_off(self, span: Span) -> None:
        """Offer the text to inline evaluation if this trace is in the sampled share."""
        sink = handoff.get_sink()
        context = span.get_span_context()
        if sink is None or not sink.sampled(context.trace_id):
            return
        attributes = getattr(span, "attributes", None) or {}
        model = self._response_model or self._metric_attrs.get(A.REQUEST_MODEL) or attributes.get(A.REQUEST_MODEL)
        response_id = self._attrs.get(A.RESPONSE_ID) or attributes.get(A.RESPONSE_ID)
        operation = self._metric_attrs.get(A.OPERATION_NAME)
        offered: list[tuple[Any, Any]] = []
        for entry in self._eval_texts or ():
            offered.extend(entry() if callable(entry) else [entry])
        for prompt, completion in offered:
            prompt = prompt() if callable(prompt) else prompt
            completion = completion() if callable(completion) else completion
            if isinstance(completion, str) and completion.strip():
                sink.offer(handoff.Completion(context, prompt if isinstance(prompt, str) else None, completion,
                                              operation, model, response_id, self._eval_context,
                                              self.runtime.content.enabled))


def finish_described(runtime: Any, describe: Callable[[Any, Any], tuple], facts: Any) -> None:
    """Make a request's span from plain facts and finish it on this thread.

    `describe(runtime, facts)` starts a deferred `RequestSpan` with `runtime` (with the request's
    arrival as its start), says on it what the facts say, and returns `(request, end_ns, error_type,
    error_message)`, `end_ns` on the request's clock (`request.start_ns`). It runs on the telemetry
    worker, or in the export process with the same code (`runtime.finish_off_path`): the request
    path only gathers the facts."""
    request, end_ns, error_type, error_message = describe(runtime, facts)
    request._ended = True
    request._finish(error_type, error_message, end_ns)


def request_from_record(runtime: Any, record: tuple) -> tuple:
    """The `describe` of a `RequestSpan._record`: the same request, as `_finish` will see it."""
    (name, kind, parent_ids, start_attrs, late_attrs, attrs, start_wall_ns, start_ns, end_ns, first_token_ns,
     input_tokens, output_tokens, decode_steps, gpu_at_end, response_model, event_attrs, engine_ttft_s,
     engine_decode_s, metrics_role, streamed, error_type, error_message) = record
    request = RequestSpan(runtime, None, start_attrs, start_wall_ns, start_ns, None, metrics_role)
    request._deferred_start = (name, trace.SpanKind(kind), runtime.context_from_ids(parent_ids), start_attrs)
    request._late_attrs = late_attrs
    request._attrs = attrs
    request._first_token_ns = first_token_ns
    request._input_tokens = input_tokens
    request._output_tokens = output_tokens
    request._decode_steps = decode_steps
    request._gpu_at_end = gpu_at_end
    request._response_model = response_model
    request._event_attrs = event_attrs
    request._engine_ttft_s = engine_ttft_s
    request._engine_decode_s = engine_decode_s
    request._streamed = streamed
    return request, end_ns, error_type, error_message


def error_details(error: BaseException | None) -> tuple[str | None, str | None]:
    """A failed request's `error.type` (the exception's qualified class name, with its module
    unless builtin) and status description (its message, or the type); (None, None) for no error."""
    if error is None:
        return None, None
    cls = type(error)
    module = cls.__module__
    error_type = cls.__qualname__ if module in ("builtins", None) else f"{module}.{cls.__qualname__}"
    return error_type, str(error)[:500] or error_type
