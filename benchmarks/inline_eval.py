"""Inline evaluation: what it adds to the request path, and how much it can score.

Part 1, the request path. With inline evaluation at 100 % sampling versus off, in one process,
alternating rounds: (a) the instrumentation's own request path in isolation — a request span
started, its text offered, ended, exactly as the instrumentors do it — timed on the calling thread
(`time.thread_time_ns`, CPU time of that thread only: the hand-off, scoring and export run on other
threads); (b) real `pipeline("text-generation")` calls on a tiny Llama, same clock, for context.

Part 2, the evaluator. A feeder offers completions at a fixed rate above what the scorer sustains,
into a bounded queue: completions scored per second, drops, and the check that every offered
completion is either scored or counted as dropped (offered == scored + dropped, exactly).

    python benchmarks/inline_eval.py                        # ~2 min on 2 cores
    python benchmarks/inline_eval.py --nli-model PATH       # a real checkpoint for part 2

Measured results (date, command, machine): benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from fi_evals_core.evals import Groundedness, NLIScorer
from fi_evals_core.evals.inline import InlineEvaluator
from fi_evals_core.telemetry import TelemetryConfig, TelemetryRuntime, drain, handoff
from fi_evals_core.telemetry import attributes as A

PROMPT = "The old man walked to the garden"
COMPLETION = "He found a red apple under the tree. Then he sat down and read a book."


class CountingExporter(SpanExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, spans):  # noqa: ANN001
        self.count += len(spans)
        return SpanExportResult.SUCCESS


def providers() -> tuple[TracerProvider, MeterProvider, CountingExporter]:
    exporter = CountingExporter()
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(exporter))
    return tp, MeterProvider(metric_readers=[InMemoryMetricReader()]), exporter


def request_path_us(runtime: TelemetryRuntime, n: int) -> float:
    """Calling-thread CPU µs per request of the instrumentation's request path."""
    attrs = {A.OPERATION_NAME: "chat", A.PROVIDER_NAME: "huggingface", A.REQUEST_MODEL: "tiny"}
    start = time.thread_time_ns()
    for _ in range(n):
        request = runtime.start("chat tiny", dict(attrs), kind=SpanKind.CLIENT, defer_span=True)
        if request.wants_text:
            request.offer_texts(lambda: [(PROMPT, COMPLETION)])
        request.set_usage(input_tokens=7, output_tokens=12)
        request.end()
    return (time.thread_time_ns() - start) / n / 1e3


def part1(args, scorer: NLIScorer) -> None:
    tp, mp, exporter = providers()
    runtime = TelemetryRuntime("bench", "0", tracer_provider=tp, meter_provider=mp, config=TelemetryConfig())
    inline = InlineEvaluator([Groundedness(scorer=scorer)], sample_rate=1.0, queue_size=args.queue_size,
                             tracer_provider=tp, meter_provider=mp)
    samples: dict[str, list[float]] = {"off": [], "on": []}
    request_path_us(runtime, 500)  # warm-up
    for _ in range(args.rounds):
        for variant in ("off", "on"):
            handoff.set_sink(inline if variant == "on" else None)
            samples[variant].append(request_path_us(runtime, args.requests))
            drain()  # the spans finish (and hand off) on the telemetry worker
            handoff.set_sink(None)
    off, on = statistics.median(samples["off"]), statistics.median(samples["on"])
    print(f"\n(a) request path, {args.rounds} alternated rounds x {args.requests} requests, calling-thread CPU")
    print(f"  inline off: {off:7.2f} us/request   (IQR {iqr(samples['off']):.2f})")
    print(f"  inline on : {on:7.2f} us/request   (IQR {iqr(samples['on']):.2f})")
    print(f"  offered {inline.scored + inline.dropped + inline._queue.qsize()}: scored {inline.scored}, "
          f"dropped {inline.dropped} (queue {args.queue_size})")
    inline.shutdown(5)

    if args.pipeline_calls:
        pipeline_rounds(args, scorer)
    print(f"\nadded on the request path at 100 % sampling: {on - off:+.2f} us/request")


