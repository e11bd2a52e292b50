"""Inline evaluation of live completions: sampling by trace id, the bounded queue, results as
child spans of the evaluated request with metrics, content kept out of exports, shutdown."""

from __future__ import annotations

import json
import random
import threading

import pytest
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from opentelemetry.trace import SpanContext, TraceFlags

from fi_evals_core import register
from fi_evals_core.evals import FactualConsistency, Groundedness, NLIScorer, TaskCompletion
from fi_evals_core.evals.inline import (
    DROPPED_METRIC,
    RESULTS_METRIC,
    SCORE_METRIC,
    InlineEvaluator,
    start_inline_evaluation,
    stop_inline_evaluation,
)
from fi_evals_core.telemetry import ContentCapture, TelemetryConfig, handoff
from fi_evals_core.telemetry import attributes as A

PROMPT = "The old man walked to the garden"


@pytest.fixture(scope="module")
def scorer(nli_checkpoint):
    return NLIScorer.from_pretrained(nli_checkpoint("bert"), device="cpu")


@pytest.fixture
def inline_on(scorer):
    """Start inline evaluation against a test's providers; always uninstalled afterwards."""
    started: list[InlineEvaluator] = []

    def start(captured, rate=1.0, evaluators=None, **kwargs) -> InlineEvaluator:
        evaluator = InlineEvaluator(evaluators or [Groundedness(scorer=scorer), FactualConsistency(scorer=scorer)],
                                    sample_rate=rate, tracer_provider=captured.tracer_provider,
                                    meter_provider=captured.meter_provider, **kwargs)
        handoff.set_sink(evaluator)
        started.append(evaluator)
        return evaluator

    yield start
    handoff.set_sink(None)
    for evaluator in started:
        evaluator.shutdown(5)


def evaluation_spans(captured):
    return [s for s in captured.exporter.get_finished_spans() if s.name.startswith("evaluation ")]


def completion(trace_id: int, text: str = "The cat sat on the mat.", may_quote: bool = False) -> handoff.Completion:
    ctx = SpanContext(trace_id, 0x1234, is_remote=False, trace_flags=TraceFlags(1))
    return handoff.Completion(ctx, "Where did the cat sit?", text, "chat", "m", may_quote=may_quote)


def test_pipeline_completions_are_scored_under_their_span(instrument_with, inline_on, llama):
    from transformers import pipeline

    captured = instrument_with(ContentCapture.NO_CONTENT)
    inline = inline_on(captured)
    model, tok = llama
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    outputs = pipe(PROMPT, max_new_tokens=12, do_sample=False)
    generated = outputs[0]["generated_text"][len(PROMPT):]
    # drains the telemetry worker: the completion is handed off
    assert sorted(s.name.split()[0] for s in captured.spans()) == ["pipeline", "text_completion"]
    assert inline.force_flush(30)

    pipeline_span = next(s for s in captured.spans() if s.name.startswith("pipeline"))
    results = evaluation_spans(captured)
    assert sorted(s.name for s in results) == ["evaluation factual_consistency", "evaluation groundedness"]
    for span in results:
        assert span.parent.span_id == pipeline_span.context.span_id
        assert span.context.trace_id == pipeline_span.context.trace_id
        attrs = span.attributes
        assert 0.0 <= attrs["gen_ai.evaluation.score.value"] <= 1.0
        assert attrs["gen_ai.evaluation.score.label"] in ("pass", "fail")
        assert "claims" in attrs["gen_ai.evaluation.explanation"]
        assert attrs[A.REQUEST_MODEL] == pipeline_span.attributes[A.REQUEST_MODEL]
        assert [e.name for e in span.events] == ["gen_ai.evaluation.result"]

    # content capture is off: neither the prompt nor the completion reaches an exported span
    exported = json.dumps([dict(s.attributes) | {"events": [dict(e.attributes) for e in s.events]}
                           for s in captured.exporter.get_finished_spans()])
    assert PROMPT not in exported and generated.strip()[:20] not in exported

    points = captured.metric_points(RESULTS_METRIC)
    assert sum(p.value for p in points) == 2
    assert {p.attributes["gen_ai.evaluation.name"] for p in points} == {"groundedness", "factual_consistency"}
    assert sum(p.count for p in captured.metric_points(SCORE_METRIC)) == 2


