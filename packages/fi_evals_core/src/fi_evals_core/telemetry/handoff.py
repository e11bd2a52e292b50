"""Hand-off of generated text to an in-process consumer (inline evaluation), never via exports.

The telemetry core knows no evaluator: `fi_evals_core.evals.inline` installs a `CompletionSink`
here, and request spans of generation operations offer their prompt and completion to it after
the span has ended, on the telemetry worker. With no sink installed (the default) the request path
pays one `is None` check.

`eval_context(...)` lets the application say what a request's answer should be checked against
(a reference, retrieved passages, the task, an expected answer); it is read once, when the request
starts, from a context variable.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence

from opentelemetry.trace import SpanContext


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
