"""A request in flight at a patched boundary: what the engine has reported about it so far.

Instrumentors start a `RequestSpan` where a request starts, feed it what the engine reports
(first token, usage, finish reasons, content) and end it exactly once, from whichever path gets
there first: completion, exception, stream close, cancellation or garbage collection. Ending notes
the instant and freezes the facts into a `FinishedRequest` (finished.py), handed to the runtime's
sink: right here when that is a queue append (the export process) and nothing is left to compute,
otherwise on the telemetry worker (after the instrumentor's `finalize`, e.g. counting tokens).

Most requests have no SDK span until they have finished: it is made from the record, where the
sink emits it. Two kinds need one earlier: a client call whose HTTP spans must nest under it
(`defer_span=False`), and a grouping span (a pipeline call, `LLM.generate`) whose children need
its ids (`ensure_span`, on the telemetry worker).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Protocol, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from . import attributes as A
from . import handoff
from .finished import FinishedRequest, SpanIds, error_details
from .sinks import RequestSink
from .worker import get_worker

logger = logging.getLogger(__name__)


class RequestOwner(Protocol):
    """What a request needs of the runtime that started it (runtime.TelemetryRuntime)."""

    scope: tuple[str, str]
    tracer: trace.Tracer
    sink: RequestSink

    @property
    def wants_text(self) -> bool: ...

    def gpu_end(self, index: int) -> dict[str, Any]: ...


class RequestSpan:
    __slots__ = (
        "runtime", "span", "_name", "_kind", "_parent", "_start_attrs", "_start_wall_ns", "_start_ns",
        "_first_token_ns", "_input_tokens", "_output_tokens", "_decode_steps", "_gpu_index", "_response_model",
        "_input_messages", "_output_messages", "_attrs", "_framework", "_gpu_at_end", "_engine_ttft_s",
        "_engine_decode_s", "_metrics", "_eval_on", "_eval_context", "_eval_texts", "encloses", "_ended", "_lock",
    )

    def __init__(self, runtime: RequestOwner, name: str, kind: SpanKind, parent: Any,
                 start_attributes: dict[str, Any], start_wall_ns: int, start_ns: int, *, gpu_index: int | None = None,
                 metrics: str | None = "client", framework: dict[str, Any] | None = None,
                 span: Span | None = None) -> None:
        self.runtime = runtime
        self.span = span  # the SDK span, when this request needs one before it ends
        self._name = name
        self._kind = kind
        self._parent = parent  # a Context, a deferred parent RequestSpan, or None (a root)
        self._start_attrs = start_attributes
        self._start_wall_ns = start_wall_ns
        self._start_ns = start_ns
        self._first_token_ns: int | None = None
        self._input_tokens: int | None = None
        self._output_tokens: int | None = None
        self._decode_steps: int | None = None
        self._gpu_index = gpu_index
        self._response_model: str | None = None
        self._input_messages: str | None = None
        self._output_messages: str | None = None
        self._attrs: dict[str, Any] = {}
        self._framework = framework  # shared (e.g. per model): written under `_attrs`
        self._gpu_at_end: dict[str, Any] | None = None  # GPU memory read at the end instant
        self._engine_ttft_s: float | None = None
        self._engine_decode_s: float | None = None
        self._metrics = metrics  # "client", "server" (the GenAI histograms of that side) or None
        # Inline evaluation (handoff.py): the app's eval_context is read here, at the request's
        # start, in the caller's context.
        self._eval_on = runtime.wants_text
        self._eval_context = handoff.current_eval_context() if self._eval_on else None
        self._eval_texts: list[Any] | None = None
        # Requests were started within it (runtime.enclosing): it is finished on the telemetry
        # worker, after them, so their spans and its own are one and the same.
        self.encloses = False
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
        """Kept until the request is emitted (one validated write instead of many)."""
        if value is not None:
            self._attrs[key] = value

    def set_usage(self, input_tokens: int | None = None, output_tokens: int | None = None,
                  cache_read_input_tokens: int | None = None, decode_steps: int | None = None) -> None:
        """Real token counts only; `None` means unknown and is left out (never written as 0)."""
        if input_tokens is not None:
            self._input_tokens = int(input_tokens)
        if output_tokens is not None:
            self._output_tokens = int(output_tokens)
        if cache_read_input_tokens is not None:
            self.set_attribute(A.USAGE_CACHE_READ_INPUT_TOKENS, int(cache_read_input_tokens))
        if decode_steps is not None:
            self._decode_steps = int(decode_steps)

    def use_engine_latency(self, time_to_first_token_s: float, decode_s: float | None = None) -> None:
        """The engine measured these itself: derive TTFT and TPOT from them, not from this clock."""
        self._engine_ttft_s = time_to_first_token_s
        self._engine_decode_s = decode_s

    def set_response(self, response_id: str | None = None, model: str | None = None,
                     finish_reasons: Sequence[str] | None = None) -> None:
        self.set_attribute(A.RESPONSE_ID, response_id)
        if model:
            self._response_model = model
        if finish_reasons:
            self.set_attribute(A.RESPONSE_FINISH_REASONS, [str(r) for r in finish_reasons])

    def add_finish_reasons(self, reasons: Sequence[str]) -> None:
        """Finish reasons of the requests this one encloses (a pipeline call's `generate` calls),
        in the order they finished: `gen_ai.response.finish_reasons` of the grouping span."""
        if reasons:
            known = self._attrs.get(A.RESPONSE_FINISH_REASONS) or []
            self._attrs[A.RESPONSE_FINISH_REASONS] = [*known, *(str(r) for r in reasons)]

    @property
    def enclosing_request(self) -> "RequestSpan | None":
        """The grouping request this one was started in (a pipeline call), if any."""
        return self._parent if isinstance(self._parent, RequestSpan) else None

    @property
    def finish_reasons(self) -> list[str]:
        return list(self._attrs.get(A.RESPONSE_FINISH_REASONS) or [])

    def record_content(self, input_json: str | None = None, output_json: str | None = None) -> None:
        """GenAI message JSON; the capture mode decides where it goes (span, event, nowhere)."""
        if input_json is not None:
            self._input_messages = input_json
        if output_json is not None:
            self._output_messages = output_json

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

    def end(self, error: BaseException | None = None, *, end_ns: int | None = None,
            extra: dict[str, Any] | None = None, finalize: Callable[["RequestSpan"], None] | None = None) -> None:
        """End the request now. The caller pays for noting the instant and the GPU allocator counters
        (host-side, no device sync); `finalize` (e.g. counting tokens) runs on the telemetry worker."""
        end_ns = time.perf_counter_ns() if end_ns is None else end_ns
        with self._lock:
            if self._ended:
                return
            self._ended = True
        try:
            if self._gpu_index is not None:
                self._gpu_at_end = self.runtime.gpu_end(self._gpu_index)
            if extra:
                self._attrs.update(extra)
            sink = self.runtime.sink
            if sink.direct and finalize is None and self.span is None and not self._needs_worker():
                sink.submit(self._record(error, end_ns))
                return
            get_worker().run_or_submit(lambda: self._finish(error, end_ns, finalize))
        except Exception:  # telemetry must never break the caller
            logger.debug("failed to end a request span", exc_info=True)

    def _needs_worker(self) -> bool:
        """Work left that must not run on the request path: a deferred parent's span to make, or
        texts for evaluation still to produce."""
        if self.encloses or (isinstance(self._parent, RequestSpan) and self._parent.span is None):
            return True
        return bool(self._eval_texts) and any(callable(entry) or callable(entry[0]) or callable(entry[1])
                                              for entry in self._eval_texts)

    def _finish(self, error: BaseException | None, end_ns: int,
                finalize: Callable[["RequestSpan"], None] | None) -> None:
        """On the telemetry worker: finalize, freeze, hand over."""
        if finalize is not None:
            try:
                finalize(self)
            except Exception:
                logger.debug("request finalizer failed", exc_info=True)
        try:
            record = self._record(error, end_ns)
            if self.span is not None:
                self.runtime.sink.submit_live(record, self.span)
            else:
                self.runtime.sink.submit(record)
        except Exception:
            logger.debug("failed to finish a request span", exc_info=True)
            if self.span is not None:
                self.span.end()

    def _record(self, error: BaseException | None, end_ns: int) -> FinishedRequest:
        error_type, error_message = error_details(error)
        start_ns = self._start_ns
        return FinishedRequest(
            scope=self.runtime.scope, name=self._name, kind=self._kind.value, parent=self._parent_ids(),
            start_attributes=self._start_attrs, start_wall_ns=self._start_wall_ns,
            duration_ns=max(0, end_ns - start_ns), attributes=self._attrs, framework=self._framework,
            metrics=self._metrics, streamed=bool(self._start_attrs.get(A.REQUEST_STREAM)),
            first_token_ns=self._first_token_ns - start_ns if self._first_token_ns is not None else None,
            engine_ttft_s=self._engine_ttft_s, engine_decode_s=self._engine_decode_s,
            input_tokens=self._input_tokens, output_tokens=self._output_tokens, decode_steps=self._decode_steps,
            response_model=self._response_model, gpu=self._gpu_at_end, input_messages=self._input_messages,
            output_messages=self._output_messages, eval_pairs=self._eval_pairs(), eval_context=self._eval_context,
            error_type=error_type, error_message=error_message)

    def _eval_pairs(self) -> tuple[tuple[str | None, str], ...] | None:
        """The offered texts as (prompt, completion) strings (callables are called here)."""
        if not self._eval_texts:
            return None
        pairs = []
        for entry in self._eval_texts:
            for prompt, completion in (entry() if callable(entry) else [entry]):
                prompt = prompt() if callable(prompt) else prompt
                completion = completion() if callable(completion) else completion
                if isinstance(completion, str):
                    pairs.append((prompt if isinstance(prompt, str) else None, completion))
        return tuple(pairs) or None

    def _parent_ids(self) -> SpanIds | None:
        parent = self._parent
        if isinstance(parent, RequestSpan):
            return SpanIds.of(parent.ensure_span().get_span_context())
        return SpanIds.of_context(parent)

    def ensure_span(self) -> Span:
        """The SDK span, made now (backdated to the start) if it does not exist yet: for a grouping
        request whose children need its ids. Its children may finish on different threads."""
        if self.span is None:
            with self._lock:
                if self.span is None:
                    self.span = self.runtime.tracer.start_span(
                        self._name, context=parent_context(self._parent), kind=self._kind,
                        attributes=self._start_attrs, start_time=self._start_wall_ns)
        return self.span


def parent_context(parent: Any) -> otel_context.Context:
    """The Context a span with `parent` (a Context, a grouping RequestSpan whose span is made now
    if it has none yet, or None for a root) is started in."""
    if isinstance(parent, RequestSpan):
        return trace.set_span_in_context(parent.ensure_span())
    return parent if parent is not None else trace.set_span_in_context(trace.INVALID_SPAN)