def test_eval_context_gives_the_reference_and_labels(instrument_with, inline_on, scorer, llama):
    from transformers import pipeline

    captured = instrument_with(ContentCapture.SPAN_ONLY)
    inline_on(captured, evaluators=[FactualConsistency(scorer=scorer)], cohort="ckpt-7")
    model, tok = llama
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    reference = "The garden behind the house was full of red apples and a small box."
    with handoff.eval_context(reference=reference, tenant="acme"):
        pipe(PROMPT, max_new_tokens=8, do_sample=False)
    pipe("Another prompt without context", max_new_tokens=8, do_sample=False)
    captured.spans()
    handoff.get_sink().force_flush(30)
    results = evaluation_spans(captured)
    assert len(results) == 2
    with_ctx = [s for s in results if s.attributes.get("tenant") == "acme"]
    assert len(with_ctx) == 1
    # capture is on: the explanation quotes the best premise span, taken from the given reference
    assert "garden behind the house" in with_ctx[0].attributes["gen_ai.evaluation.explanation"]
    assert all(s.attributes["fi_evals.cohort"] == "ckpt-7" for s in results)
    point = captured.metric_points(RESULTS_METRIC)[0]
    assert point.attributes["fi_evals.cohort"] == "ckpt-7"


def test_sampling_follows_the_trace_id_like_the_sdk_sampler(scorer):
    rng = random.Random(7)
    trace_ids = [rng.getrandbits(128) for _ in range(20_000)]
    for rate in (0.0, 0.5, 1.0):
        evaluator = InlineEvaluator([Groundedness(scorer=scorer)], sample_rate=rate)
        chosen = [evaluator.sampled(t) for t in trace_ids]
        sdk = TraceIdRatioBased(rate)
        assert chosen == [sdk.should_sample(None, t, "x").decision == Decision.RECORD_AND_SAMPLE
                          for t in trace_ids]
        assert abs(sum(chosen) / len(trace_ids) - rate) < 0.015


def test_half_of_real_requests_are_scored(instrument_with, inline_on, scorer, llama):
    from transformers import pipeline

    captured = instrument_with(ContentCapture.NO_CONTENT)
    inline = inline_on(captured, rate=0.5, evaluators=[Groundedness(scorer=scorer)])
    model, tok = llama
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    for i in range(24):
        pipe(f"{PROMPT} {i}", max_new_tokens=2, do_sample=False)
    spans = [s for s in captured.spans() if s.name.startswith("pipeline")]
    inline.force_flush(60)
    expected = {s.context.span_id for s in spans if inline.sampled(s.context.trace_id)}
    assert 0 < len(expected) < 24
    assert {s.parent.span_id for s in evaluation_spans(captured)} == expected


class Gated(Groundedness):
    """A real evaluator that waits for the test before scoring (to fill the queue)."""

    def __init__(self, gate: threading.Event, **kwargs):
        super().__init__(**kwargs)
        self.gate = gate
        self.started = threading.Event()

    def evaluate_batch(self, items, on_progress=None):
        self.started.set()
        assert self.gate.wait(30)
        return super().evaluate_batch(items, on_progress)


