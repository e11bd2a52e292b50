"""A finished request as one value: what every instrumentor hands the telemetry core.

The patched boundary notes facts on the request path; when the request has finished they are
frozen into a `FinishedRequest` and handed to the runtime's sink (sinks.py), which turns it into a
span, a span event and histogram points (emit.py), on the telemetry worker or in the export
process. It is the one thing that crosses the process boundary for a request, so every field is a
plain, picklable value: no SDK objects, no engine objects, no callables.

Both values here are `NamedTuple`s: immutable, with named fields, built on the request path in a
third of a frozen dataclass's time (which sets each field through `object.__setattr__`), and
pickled as a plain tuple. `record._replace(field=...)` gives a changed copy.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace

from .content import redact_secrets


class SpanIds(NamedTuple):
    """A span context as plain values (trace and span ids, flags, remote, W3C trace state)."""

    trace_id: int
    span_id: int
    flags: int = 1
    remote: bool = False
    trace_state: str = ""

    @classmethod
    def of(cls, span_context: trace.SpanContext) -> "SpanIds | None":
        """The ids of a valid span context; None for an invalid one (a root)."""
        if span_context is None or not span_context.is_valid:
            return None
        state = span_context.trace_state
        return cls(span_context.trace_id, span_context.span_id, int(span_context.trace_flags),
                   span_context.is_remote, state.to_header() if state else "")

    @classmethod
    def of_context(cls, context: otel_context.Context | None) -> "SpanIds | None":
        """The ids of the span current in `context` (None: a root)."""
        if context is None:
            return None
        return cls.of(trace.get_current_span(context).get_span_context())

    def span_context(self) -> trace.SpanContext:
        return trace.SpanContext(
            self.trace_id, self.span_id, is_remote=self.remote, trace_flags=trace.TraceFlags(self.flags),
            trace_state=trace.TraceState.from_header([self.trace_state]) if self.trace_state else None)

    def as_parent(self) -> otel_context.Context:
        """A Context with this span as parent (never the ambient one)."""
        return trace.set_span_in_context(trace.NonRecordingSpan(self.span_context()), otel_context.Context())


class FinishedRequest(NamedTuple):
    """One finished request (or a span that only groups requests, `metrics=None`).

    Times: `start_wall_ns` is the wall clock at the start (an engine's arrival time where it has
    one); `duration_ns` and `first_token_ns` are measured on a monotonic clock from that start.
    When the engine measured latency itself, `engine_ttft_s` / `engine_decode_s` are its figures
    and win over this process's clock. Unknown counts are None, never 0.
    """

    scope: tuple[str, str]  # instrumentation scope (name, version) of the instrumentor
    name: str
    kind: int  # SpanKind value
    parent: SpanIds | None  # None: a root span
    start_attributes: Mapping[str, Any]  # known at the start: samplers see them
    start_wall_ns: int
    duration_ns: int
    attributes: Mapping[str, Any] | None = None  # what the request reported
    framework: Mapping[str, Any] | None = None  # shared per engine; the request's own attributes win
    metrics: str | None = "client"  # "client" or "server" GenAI histograms, or None
    streamed: bool = False
    first_token_ns: int | None = None
    engine_ttft_s: float | None = None
    engine_decode_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    decode_steps: int | None = None  # output positions produced by the decoder (TPOT's denominator)
    response_model: str | None = None
    gpu: Mapping[str, Any] | None = None  # GPU memory attributes read at the end instant
    input_messages: str | None = None  # GenAI message JSON, only when content capture is on
    output_messages: str | None = None
    eval_pairs: tuple[tuple[str | None, str], ...] | None = None  # (prompt, completion) for inline evaluation
    eval_context: Any = None  # handoff.EvalContext read when the request started
    error_type: str | None = None
    error_message: str | None = None
    span_ids: SpanIds | None = None  # set when its span was already made and exported where it ran

    @property
    def end_wall_ns(self) -> int:
        return self.start_wall_ns + self.duration_ns


def error_details(error: BaseException | None) -> tuple[str | None, str | None]:
    """A failed request's `error.type` (the exception's qualified class name, with its module
    unless builtin) and status description (its message without credentials, or the type);
    (None, None) for no error."""
    if error is None:
        return None, None
    cls = type(error)
    module = cls.__module__
    error_type = cls.__qualname__ if module in ("builtins", None) else f"{module}.{cls.__qualname__}"
    return error_type, redact_secrets(str(error))[:500] or error_type