def pipeline_rounds(args, scorer: NLIScorer) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from fi_evals_core.testing.tiny_models import build_llama
    from traceai_huggingface import HuggingFaceInstrumentor

    tmp = Path(tempfile.mkdtemp())
    build_llama(tmp / "llama")
    model, tok = AutoModelForCausalLM.from_pretrained(tmp / "llama"), AutoTokenizer.from_pretrained(tmp / "llama")
    tp, mp, _ = providers()
    instrumentor = HuggingFaceInstrumentor()
    instrumentor.instrument(tracer_provider=tp, meter_provider=mp, config=TelemetryConfig())
    inline = InlineEvaluator([Groundedness(scorer=scorer)], sample_rate=1.0, queue_size=args.queue_size,
                             tracer_provider=tp, meter_provider=mp)
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    samples: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(3):
        pipe(PROMPT, max_new_tokens=2, do_sample=False)
    for _ in range(args.rounds):
        for variant in ("off", "on"):
            handoff.set_sink(inline if variant == "on" else None)
            start = time.thread_time_ns()
            for _ in range(args.pipeline_calls):
                pipe(PROMPT, max_new_tokens=2, do_sample=False)
            samples[variant].append((time.thread_time_ns() - start) / args.pipeline_calls / 1e3)
            drain()
            handoff.set_sink(None)
    off, on = statistics.median(samples["off"]), statistics.median(samples["on"])
    print(f"\n(b) pipeline('text-generation'), 2 new tokens, {args.pipeline_calls} calls x {args.rounds} rounds, "
          "calling-thread CPU")
    print(f"  inline off: {off:9.1f} us/call (IQR {iqr(samples['off']):.1f})")
    print(f"  inline on : {on:9.1f} us/call (IQR {iqr(samples['on']):.1f})   difference {on - off:+.1f} us "
          "(model time dominates: read (a) for the instrumentation's share)")
    print(f"  scored {inline.scored}, dropped {inline.dropped}")
    inline.shutdown(30)
    instrumentor.uninstrument()


def part2(args, scorer: NLIScorer) -> None:
    tp, mp, _ = providers()
    # capacity: a burst into a queue large enough to hold it, timed until scored
    probe = InlineEvaluator([Groundedness(scorer=scorer)], sample_rate=1.0, queue_size=10_000,
                            batch_size=args.batch_size, tracer_provider=tp, meter_provider=mp)
    for i in range(args.batch_size * 2):  # warm-up
        probe.offer(completion(i + 1))
    probe.force_flush(600)
    burst = args.burst
    started = time.perf_counter()
    for i in range(burst):
        probe.offer(completion(i + 1))
    probe.force_flush(600)
    capacity = burst / (time.perf_counter() - started)
    probe.shutdown(5)

    rate = capacity * args.overload
    inline = InlineEvaluator([Groundedness(scorer=scorer)], sample_rate=1.0, queue_size=args.queue_size,
                             batch_size=args.batch_size, tracer_provider=tp, meter_provider=mp)
    offered = 0
    began = time.perf_counter()
    while (elapsed := time.perf_counter() - began) < args.seconds:
        due = int(elapsed * rate) + 1
        while offered < due:
            offered += 1
            inline.offer(completion(offered))
        time.sleep(0.002)
    duration = time.perf_counter() - began
    scored_during = inline.scored
    inline.shutdown(30)
    exact = offered == inline.scored + inline.dropped
    print(f"\npart 2: evaluator throughput (batch {args.batch_size}, queue {args.queue_size})")
    print(f"  capacity (burst of {burst}): {capacity:8.1f} completions/s")
    print(f"  offered {rate:8.1f}/s for {duration:.1f} s = {offered} completions ({args.overload:.1f}x capacity)")
    print(f"  scored during the load: {scored_during} ({scored_during / duration:.1f}/s); at shutdown: "
          f"{inline.scored} scored, {inline.dropped} dropped ({inline.dropped / offered:.1%})")
    print(f"  offered == scored + dropped: {exact}")


def completion(i: int) -> handoff.Completion:
    ctx = SpanContext(i, 1, is_remote=False, trace_flags=TraceFlags(1))
    return handoff.Completion(ctx, PROMPT, COMPLETION, "chat", "tiny")


def iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [0, 0, 0]
    return q[2] - q[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--pipeline-calls", type=int, default=20, help="0 skips part 1 (b)")
    parser.add_argument("--queue-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--burst", type=int, default=256)
    parser.add_argument("--overload", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--nli-model", help="NLI checkpoint for scoring (default: a tiny random BERT)")
    args = parser.parse_args()

    if args.nli_model:
        path = args.nli_model
    else:
        from fi_evals_core.testing.tiny_nli import build_nli_checkpoint

        path = str(build_nli_checkpoint(Path(tempfile.mkdtemp()) / "nli", "bert"))
    scorer = NLIScorer.from_pretrained(path, device="cpu")
    print(f"NLI model: {path}")
    part2(args, scorer)
    part1(args, scorer)


if __name__ == "__main__":
    main()