def test_a_full_queue_drops_and_counts_without_waiting(instrument_with, inline_on, scorer):
    captured = instrument_with(ContentCapture.NO_CONTENT)
    gate = threading.Event()
    gated = Gated(gate, scorer=scorer)
    inline = inline_on(captured, evaluators=[gated], queue_size=2, batch_size=1)
    inline.offer(completion(1))
    assert gated.started.wait(10)  # the worker holds the first item
    for i in range(2, 11):  # the worker is held by the gate: a blocking put would never return
        inline.offer(completion(i))
    assert inline.dropped == 7  # 2 queued, 7 dropped, none waited for
    gate.set()
    assert inline.force_flush(30)
    assert inline.scored == 3 and len(evaluation_spans(captured)) == 3
    dropped = captured.metric_points(DROPPED_METRIC)
    assert [(p.attributes["reason"], p.value) for p in dropped] == [("queue_full", 7)]


def test_shutdown_scores_within_its_bound_and_counts_the_rest(instrument_with, inline_on, scorer):
    captured = instrument_with(ContentCapture.NO_CONTENT)
    gate = threading.Event()
    gated = Gated(gate, scorer=scorer)
    inline = inline_on(captured, evaluators=[gated], queue_size=10, batch_size=1)
    for i in range(4):
        inline.offer(completion(i + 1))
    assert gated.started.wait(10)
    assert inline.shutdown(0.2) is False  # the gate holds the worker: 3 items still queued
    assert inline.dropped == 3
    inline.offer(completion(99))  # after shutdown: counted, not queued
    assert inline.dropped == 4
    gate.set()


def test_a_scorer_failure_is_an_error_result_and_the_worker_goes_on(instrument_with, inline_on, scorer):
    captured = instrument_with(ContentCapture.NO_CONTENT)
    broken = Groundedness(model="/nonexistent/checkpoint", device="cpu")
    inline = inline_on(captured, evaluators=[broken, Groundedness(scorer=scorer)])
    inline.offer(completion(5))
    assert inline.force_flush(30)
    spans = evaluation_spans(captured)
    assert len(spans) == 2
    failed = [s for s in spans if "error.type" in s.attributes]
    assert len(failed) == 1 and failed[0].attributes["gen_ai.evaluation.explanation"] == failed[0].attributes["error.type"]
    assert "gen_ai.evaluation.score.value" not in failed[0].attributes
    inline.offer(completion(6))
    assert inline.force_flush(30) and len(evaluation_spans(captured)) == 4


def test_task_completion_takes_the_task_from_the_context(instrument_with, inline_on, scorer):
    captured = instrument_with(ContentCapture.SPAN_ONLY)
    inline = inline_on(captured, evaluators=[TaskCompletion(scorer=scorer)])
    item = completion(8, "Paris is the capital.", may_quote=True)
    item.eval_context = handoff.EvalContext(task="Name the capital of France.", expected="Paris.")
    inline.offer(item)
    assert inline.force_flush(30)
    (span,) = evaluation_spans(captured)
    assert "covers the expected answer" in span.attributes["gen_ai.evaluation.explanation"]


