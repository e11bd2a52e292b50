"""Inline evaluation: score a sampled share of live completions in the background and attach the
results to their traces.

Flow: a finished request of a generation operation is emitted (telemetry.emit: on the telemetry
worker, or in the export process, wherever its span is made) -> it offers its prompt and completion
(telemetry.handoff) -> if its trace id falls in the sampled share, the completion goes into a
bounded queue (full: dropped and counted, never waited for) -> one background thread
takes micro-batches across requests, runs each configured evaluator's batched scorer call, and
emits per result a child span of the evaluated span (`evaluation {name}`, with a
`gen_ai.evaluation.result` event) plus a score histogram and a pass/fail counter.

Sampling uses the trace id the way the SDK's `TraceIdRatioBased` sampler does (its low 64 bits
against the rate), so every process decides the same way for one trace, and at a rate no higher
than the trace sampler's, the evaluated requests are among the exported ones.

Text reaches the evaluator in-process only. Exported explanations quote the response only when
content capture is on; otherwise they carry numbers (score, claim index, probabilities).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Sequence

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider, get_meter_provider
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode, TracerProvider

from ..telemetry import attributes as A
from ..telemetry import handoff
from ..telemetry.worker import finish_queued, hook_flushes
from .config import EvalsConfig, acceleration
from .evaluators import Evaluator, evaluator_class
from .result import EvalResult

logger = logging.getLogger(__name__)

SCOPE = "fi_evals_core.evals.inline"
EVALUATION_NAME = "gen_ai.evaluation.name"
SCORE_VALUE = "gen_ai.evaluation.score.value"
SCORE_LABEL = "gen_ai.evaluation.score.label"
EXPLANATION = "gen_ai.evaluation.explanation"
RESULT_EVENT = "gen_ai.evaluation.result"
COHORT = "fi_evals.cohort"
THRESHOLD = "fi_evals.threshold"
SCORE_METRIC = "fi_evals.evaluation.score"
RESULTS_METRIC = "fi_evals.evaluation.results"
DROPPED_METRIC = "fi_evals.evaluation.dropped"
_TRACE_ID_LIMIT = (1 << 64) - 1
_STOP = object()


def inputs_for(evaluator: Evaluator, item: handoff.Completion) -> dict[str, Any]:
    """The evaluator's inputs for one completion: the request's eval_context, else the prompt.

    Documented default without `eval_context`: the prompt is the reference, the context and the task.
    """
    ctx = item.eval_context or handoff.EvalContext()
    prompt = item.prompt
    if evaluator.name == "factual_consistency":
        return {"response": item.completion, "reference": ctx.reference or prompt}
    if evaluator.name in ("faithfulness", "groundedness"):
        return {"response": item.completion, "context": ctx.context or ctx.reference or prompt}
    inputs = {"task": ctx.task or prompt, "response": item.completion}
    if ctx.expected is not None:
        inputs["expected"] = ctx.expected
    return inputs


class InlineEvaluator:
    """The sink the request spans hand completions to; one background thread does the scoring."""

    def __init__(self, evaluators: Sequence[Evaluator], *, sample_rate: float, queue_size: int = 1000,
                 batch_size: int = 16, cohort: str | None = None,
                 tracer_provider: TracerProvider | None = None,
                 meter_provider: MeterProvider | None = None) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be from 0 to 1, got {sample_rate!r}")
        self.evaluators = list(evaluators)
        self.sample_rate = sample_rate
        self._bound = round(sample_rate * (_TRACE_ID_LIMIT + 1))
        self.batch_size = batch_size
        self.cohort = cohort
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = (meter_provider or get_meter_provider()).get_meter(SCOPE)
        self._score = meter.create_histogram(SCORE_METRIC, unit="1", description="Inline evaluation scores (0-1)")
        self._results = meter.create_counter(RESULTS_METRIC, description="Inline evaluation results by label")
        self._dropped_counter = meter.create_counter(
            DROPPED_METRIC, description="Completions sampled for evaluation but not scored")
        self.dropped = 0  # completions offered but not scored (also the metric, by reason)
        self.scored = 0  # completions scored (by every evaluator)
        self._start_lock = threading.Lock()
        self._load_first = False
        self.loaded = threading.Event()  # the scoring thread is past loading the model(s)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- the sink (called on the telemetry worker) -----------------------------------------------

    def sampled(self, trace_id: int) -> bool:
        return (trace_id & _TRACE_ID_LIMIT) < self._bound

    def offer(self, completion: handoff.Completion) -> None:
        if self._closed:
            self._drop(1, "shutdown")
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait(completion)
        except queue.Full:
            self._drop(1, "queue_full")

    # -- lifecycle ------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._start_lock:
            if self._thread is None or self._pid != os.getpid():  # first use, or a forked child
                if self._pid != os.getpid():
                    self._queue = queue.Queue(maxsize=self._queue.maxsize)
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="fi-evals-inline", daemon=True)
                self._thread.start()

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Score what is queued; False if `timeout_s` passed first (the rest stays queued)."""
        if self._thread is None or threading.current_thread() is self._thread:
            return True
        pending = self._queue  # an item counts until the worker has scored it (task_done)
        with pending.all_tasks_done:
            return pending.all_tasks_done.wait_for(lambda: pending.unfinished_tasks == 0, timeout_s)

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Score what is queued within `timeout_s`; what is left is counted as dropped."""
        flushed = self.force_flush(timeout_s)
        self._closed = True
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
            left += item is not _STOP
        if left:
            self._drop(left, "shutdown")
        if self._thread is not None and self._thread.is_alive():
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                pass
        return flushed and not left

    # -- the worker thread ----------------------------------------------------------------------

    def load_in_background(self) -> None:
        """Start the scoring thread now and load the NLI model(s) there first, so that the first
        sampled requests do not wait for the load and it does not happen mid-traffic."""
        self._load_first = True
        self._ensure_thread()

    def _load(self) -> None:
        for evaluator in self.evaluators:
            try:
                evaluator.scorer  # noqa: B018 - loads (and shares) the checkpoint
            except Exception as exc:  # scoring reports it per result (error.type), and retries per batch
                logger.warning("inline evaluation: %s could not load its NLI model %r (FI_EVALS_MODEL): %s: %s; "
                               "its results carry error.type until it loads", evaluator.name,
                               getattr(evaluator, "_model", None), type(exc).__name__, exc)
                logger.debug("model load failure", exc_info=True)

    def _run(self) -> None:
        if self._load_first:
            self._load()
        self.loaded.set()
        pending = self._queue
        while True:
            item = pending.get()
            if item is _STOP:
                pending.task_done()
                return
            batch = [item]
            while len(batch) < self.batch_size:
                try:
                    more = pending.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:  # score what was taken first, then stop
                    pending.task_done()
                    pending.put(_STOP)
                    break
                batch.append(more)
            try:
                self._score_batch(batch)
            except Exception:  # never let the thread die
                logger.warning("inline evaluation failed for a batch of %d", len(batch), exc_info=True)
            finally:
                for _ in batch:
                    pending.task_done()

    def _score_batch(self, batch: list[handoff.Completion]) -> None:
        for evaluator in self.evaluators:
            start_ns = time.time_ns()
            try:
                results = evaluator.evaluate_batch([inputs_for(evaluator, item) for item in batch])
            except Exception as exc:  # noqa: BLE001 - e.g. the model failed to load
                results = [EvalResult.from_error(evaluator.name, exc, evaluator.threshold) for _ in batch]
            end_ns = time.time_ns()
            for item, result in zip(batch, results):
                self._emit(item, result, start_ns, end_ns)
        self.scored += len(batch)

    def _emit(self, item: handoff.Completion, result: EvalResult, start_ns: int, end_ns: int) -> None:
        ctx = item.eval_context
        attrs: dict[str, Any] = {EVALUATION_NAME: result.name}
        if result.score is not None:
            attrs[SCORE_VALUE] = result.score
        if result.label is not None:
            attrs[SCORE_LABEL] = result.label
        if result.threshold is not None:
            attrs[THRESHOLD] = result.threshold
        attrs[EXPLANATION] = explanation(result, item.may_quote)
        if result.error_type:
            attrs[A.ERROR_TYPE] = result.error_type
        if item.response_id:
            attrs[A.RESPONSE_ID] = item.response_id
        if item.model:
            attrs[A.REQUEST_MODEL] = item.model
        if self.cohort:
            attrs[COHORT] = self.cohort
        if ctx is not None:
            attrs.update({k: v for k, v in ctx.attributes.items() if isinstance(v, (str, bool, int, float))})
        parent = trace.set_span_in_context(NonRecordingSpan(item.span_context))
        span = self._tracer.start_span(f"evaluation {result.name}", context=parent, kind=SpanKind.INTERNAL,
                                       attributes=attrs, start_time=start_ns)
        span.add_event(RESULT_EVENT, attrs, timestamp=end_ns)
        if result.error_type:
            span.set_status(Status(StatusCode.ERROR, result.error_type))
        span.end(end_time=end_ns)

        metric_attrs = {EVALUATION_NAME: result.name, SCORE_LABEL: result.label or "error"}
        if item.model:
            metric_attrs[A.REQUEST_MODEL] = item.model
        if self.cohort:
            metric_attrs[COHORT] = self.cohort
        self._results.add(1, metric_attrs)
        if result.score is not None:
            self._score.record(result.score, metric_attrs)

    def _drop(self, count: int, reason: str) -> None:
        self.dropped += count
        self._dropped_counter.add(count, {"reason": reason})


def explanation(result: EvalResult, may_quote: bool) -> str:
    """The result's reason where content may be exported; otherwise numbers only (the reason and
    error messages quote the response and its premises)."""
    if may_quote:
        return result.reason
    if result.error_type:
        return result.error_type
    if not result.claims:
        return f"{result.label}: score {result.score:.2f}"
    weakest = min(range(len(result.claims)), key=lambda i: result.claims[i].support)
    text = (f"{result.label}: score {result.score:.2f} over {len(result.claims)} claims; weakest "
            f"claim #{weakest + 1} support {result.claims[weakest].support:.2f}")
    contradicted = [c.contradiction for c in result.claims if c.contradicting is not None]
    if contradicted:
        text += f"; {len(contradicted)} contradicted by their best chunk (up to {max(contradicted):.2f})"
    return text


class InlineEvaluationExtension:
    """The `fi_evals_core.completion_sinks` entry point: on when `FI_EVALS_SAMPLE_RATE` > 0.
    `register()` starts it where request spans are made (this process, or the export process)."""

    def enabled(self) -> bool:
        """On when sampling; every FI_EVALS_* setting it will use is read now, so a bad one is a
        ConfigError at start-up (naming the variable), not an error on each result later."""
        if EvalsConfig.from_env().sample_rate <= 0:
            return False
        acceleration()
        return True

    def start(self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None) -> InlineEvaluator:
        evaluator = _from_config(EvalsConfig.from_env(), tracer_provider, meter_provider)
        evaluator.load_in_background()
        return evaluator


extension = InlineEvaluationExtension()


def _from_config(config: EvalsConfig, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None,
                 evaluators: Sequence[Evaluator] | None = None) -> InlineEvaluator:
    if evaluators is None:
        evaluators = [evaluator_class(name)(model=config.model, device=config.device) for name in config.evaluators]
    return InlineEvaluator(evaluators, sample_rate=config.sample_rate, queue_size=config.queue_size,
                           batch_size=config.batch_size, cohort=config.cohort,
                           tracer_provider=tracer_provider, meter_provider=meter_provider)


def start_inline_evaluation(tracer_provider: TracerProvider | None = None,
                            meter_provider: MeterProvider | None = None,
                            config: EvalsConfig | None = None,
                            evaluators: Sequence[Evaluator] | None = None) -> InlineEvaluator | None:
    """Install inline evaluation in this process, on the given providers (None: the global ones),
    as configured (FI_EVALS_*); None when the sample rate is 0. For providers you built yourself:
    `register()` does this from the environment. The providers' flush and shutdown score what is
    queued first."""
    config = config or EvalsConfig.from_env()
    stop_inline_evaluation()
    if config.sample_rate <= 0:
        return None
    evaluator = _from_config(config, tracer_provider, meter_provider, evaluators)
    handoff.set_sink(evaluator)
    hook_flushes(tracer_provider or trace.get_tracer_provider())
    hook_flushes(meter_provider or get_meter_provider())
    return evaluator


def stop_inline_evaluation(timeout_s: float = 30.0) -> None:
    """Emit the requests that have ended (they may still offer completions), score what is queued
    within `timeout_s`, count the rest as dropped, and uninstall."""
    if handoff.get_sink() is not None:
        finish_queued(shutdown=True, timeout_s=timeout_s)
