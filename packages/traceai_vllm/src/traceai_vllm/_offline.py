"""One parent span per offline `LLM.generate` / `LLM.chat` call, with the batch's totals.

The request spans created while the call runs become its children. Token totals go in `vllm.batch.*`
(not `gen_ai.usage.*`), so a backend that sums usage over spans counts every token once.
"""

from __future__ import annotations

import contextvars
import logging
import time
from typing import Any

from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind

from fi_evals_core.telemetry import RequestSpan, TelemetryRuntime
from fi_evals_core.telemetry import attributes as A

from ._engine import PROVIDER, _fallback_info, current_operation, engine_infos

logger = logging.getLogger(__name__)

_in_batch: contextvars.ContextVar[bool] = contextvars.ContextVar("traceai_vllm_in_batch", default=False)


def batch_wrapper(runtime: TelemetryRuntime, method: str, operation: str):
    def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        if _in_batch.get() or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        try:
            processor = instance.llm_engine.output_processor
            model = (engine_infos.get(processor) or _fallback_info(processor)).model
            # Its span is made now, once per batch, so each request's record carries its parent's
            # ids and goes straight to the sink when the request finishes.
            batch = runtime.start(
                f"LLM.{method} {model}",
                {A.PROVIDER_NAME: PROVIDER, A.REQUEST_MODEL: model},
                kind=SpanKind.INTERNAL, metrics=None,
            )
        except Exception:
            logger.debug("could not start a vLLM batch span", exc_info=True)
            return wrapped(*args, **kwargs)
        tokens = (_in_batch.set(True), current_operation.set(operation))
        try:
            with runtime.enclosing(batch):
                outputs = wrapped(*args, **kwargs)
        except BaseException as exc:
            batch.end(exc)
            raise
        finally:
            current_operation.reset(tokens[1])
            _in_batch.reset(tokens[0])
        end_ns = time.perf_counter_ns()
        batch.end(end_ns=end_ns, finalize=lambda request: _totals(request, outputs, end_ns))
        return outputs

    return wrapper


def _totals(batch: RequestSpan, outputs: Any, end_ns: int) -> None:
    outputs = list(outputs or ())
    batch.set_attribute(A.VLLM_BATCH_REQUESTS, len(outputs))
    batch.set_attribute(A.VLLM_BATCH_INPUT_TOKENS,
                        sum(len(getattr(o, "prompt_token_ids", None) or ()) for o in outputs))
    completions = [c for o in outputs if isinstance(getattr(o, "outputs", None), list) for c in o.outputs]
    if not completions:
        return  # pooling: no generated tokens
    output_tokens = sum(len(c.token_ids) for c in completions)
    batch.set_attribute(A.VLLM_BATCH_OUTPUT_TOKENS, output_tokens)
    duration_s = (end_ns - batch.start_ns) / 1e9
    if duration_s > 0:
        batch.set_attribute(A.OUTPUT_TOKENS_PER_SECOND, output_tokens / duration_s)
