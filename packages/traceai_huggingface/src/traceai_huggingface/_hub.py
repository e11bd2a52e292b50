"""Spans for `huggingface_hub.InferenceClient` and `AsyncInferenceClient`.

Token counts come from the server: OpenAI-style `usage` for chat, TGI `details` for
text generation, and for TGI streams one server-sent event per generated token. Nothing is
estimated from text. The client's token and headers are never read.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind

from fi_evals_core.telemetry import (
    ObservedAsyncStream,
    ObservedStream,
    RequestSpan,
    TelemetryRuntime,
    strip_credentials,
)
from fi_evals_core.telemetry import attributes as A
from fi_evals_core.telemetry import handoff

logger = logging.getLogger(__name__)

PROVIDER = "huggingface"
# text_generation retries itself once when a server rejects TGI-only parameters: one span.
_in_call: contextvars.ContextVar[bool] = contextvars.ContextVar("traceai_hf_in_client_call", default=False)


def _server_attrs(client: Any, model: str | None) -> dict[str, Any]:
    target = model or getattr(client, "model", None)
    attrs: dict[str, Any] = {}
    if isinstance(target, str) and target.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        parts = urlsplit(strip_credentials(target))
        if parts.hostname:
            attrs[A.SERVER_ADDRESS] = parts.hostname
            attrs[A.SERVER_PORT] = parts.port or (443 if parts.scheme == "https" else 80)
    return attrs


def _model_id(client: Any, model: str | None) -> str | None:
    target = model or getattr(client, "model", None)
    if isinstance(target, str) and target and not target.startswith(("http://", "https://")):
        return target
    return None


class _Call:
    """Everything one client call needs: its span and how to read its response."""

    def __init__(self, runtime: TelemetryRuntime, operation: str, client: Any, kwargs: dict[str, Any]) -> None:
        self.runtime = runtime
        self.operation = operation
        model = _model_id(client, kwargs.get("model"))
        attrs: dict[str, Any] = {A.OPERATION_NAME: operation, A.PROVIDER_NAME: PROVIDER}
        if model:
            attrs[A.REQUEST_MODEL] = model
        attrs.update(_server_attrs(client, kwargs.get("model")))
        if operation != A.OP_EMBEDDINGS:
            max_tokens = kwargs.get("max_tokens", kwargs.get("max_new_tokens"))
            for key, value in (
                (A.REQUEST_MAX_TOKENS, max_tokens),
                (A.REQUEST_TEMPERATURE, kwargs.get("temperature")),
                (A.REQUEST_TOP_P, kwargs.get("top_p")),
                (A.REQUEST_TOP_K, kwargs.get("top_k")),
                (A.REQUEST_SEED, kwargs.get("seed")),
                (A.REQUEST_FREQUENCY_PENALTY, kwargs.get("frequency_penalty")),
                (A.REQUEST_PRESENCE_PENALTY, kwargs.get("presence_penalty")),
            ):
                if value is not None:
                    attrs[key] = value
            stop = kwargs.get("stop")
            if stop:
                attrs[A.REQUEST_STOP_SEQUENCES] = [stop] if isinstance(stop, str) else [str(s) for s in stop]
            n = kwargs.get("n")
            if n is not None and n != 1:
                attrs[A.REQUEST_CHOICE_COUNT] = int(n)
            attrs[A.REQUEST_STREAM] = bool(kwargs.get("stream"))
        name = f"{operation} {model}" if model else operation
        self.request: RequestSpan = runtime.start(name, attrs, kind=SpanKind.CLIENT)
        self.texts: list[str] = []
        self.keep_text = runtime.content.enabled or self.request.wants_text
        self.eval_prompt: Any = None
        self.chunks = 0
        self.finish_reasons: list[str] = []
        self.details_tokens: int | None = None

    # -- inputs ---------------------------------------------------------------------------
    def record_input(self, prompt: Any) -> None:
        if self.request.wants_text and self.operation != A.OP_EMBEDDINGS:
            self.eval_prompt = prompt  # resolved to text on the telemetry worker, if sampled
        content = self.runtime.content
        if not content.enabled:
            return
        if self.operation == A.OP_CHAT:
            messages = [m if isinstance(m, dict) else _as_dict(m) for m in (prompt or [])]
            self.request.record_content(input_json=content.input_messages(messages))
        elif isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)):
            self.request.record_content(input_json=content.prompt(prompt))

    # -- non-streamed responses -----------------------------------------------------------
    def on_response(self, result: Any) -> None:
        request = self.request
        if self.operation == A.OP_CHAT:
            usage = getattr(result, "usage", None)
            if usage is not None:
                request.set_usage(
                    input_tokens=getattr(usage, "prompt_tokens", None),
                    output_tokens=getattr(usage, "completion_tokens", None),
                )
            choices = getattr(result, "choices", None) or []
            request.set_response(
                response_id=getattr(result, "id", None) or None,
                model=getattr(result, "model", None) or None,
                finish_reasons=[c.finish_reason for c in choices if getattr(c, "finish_reason", None)],
            )
            self._record_output([getattr(getattr(c, "message", None), "content", None) or "" for c in choices],
                                [getattr(c, "finish_reason", None) for c in choices])
        elif self.operation == A.OP_TEXT_COMPLETION:
            details = getattr(result, "details", None)
            text = result if isinstance(result, str) else getattr(result, "generated_text", None)
            reasons = []
            if details is not None:
                prefill = getattr(details, "prefill", None)
                request.set_usage(
                    input_tokens=len(prefill) if prefill else None,
                    output_tokens=getattr(details, "generated_tokens", None),
                )
                if getattr(details, "finish_reason", None):
                    reasons = [_tgi_reason(details.finish_reason)]
                    request.set_response(finish_reasons=reasons)
            if text is not None:
                self._record_output([text], reasons)
        elif self.operation == A.OP_EMBEDDINGS:
            shape = getattr(result, "shape", None)
            if shape:
                request.set_attribute(A.EMBEDDINGS_DIMENSION_COUNT, int(shape[-1]))

    # -- streamed responses (StreamObserver) ----------------------------------------------
    def on_chunk(self, chunk: Any) -> None:
        request = self.request
        if self.operation == A.OP_CHAT:
            if getattr(chunk, "id", None) and self.chunks == 0:
                request.set_response(response_id=chunk.id, model=getattr(chunk, "model", None) or None)
            for choice in getattr(chunk, "choices", None) or []:
                delta = getattr(choice, "delta", None)
                piece = getattr(delta, "content", None)
                if piece:
                    request.mark_first_token()
                    self.chunks += 1
                    if self.keep_text:
                        index = getattr(choice, "index", 0) or 0
                        while len(self.texts) <= index:
                            self.texts.append("")
                        self.texts[index] += piece
                if getattr(choice, "finish_reason", None):
                    self.finish_reasons.append(choice.finish_reason)
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                request.set_usage(
                    input_tokens=getattr(usage, "prompt_tokens", None),
                    output_tokens=getattr(usage, "completion_tokens", None),
                )
        else:  # TGI text stream: one event per generated token
            request.mark_first_token()
            self.chunks += 1
            if isinstance(chunk, str):
                if self.keep_text:
                    self.texts = [(self.texts[0] if self.texts else "") + chunk]
                return
            token = getattr(chunk, "token", None)
            if self.keep_text and token is not None and not getattr(token, "special", False):
                self.texts = [(self.texts[0] if self.texts else "") + (token.text or "")]
            details = getattr(chunk, "details", None)
            if details is not None:
                self.details_tokens = getattr(details, "generated_tokens", None)
                if getattr(details, "finish_reason", None):
                    self.finish_reasons = [_tgi_reason(details.finish_reason)]

    def on_end(self, error: BaseException | None, completed: bool) -> None:
        request = self.request
        if self.operation == A.OP_TEXT_COMPLETION:
            output_tokens = self.details_tokens
            if output_tokens is None and completed:
                output_tokens = self.chunks  # every TGI event carries exactly one token
            request.set_usage(output_tokens=output_tokens, decode_steps=self.chunks)
        else:
            request.set_usage(decode_steps=self.chunks)
        if self.finish_reasons:
            request.set_response(finish_reasons=self.finish_reasons)
        if self.texts:
            self._record_output(self.texts, self.finish_reasons)
        request.end(error, extra={A.STREAM_COMPLETED: completed})

    def _record_output(self, texts: list[str], reasons: list[Any]) -> None:
        if self.request.wants_text:
            prompt = self.eval_prompt
            self.request.offer_texts(lambda: [(handoff.prompt_text(prompt), text) for text in texts])
        content = self.runtime.content
        if content.enabled:
            self.request.record_content(output_json=content.completions(texts, reasons))


def _tgi_reason(reason: Any) -> str:
    value = str(getattr(reason, "value", reason))
    return {"eos_token": "stop", "stop_sequence": "stop"}.get(value, value)


def _as_dict(message: Any) -> dict[str, Any]:
    return {"role": getattr(message, "role", "user"), "content": getattr(message, "content", None)}


_OPERATIONS = {
    "text_generation": (A.OP_TEXT_COMPLETION, "prompt"),
    "chat_completion": (A.OP_CHAT, "messages"),
    "feature_extraction": (A.OP_EMBEDDINGS, "text"),
}


def _start(runtime: TelemetryRuntime, method: str, instance: Any, args: tuple, kwargs: dict) -> _Call | None:
    operation, first_arg = _OPERATIONS[method]
    try:
        call = _Call(runtime, operation, instance, kwargs)
        call.record_input(args[0] if args else kwargs.get(first_arg))
        return call
    except Exception:
        logger.debug("could not start an InferenceClient span", exc_info=True)
        return None


def client_wrapper(runtime: TelemetryRuntime, method: str):
    def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        if _in_call.get() or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        call = _start(runtime, method, instance, args, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        token = _in_call.set(True)
        try:
            with trace.use_span(call.request.span, end_on_exit=False, record_exception=False,
                                set_status_on_exception=False):
                result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.request.end(exc)
            raise
        finally:
            _in_call.reset(token)
        if kwargs.get("stream") and hasattr(result, "__next__"):
            return ObservedStream(result, call)
        _finish(call, result)
        return result

    return wrapper


def async_client_wrapper(runtime: TelemetryRuntime, method: str):
    async def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        if _in_call.get() or not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        call = _start(runtime, method, instance, args, kwargs)
        if call is None:
            return await wrapped(*args, **kwargs)
        token = _in_call.set(True)
        try:
            with trace.use_span(call.request.span, end_on_exit=False, record_exception=False,
                                set_status_on_exception=False):
                result = await wrapped(*args, **kwargs)
        except BaseException as exc:  # CancelledError included
            call.request.end(exc)
            raise
        finally:
            _in_call.reset(token)
        if kwargs.get("stream") and hasattr(result, "__anext__"):
            return ObservedAsyncStream(result, call)
        _finish(call, result)
        return result

    return wrapper


def _finish(call: _Call, result: Any) -> None:
    call.request.end(finalize=lambda request: call.on_response(result))


def inject_trace_context(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    """Send `traceparent` (and any configured propagator's headers) with the HTTP request, so the
    server's spans join the client span's trace. Only inside one of our spans: the current span is
    then the client call's span."""
    if _in_call.get() and is_instrumentation_enabled():
        try:
            params = args[0] if args else kwargs["request_parameters"]
            carrier = dict(params.headers or {})
            propagate.inject(carrier)
            params.headers = carrier  # a new dict: the client's own headers stay untouched
        except Exception:
            logger.debug("could not inject trace context", exc_info=True)
    return wrapped(*args, **kwargs)
