"""Hand-off of generated text to an in-process consumer (inline evaluation), never via exports.

The telemetry core knows no evaluator. An extension declares a `CompletionSinkFactory` under the
`fi_evals_core.completion_sinks` entry-point group (inline evaluation does); `register()` starts the
enabled ones in the process that emits the request spans (this one, or the export process), where
they are installed here with `set_sink`. Each finished request of a generation operation then
offers its prompt and completion to the sink after its span has been made (emit.py). With no sink
installed (the default) the request path pays one `is None` check.

`eval_context(...)` lets the application say what a request's answer should be checked against
(a reference, retrieved passages, the task, an expected answer); it is read once, when the request
starts, from a context variable.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Iterator, Mapping, Protocol, Sequence

from opentelemetry.trace import SpanContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalContext:
    reference: str | None = None
    context: str | Sequence[str] | None = None
    task: str | None = None
    expected: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Completion:
    """One finished generation request, as the evaluator sees it."""

    span_context: SpanContext
    prompt: str | None
    completion: str
    operation: str | None = None
    model: str | None = None
    response_id: str | None = None
    eval_context: EvalContext | None = None
    may_quote: bool = False  # content capture is on where the span is exported: results may quote text


class CompletionSink(Protocol):
    def sampled(self, trace_id: int) -> bool: ...

    def offer(self, completion: Completion) -> None:
        """Take the completion or count it dropped; never block, never raise."""

    def force_flush(self, timeout_s: float) -> bool:
        """Finish what was offered so far (its results emitted); False if `timeout_s` passed."""

    def shutdown(self, timeout_s: float) -> bool:
        """Finish what was offered within `timeout_s`, count the rest as dropped, stop."""


class CompletionSinkFactory(Protocol):
    """What an entry point of `SINK_ENTRY_POINT_GROUP` names: an extension configured from the
    environment (read by `enabled`), started where request spans are emitted."""

    def enabled(self) -> bool: ...

    def start(self, tracer_provider: Any, meter_provider: Any) -> CompletionSink: ...


SINK_ENTRY_POINT_GROUP = "fi_evals_core.completion_sinks"


def enabled_sink_factories() -> list[CompletionSinkFactory]:
    """The installed completion sinks (inline evaluation) that the environment turns on. A bad
    setting raises its ConfigError: a misconfigured evaluation is not silently off."""
    enabled = []
    for ep in entry_points(group=SINK_ENTRY_POINT_GROUP):
        factory = ep.load()
        if factory.enabled():
            enabled.append(factory)
    return enabled


def start_sink(factories: Sequence[CompletionSinkFactory], tracer_provider: Any,
               meter_provider: Any) -> CompletionSink | None:
    """Start the first enabled completion sink in this process and install it (one at a time)."""
    if not factories:
        return None
    if len(factories) > 1:
        logger.warning("traceai: %d completion sinks are enabled; only the first runs", len(factories))
    sink = factories[0].start(tracer_provider, meter_provider)
    set_sink(sink)
    return sink


_current: contextvars.ContextVar[EvalContext | None] = contextvars.ContextVar("fi_evals_context", default=None)
_sink: CompletionSink | None = None


@contextlib.contextmanager
def eval_context(*, reference: str | None = None, context: str | Sequence[str] | None = None,
                 task: str | None = None, expected: str | None = None,
                 **attributes: Any) -> Iterator[EvalContext]:
    """What the requests started inside this block are evaluated against (inline evaluation).

    `attributes` are added to the evaluation results (e.g. a cohort or tenant label).
    """
    value = EvalContext(reference, context, task, expected, attributes)
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)


def current_eval_context() -> EvalContext | None:
    return _current.get()


def set_sink(sink: CompletionSink | None) -> None:
    global _sink
    _sink = sink


def get_sink() -> CompletionSink | None:
    return _sink


def prompt_text(prompt: Any) -> str | None:
    """The text an answer responds to: a plain prompt, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        prompt = [prompt]
    if not isinstance(prompt, (list, tuple)):
        return None
    for message in reversed(prompt):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role not in (None, "user"):
            continue
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        if isinstance(content, str):
            return content
        if isinstance(content, (list, tuple)):  # OpenAI-style parts
            texts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
            return "\n".join(texts) if texts else None
    return None