@pytest.mark.parametrize("export_process", ["0", "1"])
def test_register_turns_it_on_from_the_environment_and_results_reach_a_collector(
        collector, nli_checkpoint, hf_server, hub_online, monkeypatch, export_process):
    """In-process, and with the export process (which then runs the evaluator: the serving process
    only ships the texts along with the finished request)."""
    from huggingface_hub import InferenceClient

    collector.clear()
    monkeypatch.setenv("FI_EVALS_SAMPLE_RATE", "1")
    monkeypatch.setenv("FI_EVALS_EVALUATORS", "groundedness,faithfulness")
    monkeypatch.setenv("FI_EVALS_MODEL", nli_checkpoint("bert"))
    monkeypatch.setenv("FI_EVALS_DEVICE", "cpu")
    monkeypatch.setenv("FI_EVALS_COHORT", "canary")
    service = f"inline-evals-{export_process}"
    env = {**collector.otel_env("grpc"), "OTEL_SERVICE_NAME": service, "OTEL_EXPORTER_OTLP_TIMEOUT": "5000",
           "TRACEAI_EXPORT_PROCESS": export_process}
    telemetry = register(config=TelemetryConfig.from_env(env), set_global=False)
    try:
        if export_process == "1":  # evaluated in the export process: nothing scores here
            assert telemetry.completion_sink is None and handoff.get_sink() is None
            assert telemetry.sink.evaluates_remotely
        else:
            assert telemetry.completion_sink is not None and handoff.get_sink() is telemetry.completion_sink
            # the model is loaded on the scoring thread at start, before any request
            assert telemetry.completion_sink.loaded.wait(60)
            assert all(e._scorer is not None for e in telemetry.completion_sink.evaluators)
        InferenceClient(base_url=hf_server.base_url).chat_completion(
            [{"role": "user", "content": "Tell me about the quiet house"}], max_tokens=6)
    finally:
        telemetry.shutdown()  # drains request spans, scores the queue, flushes both providers
    assert handoff.get_sink() is None

    spans = collector.wait_for_spans(lambda s: s["name"].startswith(("chat", "evaluation"))
                                     and s["resource_attributes"].get("service.name") == service, count=3, timeout=20)
    chat = next(s for s in spans if s["name"].startswith("chat"))
    results = [s for s in spans if s["name"].startswith("evaluation")]
    assert sorted(s["name"] for s in results) == ["evaluation faithfulness", "evaluation groundedness"]
    for span in results:
        assert span["trace_id"] == chat["trace_id"] and span["parent_span_id"] == chat["span_id"]
        assert span["attributes"]["fi_evals.cohort"] == "canary"
        assert span["attributes"][A.RESPONSE_ID] == chat["attributes"][A.RESPONSE_ID]
    assert "quiet house" not in json.dumps(spans)
    counts = collector.wait_for_metrics(lambda m: m["name"] == RESULTS_METRIC
                                        and m["resource_attributes"].get("service.name") == service, timeout=15)
    assert sum(p["value"] for p in counts[-1]["data_points"]) == 2  # one result per evaluator, counted


def test_start_from_config_is_off_at_rate_zero(monkeypatch):
    monkeypatch.setenv("FI_EVALS_SAMPLE_RATE", "0")
    assert start_inline_evaluation() is None and handoff.get_sink() is None
    monkeypatch.setenv("FI_EVALS_SAMPLE_RATE", "1.5")
    with pytest.raises(ValueError, match="FI_EVALS_SAMPLE_RATE"):
        start_inline_evaluation()
    stop_inline_evaluation()


def test_evaluator_misconfiguration_is_said_once_at_start_up(tmp_path, caplog):
    """A bad acceleration switch: a ConfigError at register() naming it. A model that cannot load:
    one WARNING naming FI_EVALS_MODEL as the evaluator starts, before any traffic."""
    import logging

    import pytest as _pytest

    from fi_evals_core import register
    from fi_evals_core.telemetry import ConfigError, TelemetryConfig

    env = {"FI_EVALS_SAMPLE_RATE": "1", "FI_EVALS_ACCELERATION": "maybe", "FI_EVALS_DEVICE": "cpu"}
    with _pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        with _pytest.raises(ConfigError, match="FI_EVALS_ACCELERATION='maybe'"):
            register(config=TelemetryConfig.from_env({"TRACEAI_TRACES_FILE": str(tmp_path / "t.jsonl")}),
                     set_global=False, instrument=False)
        mp.setenv("FI_EVALS_ACCELERATION", "auto")
        mp.setenv("FI_EVALS_MODEL", str(tmp_path / "no-such-model"))
        with caplog.at_level(logging.WARNING):
            telemetry = register(config=TelemetryConfig.from_env({"TRACEAI_TRACES_FILE": str(tmp_path / "t.jsonl")}),
                                 set_global=False, instrument=False)
            try:
                assert telemetry.completion_sink.loaded.wait(60)
            finally:
                telemetry.shutdown()
    lines = [r.getMessage() for r in caplog.records if "could not load its NLI model" in r.getMessage()]
    assert len(lines) == 1 and "no-such-model" in lines[0] and "FI_EVALS_MODEL" in lines[0]
