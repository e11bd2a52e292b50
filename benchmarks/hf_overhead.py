#!/usr/bin/env python3
"""Per-call overhead of OpenTelemetry instrumentations on Hugging Face transformers generation.

    bash benchmarks/setup_bench_env.sh                     # once: .venv-bench with the peers
    python benchmarks/hf_overhead.py                       # defaults: ~3 minutes on 2 cores
    python benchmarks/hf_overhead.py --calls 30 --rounds 14 --new-tokens 16

A tiny, randomly initialised Llama (fi_evals_core.testing.tiny_models; no Hub access) generates exactly
``--new-tokens`` tokens per call, greedily, through ``model.generate`` and through
``pipeline("text-generation")``. Each variant lives in its own worker process (instrumentations cannot
always be removed cleanly, and some patch things at import time):

    baseline      no instrumentation
    baseline-aa   a second, identical uninstrumented worker: an A/A control whose "overhead" is the noise
    traceai       this project's HuggingFaceInstrumentor (spans and histograms made in-process)
    traceai-export-process  the same with register(TRACEAI_EXPORT_PROCESS=1): a child process makes,
                  writes (JSONL) and aggregates them
    openllmetry   opentelemetry-instrumentation-transformers (traceloop)
    openlit       openlit (openlit.init with only its transformers instrumentation enabled)

Every worker has the same telemetry pipeline, set as the global providers and handed to the
instrumentor: an SDK TracerProvider with a BatchSpanProcessor feeding a counting, no-op exporter (export
runs on the processor's thread, as in production), an SDK MeterProvider with an InMemoryMetricReader and
an SDK LoggerProvider with a BatchLogRecordProcessor (for instrumentations that emit events as logs).

The driver (this process, standard library only) starts the workers up front, warms each of them up,
then drives them round by round over pipes: in every round, for each mode (generate, pipeline), every
worker in turn times ``--calls`` back-to-back calls while the others sit idle blocked on their pipe. The
order of the workers rotates from round to round so that no variant always runs first or right after
another. Outside the timed region each worker collects garbage before a batch and flushes its span
processor after it, which lets it attribute the exported spans to that batch's mode.

Statistics, per variant and mode (all paired with the baseline run of the same round):
  p50 ms/call  median of every individual call
  +us/call     median over rounds of (round median per call - baseline's round median per call)
  thrpt ratio  median over rounds of (baseline round time / variant round time), i.e. the variant's
               throughput relative to the baseline (1.0 = free, 0.99 = 1% throughput loss)
The A/A row shows how large these figures get when nothing differs.

Spans (and metric points / log records) are counted per mode and printed, so that an instrumentation that
silently records nothing cannot pass for a free one.

Interpreter: the workers run under ``--python`` (default: .venv-bench/bin/python at the repository root
when it exists, made by benchmarks/setup_bench_env.sh, else this interpreter). All variants use the same
interpreter so that torch, transformers and the OpenTelemetry SDK are identical; a peer that is not
installed there is skipped with a note.

Method in detail: benchmarks/README.md. Measured results (date, command, machine): benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
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
DEFAULT_BENCH_VENV_PYTHON = REPO_ROOT / ".venv-bench" / "bin" / "python"
PROMPT = "Once upon a time there was a small robot who"

# name -> what it is, which modes it instruments (spans expected per call), the module it needs.
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"label": "baseline (no instrumentation)", "spans": {"generate": 0, "pipeline": 0}, "needs": None},
    "baseline-aa": {"label": "baseline again (A/A noise)", "spans": {"generate": 0, "pipeline": 0}, "needs": None},
    "traceai": {"label": "traceai HuggingFaceInstrumentor", "spans": {"generate": 1, "pipeline": 2},
                "needs": "traceai_huggingface"},
    # register() with TRACEAI_EXPORT_PROCESS=1: spans (JSONL) and histograms made by a child process
    "traceai-export-process": {"label": "traceai, export process", "spans": {"generate": 1, "pipeline": 2},
                               "needs": "traceai_huggingface"},
    "openllmetry": {"label": "OpenLLMetry transformers", "spans": {"generate": 0, "pipeline": 1},
                    "needs": "opentelemetry.instrumentation.transformers"},
    "openlit": {"label": "OpenLIT", "spans": {"generate": 0, "pipeline": 1}, "needs": "openlit"},
    # Not run by default. "sdk-floor" is what the OpenTelemetry SDK alone costs here: a bare wrapper
    # that records, inline, one span with as many attributes as traceai's and the same three metric
    # points, and does nothing else (no token counting, no first-token clock, no worker thread).
    "sdk-floor": {"label": "  SDK alone (same span + metrics)", "spans": {"generate": 1, "pipeline": 2},
                  "needs": None, "ablation": True},
    "traceai-no-metrics": {"label": "  traceai, no-op meter provider", "spans": {"generate": 1, "pipeline": 2},
                           "needs": "traceai_huggingface", "ablation": True},
    "traceai-noop-sdk": {"label": "  traceai, no-op providers", "spans": {"generate": 0, "pipeline": 0},
                         "needs": "traceai_huggingface", "ablation": True},
}
DEFAULT_VARIANTS = [v for v, spec in VARIANTS.items() if not spec.get("ablation")]
PROJECT = "traceai"
BASELINE = "baseline"
MODES = ("generate", "pipeline")
GOAL_US = 100.0
GOAL_RATIO = 0.99


# --------------------------------------------------------------------------------------------- worker side
class _Telemetry:
    """The SDK pipeline every worker gets, instrumented or not, plus counters to check what was recorded."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class CountingSpanExporter(SpanExporter):
            """Counts spans by name and drops them: export cost close to zero, on the processor's thread."""

            def __init__(self) -> None:
                self.by_name: Counter[str] = Counter()

            def export(self, spans: Any) -> Any:
                for span in spans:
                    self.by_name[span.name] += 1
                return SpanExportResult.SUCCESS

            def shutdown(self) -> None:
                pass

        resource = Resource.create({"service.name": "hf-overhead-bench"})
        self.registered: Any = None  # what register() built, for the export-process variant
        self.spans_file: Path | None = None
        self.span_exporter = CountingSpanExporter()
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.span_exporter))
        self.metric_reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[self.metric_reader])
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)

        self.log_records: Counter[str] = Counter()
        self.logger_provider = None
        try:  # the logs SDK is still "_logs"; tolerate its renames
            from opentelemetry import _logs
            from opentelemetry.sdk._logs import LoggerProvider
            from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

            try:
                from opentelemetry.sdk._logs.export import LogRecordExporter as _Base
                from opentelemetry.sdk._logs.export import LogRecordExportResult as _Result
            except ImportError:  # older SDKs
                from opentelemetry.sdk._logs.export import LogExporter as _Base  # type: ignore[no-redef]
                from opentelemetry.sdk._logs.export import LogExportResult as _Result  # type: ignore[no-redef]
            counts = self.log_records

            class CountingLogExporter(_Base):  # type: ignore[misc, valid-type]
                def export(self, batch: Any) -> Any:
                    for item in batch:
                        record = getattr(item, "log_record", item)
                        name = getattr(record, "event_name", None) or (getattr(record, "attributes", None) or {}).get(
                            "event.name") or "log"
                        counts[str(name)] += 1
                    return _Result.SUCCESS

                def shutdown(self) -> None:
                    pass

                def force_flush(self, timeout_millis: int = 30000) -> bool:
                    return True

            self.logger_provider = LoggerProvider(resource=resource)
            self.logger_provider.add_log_record_processor(BatchLogRecordProcessor(CountingLogExporter()))
            _logs.set_logger_provider(self.logger_provider)
        except Exception as exc:  # noqa: BLE001
            print(f"[worker] no SDK LoggerProvider: {exc!r}", file=sys.stderr)

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        if self.registered is not None:
            self.registered.force_flush()
        if self.logger_provider is not None:
            self.logger_provider.force_flush()

    def spans_by_name(self) -> Counter[str]:
        """Spans exported so far: by the counting exporter, or read back from the export process's file."""
        if self.spans_file is None:
            return Counter(self.span_exporter.by_name)
        lines = self.spans_file.read_text().splitlines() if self.spans_file.exists() else []
        return Counter(json.loads(line)["name"] for line in lines)

    def metric_points(self) -> dict[str, int]:
        """Number of recorded measurements per instrument (histogram counts, sum of counter points)."""
        out: dict[str, int] = {}
        data = self.metric_reader.get_metrics_data()
        for rm in getattr(data, "resource_metrics", None) or []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    total = 0
                    for point in metric.data.data_points:
                        count = getattr(point, "count", None)
                        total += int(count) if count is not None else 1
                    out[metric.name] = out.get(metric.name, 0) + total
        return out


def _instrument(variant: str, telemetry: _Telemetry, content: str, tmpdir: Path) -> dict[str, Any]:
    """Turn the variant's instrumentation on; returns facts worth printing (versions, settings)."""
    from importlib.metadata import version

    info: dict[str, Any] = {}
    if variant in ("baseline", "baseline-aa"):
        return info
    if variant == "sdk-floor":
        _sdk_floor(telemetry)
        return info
    if variant.startswith("traceai"):
        if content != "defaults":  # read by fi_evals_core's config on first use
            os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "true" if content == "on" else "false"
        from traceai_huggingface import HuggingFaceInstrumentor

        tracer_provider: Any = telemetry.tracer_provider
        meter_provider: Any = telemetry.meter_provider
        if variant in ("traceai-no-metrics", "traceai-noop-sdk"):
            from opentelemetry.metrics import NoOpMeterProvider

            meter_provider = NoOpMeterProvider()
        if variant == "traceai-noop-sdk":
            from opentelemetry.trace import NoOpTracerProvider

            tracer_provider = NoOpTracerProvider()
        sink = None
        if variant == "traceai-export-process":  # register()'s providers; the child writes the spans
            from fi_evals_core import register
            from fi_evals_core.telemetry import TelemetryConfig

            telemetry.spans_file = tmpdir / "spans.jsonl"
            registered = telemetry.registered = register(config=TelemetryConfig.from_env(
                {"TRACEAI_EXPORT_PROCESS": "1", "TRACEAI_TRACES_FILE": str(telemetry.spans_file)}),
                set_global=False, instrument=False)
            tracer_provider, meter_provider, sink = registered.tracer_provider, registered.meter_provider, registered.sink
        inst = HuggingFaceInstrumentor()
        inst.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, telemetry_sink=sink)
        info["version"] = version("traceai-huggingface")
        info["content"] = inst.runtime.config.capture_content.value
        return info
    if variant == "openllmetry":
        if content != "defaults":
            os.environ["TRACELOOP_TRACE_CONTENT"] = "true" if content == "on" else "false"
        from opentelemetry.instrumentation.transformers import TransformersInstrumentor

        TransformersInstrumentor().instrument(tracer_provider=telemetry.tracer_provider)
        info["version"] = version("opentelemetry-instrumentation-transformers")
        info["content"] = os.environ.get("TRACELOOP_TRACE_CONTENT", "true (default)")
        return info
    if variant == "openlit":
        import openlit
        from openlit._instrumentors import MODULE_NAME_MAP

        pricing = tmpdir / "openlit-pricing.json"
        pricing.write_text("{}")  # the default is a download from GitHub at init; no network here
        kwargs: dict[str, Any] = dict(
            application_name="hf-overhead-bench",
            environment="bench",
            pricing_json=str(pricing),
            # only transformers: the others would patch HTTP clients etc. that this process never uses
            disabled_instrumentors=[name for name in MODULE_NAME_MAP if name != "transformers"],
            collect_gpu_stats=False,
        )
        if content != "defaults":
            kwargs["capture_message_content"] = content == "on"
        openlit.init(**kwargs)  # reuses the SDK providers set globally above
        from openlit._config import OpenlitConfig

        info["version"] = version("openlit")
        info["content"] = str(getattr(OpenlitConfig, "capture_message_content", "?"))
        info["metrics"] = "on" if getattr(OpenlitConfig, "metrics_dict", None) else "off"
        return info
    raise SystemExit(f"unknown variant {variant!r}")


def _sdk_floor(telemetry: _Telemetry) -> None:
    """The SDK's own price for what traceai records: 20 attributes (6 at start, 14 at the end, one a
    list) on one span per generate call (plus one per pipeline call), and 3 histogram points."""
    import wrapt

    tracer = telemetry.tracer_provider.get_tracer("sdk-floor")
    meter = telemetry.meter_provider.get_meter("sdk-floor")
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
    start = {"gen_ai.operation.name": "text_completion", "gen_ai.provider.name": "huggingface",
             "gen_ai.request.model": "tiny", "gen_ai.request.max_tokens": 16, "a.bool": False, "a.int": 1}
    end = {f"model.attr{i}": f"value{i}" for i in range(7)}
    end.update({"gen_ai.usage.input_tokens": 14, "gen_ai.usage.output_tokens": 16,
                "gen_ai.response.finish_reasons": ["length"], "t1": 0.01, "t2": 0.001, "t3": 1000.0,
                "x": 1})
    metric = {"gen_ai.operation.name": "text_completion", "gen_ai.provider.name": "huggingface",
              "gen_ai.request.model": "tiny"}

    def record(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        t0 = time.perf_counter()
        span = tracer.start_span("text_completion tiny", attributes=start)
        out = wrapped(*args, **kwargs)
        span.set_attributes(end)
        span.end()
        duration.record(time.perf_counter() - t0, metric)
        tokens.record(14, {**metric, "gen_ai.token.type": "input"})
        tokens.record(16, {**metric, "gen_ai.token.type": "output"})
        return out

    def pipeline_span(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        with tracer.start_as_current_span("pipeline text-generation tiny", attributes=metric):
            return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper("transformers.generation.utils", "GenerationMixin.generate", record)
    wrapt.wrap_function_wrapper("transformers.pipelines.text_generation", "TextGenerationPipeline.__call__",
                                pipeline_span)


def _timed_calls(model_dir: Any, new_tokens: int) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """torch on one thread, the tiny model and its text-generation pipeline, and the two timed calls
    (`generate`, pipeline), each producing exactly `new_tokens` greedy tokens. Returns the calls, the
    facts printed with the table, and the ids of one `generate` call (run here, as a warm-up)."""
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    transformers.logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    enc = tok(PROMPT, return_tensors="pt")
    gen_kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    calls = {"generate": lambda: model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], **gen_kwargs),
             "pipeline": lambda: pipe(PROMPT, **gen_kwargs)}
    out = calls["generate"]()
    info = dict(torch=torch.__version__, transformers=transformers.__version__,
                otel_sdk=_dist_version("opentelemetry-sdk"), prompt_tokens=int(enc["input_ids"].shape[-1]),
                new_tokens=int(out.shape[-1] - enc["input_ids"].shape[-1]), threads=torch.get_num_threads())
    return calls, info, out


def worker_main(args: argparse.Namespace) -> int:
    send = worker_pipe()

    try:
        telemetry = _Telemetry()
        tmpdir = Path(args.worker_tmp)
        info = _instrument(args.worker, telemetry, args.content, tmpdir)
        calls, facts, _ = _timed_calls(args.model_dir, args.new_tokens)
        info.update(facts)
        telemetry.flush()
        seen: Counter[str] = telemetry.spans_by_name()
        logs_seen: Counter[str] = Counter(telemetry.log_records)
        per_mode: dict[str, Counter[str]] = {m: Counter() for m in (*MODES, "warmup")}
        per_mode_logs: dict[str, Counter[str]] = {m: Counter() for m in (*MODES, "warmup")}
        calls_done: Counter[str] = Counter()
        profiles: dict[str, Any] = {}
        profiled: Counter[str] = Counter()

        def account(bucket: str) -> None:
            nonlocal seen, logs_seen
            telemetry.flush()
            now = telemetry.spans_by_name()
            per_mode[bucket].update(now - seen)
            seen = now
            now_logs = Counter(telemetry.log_records)
            per_mode_logs[bucket].update(now_logs - logs_seen)
            logs_seen = now_logs

        finish_pending: Any = lambda: None
        if args.worker.startswith("traceai"):
            from fi_evals_core.telemetry import drain as finish_pending
        send({"ready": True, "info": info})
        for line in sys.stdin:
            msg = json.loads(line)
            cmd = msg["cmd"]
            if cmd == "warmup":
                for mode in MODES:
                    for _ in range(msg["n"]):
                        calls[mode]()
                account("warmup")
                send({"ok": True})
            elif cmd == "run":
                mode, n = msg["mode"], msg["n"]
                fn = calls[mode]
                times = [0] * n
                cpu = [0] * n
                gc.collect()
                clock = time.perf_counter_ns
                cpu_clock = time.thread_time_ns  # this thread only: the span processor's thread is excluded
                t_start, c_start = clock(), cpu_clock()
                for i in range(n):
                    t0, c0 = clock(), cpu_clock()
                    fn()
                    times[i], cpu[i] = clock() - t0, cpu_clock() - c0
                # traceai finishes spans on a background thread: the batch's time includes waiting
                # for that work, so throughput counts it (per-call times are the request path's).
                finish_pending()
                total, cpu_total = clock() - t_start, cpu_clock() - c_start
                calls_done[mode] += n
                account(mode)
                send({"times_ns": times, "total_ns": total, "cpu_ns": cpu, "cpu_total_ns": cpu_total})
            elif cmd == "profile_run":  # accumulate; the driver alternates chunks between workers
                _profile_run(profiles, calls[msg["mode"]], msg["mode"], msg["n"])
                profiled[msg["mode"]] += msg["n"]
                account("warmup")
                send({"ok": True})
            elif cmd == "profile_report":
                send(_profile_report(profiles, profiled, msg.get("top", 25)))
            elif cmd == "stats":
                account("warmup")
                send({
                    "spans": {m: dict(c) for m, c in per_mode.items()},
                    "logs": {m: dict(c) for m, c in per_mode_logs.items()},
                    "calls": dict(calls_done),
                    "metric_points": telemetry.metric_points(),
                })
            elif cmd == "quit":
                send({"bye": True})
                break
            else:
                send({"error": f"unknown command {cmd!r}"})
        try:
            telemetry.tracer_provider.shutdown()
            telemetry.meter_provider.shutdown()
        except Exception:  # noqa: BLE001
            pass
        return 0
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        send({"error": f"{type(exc).__name__}: {exc}"})
        return 1


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


SAME_PROCESS_VARIANTS = ("baseline", "baseline-aa", "traceai", "traceai-export-process")


def same_process_worker_main(args: argparse.Namespace) -> int:
    """--same-process: ONE worker process (one model, one memory layout); every "run" message names
    its variant, and traceai is switched on (with that variant's providers and sink) or off before
    the batch: the figures carry no difference between worker processes."""
    send = worker_pipe()
    try:
        from fi_evals_core.telemetry import drain
        from traceai_huggingface import HuggingFaceInstrumentor

        tmpdir = Path(args.worker_tmp)
        telemetry = _Telemetry()  # the in-process variant's providers (counting exporter)
        registered = _Telemetry.__new__(_Telemetry)  # the export-process variant's: what register() builds
        registered.logger_provider, registered.log_records = None, Counter()
        registered.tracer_provider, registered.meter_provider = telemetry.tracer_provider, telemetry.meter_provider
        info = _instrument("traceai-export-process", registered, args.content, tmpdir)
        registered.tracer_provider = registered.registered.tracer_provider
        instrumentor = HuggingFaceInstrumentor()
        instrumentor.uninstrument()
        kwargs = {"traceai": dict(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider),
                  "traceai-export-process": dict(tracer_provider=registered.registered.tracer_provider,
                                                 meter_provider=registered.registered.meter_provider,
                                                 telemetry_sink=registered.registered.sink)}
        sources = {"traceai": telemetry, "traceai-export-process": registered}

        def switch(v: str) -> None:
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
            if v in kwargs:
                instrumentor.instrument(**kwargs[v])

        calls, facts, _ = _timed_calls(args.model_dir, args.new_tokens)
        info.update(facts)
        seen = {v: src.spans_by_name() for v, src in sources.items()}
        per_mode: dict[str, dict[str, Counter[str]]] = {v: {m: Counter() for m in (*MODES, "warmup")}
                                                        for v in SAME_PROCESS_VARIANTS}
        calls_done: dict[str, Counter[str]] = {v: Counter() for v in SAME_PROCESS_VARIANTS}

        def account(v: str, bucket: str) -> None:
            if v in sources:
                sources[v].flush()
                now = sources[v].spans_by_name()
                per_mode[v][bucket].update(now - seen[v])
                seen[v] = now

        send({"ready": True, "info": info})
        for line in sys.stdin:
            msg = json.loads(line)
            cmd, v = msg["cmd"], msg.get("variant", BASELINE)
            if cmd == "warmup":
                switch(v)
                for mode in MODES:
                    for _ in range(msg["n"]):
                        calls[mode]()
                drain()
                account(v, "warmup")
                send({"ok": True})
            elif cmd == "run":
                switch(v)
                mode, n = msg["mode"], msg["n"]
                fn = calls[mode]
                times, cpu = [0] * n, [0] * n
                gc.collect()
                clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
                t_start, c_start = clock(), cpu_clock()
                for i in range(n):
                    t0, c0 = clock(), cpu_clock()
                    fn()
                    times[i], cpu[i] = clock() - t0, cpu_clock() - c0
                drain()  # what traceai's telemetry thread still has: inside the window
                total, cpu_total = clock() - t_start, cpu_clock() - c_start
                calls_done[v][mode] += n
                account(v, mode)
                send({"times_ns": times, "total_ns": total, "cpu_ns": cpu, "cpu_total_ns": cpu_total})
            elif cmd == "stats":
                send({"spans": {m: dict(c) for m, c in per_mode[v].items()}, "logs": {},
                      "calls": dict(calls_done[v]),
                      "metric_points": telemetry.metric_points() if v == "traceai" else {}})
            elif cmd == "quit":
                send({"bye": True})
                break
            else:
                send({"error": f"unknown command {cmd!r} in --same-process"})
        switch(BASELINE)
        registered.registered.shutdown()
        return 0
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        send({"error": f"{type(exc).__name__}: {exc}"})
        return 1


class _VariantOfSharedWorker:
    """One variant's view of the --same-process worker: its requests carry the variant's name."""

    def __init__(self, worker: Any, variant: str) -> None:
        self.worker = worker
        self.variant = variant
        self.info: dict[str, Any] = {}

    def request(self, msg: dict[str, Any] | None) -> dict[str, Any]:
        return self.worker.request(None if msg is None else {**msg, "variant": self.variant})

    def close(self) -> None:
        if self.variant == BASELINE:
            self.worker.close()


def _profile_run(profiles: dict[str, Any], fn: Any, mode: str, n: int) -> None:
    import cProfile

    prof = profiles.setdefault(mode, cProfile.Profile())
    gc.collect()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()


def _profile_report(profiles: dict[str, Any], profiled: Counter, top: int) -> dict[str, Any]:
    """Per mode: every function's own time per call (to diff against the baseline's profile) and the
    telemetry stack's functions by cumulative time."""
    import pstats

    report: dict[str, Any] = {}
    markers = ("traceai_huggingface", "fi_evals_core", "opentelemetry", "wrapt", "openlit")
    for mode, prof in profiles.items():
        n = profiled[mode]
        stats = pstats.Stats(prof)
        rows = []
        own: dict[str, list[float]] = {}
        for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            short = filename
            for m in (*markers, "transformers", "torch"):
                idx = filename.rfind("/" + m + "/")
                if idx >= 0:
                    short = filename[idx + 1:]
                    break
            key = f"{short}:{line}({func})" if filename != "~" else func
            own[key] = [nc / n, tt / n * 1e6]
            if any(m in filename for m in markers):
                rows.append({"where": key, "calls_per_call": nc / n, "tottime_us": tt / n * 1e6,
                             "cumtime_us": ct / n * 1e6})
        rows.sort(key=lambda r: r["cumtime_us"], reverse=True)
        total_us = sum(v[2] for v in stats.stats.values()) / n * 1e6  # type: ignore[attr-defined]
        report[mode] = {"rows": rows[:top], "total_us_per_call": total_us, "own": own}
    return report


def replay_main(args: argparse.Namespace) -> int:
    """--replay: traceai's own CPU per call, without the model's compute. `generate` and the
    pipeline are called on the tiny model with their forward replaced by a stub that returns the
    ids a real call returned (so traceai counts the same tokens), instrumented and not, alternated,
    for each sink: this process's CPU time, all threads (the telemetry worker's span and histogram
    work included), per call, minus the same loop uninstrumented. The first-token hook does not
    fire (no forward runs): its few microseconds are missing. Low noise, for the goal's per-call part."""
    from transformers.generation.utils import GenerationMixin

    from fi_evals_core import register
    from fi_evals_core.telemetry import TelemetryConfig, drain
    from traceai_huggingface import HuggingFaceInstrumentor

    model_dir = args.model_dir
    tmp = Path(tempfile.mkdtemp(prefix="hf-replay-"))
    if model_dir is None:
        from fi_evals_core.testing import tiny_models

        model_dir = tiny_models.build_llama(tmp / "tiny-llama")
    calls, _, produced = _timed_calls(model_dir, args.new_tokens)
    real_generate = GenerationMixin.generate  # what traceai wraps: the stub goes underneath it
    GenerationMixin.generate = lambda self, *a, **k: produced  # every call returns those ids
    instrumentor = HuggingFaceInstrumentor()
    instrumentor.uninstrument()
    sinks = {}
    for name, flag in (("in-process (register())", "0"), ("export process", "1")):
        telemetry = register(config=TelemetryConfig.from_env(
            {"TRACEAI_EXPORT_PROCESS": flag, "TRACEAI_TRACES_FILE": str(tmp / f"spans-{flag}.jsonl")}),
            set_global=False, instrument=False)
        sinks[name] = telemetry

    def cpu_per_call(fn: Any, n: int) -> float:
        gc.collect()
        c0 = time.process_time_ns()
        for _ in range(n):
            fn()
        drain()
        return (time.process_time_ns() - c0) / n / 1e3

    print(f"replay: {args.rounds} rounds x {args.calls} calls per mode; CPU us per call added by traceai "
          "(this process, all threads), median [min, max] of paired rounds")
    try:
        for name, telemetry in sinks.items():
            for mode, fn in calls.items():
                added = []
                for r in range(args.rounds + 1):
                    base = cpu_per_call(fn, args.calls)
                    instrumentor.instrument(tracer_provider=telemetry.tracer_provider,
                                            meter_provider=telemetry.meter_provider, telemetry_sink=telemetry.sink)
                    traced = cpu_per_call(fn, args.calls)
                    instrumentor.uninstrument()
                    telemetry.force_flush()
                    if r:  # the first is a warm-up
                        added.append(traced - base)
                print(f"  {name:<26} {mode:<9} {median(added):7.1f}  [{min(added):.1f}, {max(added):.1f}]")
    finally:
        GenerationMixin.generate = real_generate
        for telemetry in sinks.values():
            telemetry.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def build_main(args: argparse.Namespace) -> int:
    from fi_evals_core.testing import tiny_models

    builder = {"llama": tiny_models.build_llama, "gpt2": tiny_models.build_gpt2}[args.model]
    path = builder(args.build)
    print(path)
    return 0


# --------------------------------------------------------------------------------------------- driver side
class Worker(WorkerProcess):
    def __init__(self, variant: str, python: str, args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> None:
        wtmp = tmp / variant
        wtmp.mkdir(exist_ok=True)
        cmd = [
            python, "-u", str(Path(__file__).resolve()), "--_worker", variant,
            "--_model-dir", str(args.model_dir), "--_worker-tmp", str(wtmp),
            "--new-tokens", str(args.new_tokens), "--content", args.content,
        ]
        super().__init__(variant, cmd, env, tmp / f"worker-{variant}.log")


def driver_main(args: argparse.Namespace) -> int:
    t_begin = time.monotonic()
    python = args.python or (str(DEFAULT_BENCH_VENV_PYTHON) if DEFAULT_BENCH_VENV_PYTHON.exists() else sys.executable)
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONHASHSEED": "0",
        "PYTHONWARNINGS": "ignore", "TRACELOOP_TELEMETRY": "false",
        # never let any library start its own exporter to the network
        "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
    })
    for key in ("OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
                "TRACELOOP_TRACE_CONTENT"):
        env.pop(key, None)

    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in wanted:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if BASELINE not in wanted:
        wanted.insert(0, BASELINE)
    variants = []
    for v in wanted:
        need = VARIANTS[v]["needs"]
        if need and not has_module(python, need, env):
            print(f"note: skipping {v}: {need} is not importable by {python}"
                  + (" (run benchmarks/setup_bench_env.sh)" if v != PROJECT else ""))
            continue
        variants.append(v)

    tmp = Path(tempfile.mkdtemp(prefix="hf-overhead-"))
    print(f"workers: {python}   (logs in {tmp})")
    try:
        if args.model_dir is None:
            args.model_dir = tmp / f"tiny-{args.model}"
            built = subprocess.run([python, str(Path(__file__).resolve()), "--_build", str(args.model_dir),
                                    "--model", args.model], env=env, capture_output=True, text=True)
            if built.returncode != 0:
                print(built.stdout, built.stderr, file=sys.stderr)
                raise SystemExit("could not build the tiny model")

        workers: dict[str, Any] = {}
        if args.same_process:
            unknown = [v for v in variants if v not in SAME_PROCESS_VARIANTS]
            if unknown:
                raise SystemExit(f"--same-process runs {', '.join(SAME_PROCESS_VARIANTS)}; not {', '.join(unknown)}")
            shared = Worker("same-process", python, args, tmp, env)
            ready = shared.request(None)["info"]
            for v in variants:
                workers[v] = _VariantOfSharedWorker(shared, v)
                workers[v].info = dict(ready) if v.startswith("traceai") else {
                    k: ready[k] for k in ready if k not in ("version", "content")}
        for v in (() if args.same_process else variants):  # all at once: imports overlap, nothing is timed yet
            workers[v] = Worker(v, python, args, tmp, env)
        for v in ([] if args.same_process else list(workers)):
            try:
                workers[v].info = workers[v].request(None)["info"]
            except Exception as exc:  # noqa: BLE001
                print(f"note: dropping {v}: {exc}")
                workers.pop(v).close()
        if BASELINE not in workers:
            raise SystemExit(f"the baseline worker failed to start under {python}: it needs torch, transformers and "
                             "opentelemetry-sdk (bash benchmarks/setup_bench_env.sh, or --python)")
        variants = list(workers)
        base_info = workers[BASELINE].info
        print(f"model: tiny {args.model}, prompt {base_info['prompt_tokens']} tokens, "
              f"{base_info['new_tokens']} new tokens/call (asked {args.new_tokens}), greedy; "
              f"torch {base_info['torch']} ({base_info['threads']} thread), transformers {base_info['transformers']}, "
              f"opentelemetry-sdk {base_info['otel_sdk']}")
        for v in variants:
            extra = {k: workers[v].info.get(k) for k in ("version", "content", "metrics") if k in workers[v].info}
            if extra:
                print(f"  {v:<18} " + ", ".join(f"{k} {val}" for k, val in extra.items()))
        print(f"{len(variants)} workers x {args.rounds} rounds x {args.calls} calls x {len(MODES)} modes "
              f"(+{args.warmup} warm-up calls/mode)")

        for v in variants:
            workers[v].request({"cmd": "warmup", "n": args.warmup})

        # samples[v][mode] -> list per round of per-call times (ns)
        samples: dict[str, dict[str, list[list[int]]]] = {v: {m: [] for m in MODES} for v in variants}
        totals: dict[str, dict[str, list[int]]] = {v: {m: [] for m in MODES} for v in variants}
        cpu_samples: dict[str, dict[str, list[list[int]]]] = {v: {m: [] for m in MODES} for v in variants}
        cpu_totals: dict[str, dict[str, list[int]]] = {v: {m: [] for m in MODES} for v in variants}
        for r in range(args.rounds):
            order = round_order(variants, r)
            for mode in MODES:
                for v in order:
                    reply = workers[v].request({"cmd": "run", "mode": mode, "n": args.calls})
                    samples[v][mode].append(reply["times_ns"])
                    totals[v][mode].append(reply["total_ns"])
                    cpu_samples[v][mode].append(reply["cpu_ns"])
                    cpu_totals[v][mode].append(reply["cpu_total_ns"])
            elapsed = time.monotonic() - t_begin
            print(f"  round {r + 1}/{args.rounds} done ({elapsed:.0f}s)", flush=True)

        stats = {v: workers[v].request({"cmd": "stats"}) for v in variants}

        rows = _summarise(variants, samples, totals)
        cpu_rows = _summarise(variants, cpu_samples, cpu_totals)
        _print_table(variants, rows, args, "wall-clock time per call")
        _print_table(variants, cpu_rows, args, "CPU time of the calling thread per call (the same calls; "
                     "blind to time spent descheduled by other processes, and to the export thread)")
        print("(thrpt = variant calls/s / baseline calls/s; a peer that does not patch a mode shows only noise there)")
        problems = _print_recorded(variants, stats, args)

        project = rows.get(PROJECT)
        over = project is not None and any(
            project[m]["added_us"] > GOAL_US or project[m]["ratio"] < GOAL_RATIO for m in MODES)
        if PROJECT in workers and not args.same_process and (
                args.profile == "always" or (args.profile == "auto" and over)):
            print(f"\nprofile of {PROJECT} ({args.profile_calls} calls per mode, cProfile; cProfile inflates small "
                  f"functions, read the ranking more than the absolute numbers):")
            chunk = max(1, args.profile_calls // 10)
            done = 0
            while done < args.profile_calls:  # alternate chunks so that drift hits both profiles alike
                n = min(chunk, args.profile_calls - done)
                for mode in MODES:
                    for v in (BASELINE, PROJECT) if done // chunk % 2 == 0 else (PROJECT, BASELINE):
                        workers[v].request({"cmd": "profile_run", "mode": mode, "n": n})
                done += n
            base = workers[BASELINE].request({"cmd": "profile_report"})
            report = workers[PROJECT].request({"cmd": "profile_report"})
            _print_profile(report, base)

        for w in workers.values():
            w.close()

        if args.json:
            Path(args.json).write_text(json.dumps({
                "args": {k: str(v) for k, v in vars(args).items()},
                "info": {v: workers[v].info for v in variants},
                "rows": rows, "cpu_rows": cpu_rows, "recorded": stats,
                "samples_ns": samples, "cpu_samples_ns": cpu_samples,
            }, indent=1))
            print(f"raw samples written to {args.json}")

        print(f"\ntotal wall time {time.monotonic() - t_begin:.0f}s")
        if project is not None:
            g, p = project["generate"], project["pipeline"]
            verdict = "within" if not over else "OVER"
            print(f"goal (<= {GOAL_US:.0f} us/call and <= {100 * (1 - GOAL_RATIO):.0f}% throughput loss): "
                  f"{verdict} — traceai adds {g['added_us']:+.0f} us/generate, {p['added_us']:+.0f} us/pipeline call"
                  + (f" (A/A noise {rows['baseline-aa']['generate']['added_us']:+.0f} / "
                     f"{rows['baseline-aa']['pipeline']['added_us']:+.0f} us)" if "baseline-aa" in rows else "")
                  + f"; CPU time: {cpu_rows[PROJECT]['generate']['added_us']:+.0f} / "
                    f"{cpu_rows[PROJECT]['pipeline']['added_us']:+.0f} us")
            if problems:
                print("WARNING: " + "; ".join(problems))
            print(f"traceai throughput ratio (instrumented/baseline): generate {g['ratio']:.4f}, "
                  f"pipeline {p['ratio']:.4f}")
        elif problems:
            print("WARNING: " + "; ".join(problems))
        return 1 if problems and any(p.startswith(PROJECT) for p in problems) else 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _summarise(variants: list[str], samples: dict, totals: dict) -> dict[str, dict[str, dict[str, float]]]:
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for v in variants:
        rows[v] = {}
        for mode in MODES:
            rounds = samples[v][mode]
            base_rounds = samples[BASELINE][mode]
            all_calls = [t for rnd in rounds for t in rnd]
            diffs = [(median(a) - median(b)) / 1e3 for a, b in zip(rounds, base_rounds)]
            ratios = [b / a for a, b in zip(totals[v][mode], totals[BASELINE][mode])]
            q1, q3 = quartiles(diffs)
            rows[v][mode] = {
                "p50_ms": median(all_calls) / 1e6,
                "mean_ms": statistics.fmean(all_calls) / 1e6,
                "added_us": median(diffs),
                "added_us_q1": q1,
                "added_us_q3": q3,
                "ratio": median(ratios),
            }
    return rows


def _print_table(variants: list[str], rows: dict, args: argparse.Namespace, what: str) -> None:
    print()
    print(f"{what}; {args.rounds} rounds x {args.calls} calls, {args.new_tokens} new tokens/call "
          f"(+us and thrpt: median over rounds, paired with the same round's baseline; [q1, q3] of +us over rounds)")
    head = f"{'variant':<34}"
    for mode in MODES:
        head += f" | {mode + ' p50 ms':>16} {'+us/call':>9} {'[q1, q3]':>15} {'thrpt':>7}"
    print(head)
    print("-" * len(head))
    for v in variants:
        line = f"{VARIANTS[v]['label']:<34}"
        for mode in MODES:
            c = rows[v][mode]
            spread = f"[{fmt(c['added_us_q1'], '.0f')}, {fmt(c['added_us_q3'], '.0f')}]"
            line += f" | {c['p50_ms']:>16.3f} {fmt(c['added_us'], '+9.0f')} {spread:>15} {c['ratio']:>7.4f}"
        print(line)


def _print_recorded(variants: list[str], stats: dict, args: argparse.Namespace) -> list[str]:
    print("\nrecorded telemetry per timed mode (spans exported / calls; expected per call in parentheses):")
    problems = []
    for v in variants:
        st = stats[v]
        parts = []
        for mode in MODES:
            n_calls = st["calls"].get(mode, 0)
            spans = st["spans"].get(mode, {})
            total = sum(spans.values())
            expected = VARIANTS[v]["spans"][mode]
            per_call = total / n_calls if n_calls else 0.0
            names = ", ".join(f"{name.replace(str(args.model_dir), '<model>')!r} x{count}"
                              for name, count in sorted(spans.items()))
            parts.append(f"{mode}: {total} spans / {n_calls} calls = {per_call:.2f} (exp {expected})"
                         + (f" [{names}]" if names else ""))
            if expected and per_call < expected:
                problems.append(f"{v} recorded {per_call:.2f} spans per {mode} call, expected {expected}")
            if not expected and total:
                parts[-1] += " (unexpected spans)"
        print(f"  {v:<18} " + ("\n" + " " * 21).join(parts))
        logs = {m: sum(c.values()) for m, c in st["logs"].items() if c}
        metric_points = st["metric_points"]
        if logs or metric_points:
            extras = []
            if metric_points:
                extras.append("metric points: " + ", ".join(f"{k}={n}" for k, n in sorted(metric_points.items())))
            if logs:
                extras.append("log records/events: " + ", ".join(f"{m}={n}" for m, n in logs.items()))
            print(" " * 21 + "; ".join(extras))
    return problems


def _print_profile(report: dict[str, Any], base: dict[str, Any] | None, top: int = 20) -> None:
    for mode in MODES:
        rep = report[mode]
        line = f"\n  {mode}: profiled {rep['total_us_per_call']:.0f} us/call"
        if base is not None:
            line += (f" vs baseline {base[mode]['total_us_per_call']:.0f} us/call under the same profiler "
                     f"(+{rep['total_us_per_call'] - base[mode]['total_us_per_call']:.0f} us)")
        print(line)
        if base is not None:
            b = base[mode]["own"]
            deltas = []
            for key, (nc, tt) in rep["own"].items():
                bnc, btt = b.get(key, (0.0, 0.0))
                deltas.append((tt - btt, nc - bnc, key, key not in b))
            deltas.sort(reverse=True)
            print(f"    own time added per {mode} call vs baseline, top {top} (all code, cProfile):")
            print(f"    {'+own us':>8} {'+calls':>7}  function")
            for dt, dn, key, new in deltas[:top]:
                print(f"    {dt:>8.1f} {dn:>+7.1f}  {key}{'  [new]' if new else ''}")
        print(f"    telemetry-stack functions by cumulative time per {mode} call:")
        print(f"    {'cum us':>8} {'own us':>8} {'calls':>6}  function")
        for row in rep["rows"][:top]:
            print(f"    {row['cumtime_us']:>8.1f} {row['tottime_us']:>8.1f} {row['calls_per_call']:>6.1f}  {row['where']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=30, help="timed calls per worker, mode and round (default 30)")
    p.add_argument("--rounds", type=int, default=14, help="rounds; workers alternate within each (default 14)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per call (default 16)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up calls per worker and mode (default 10)")
    p.add_argument("--model", choices=("llama", "gpt2"), default="llama", help="tiny model shape (default llama)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated list from {','.join(VARIANTS)} (default: {','.join(DEFAULT_VARIANTS)}; "
                        "baseline is always added; the traceai-* ablations only run when named)")
    p.add_argument("--python", help="interpreter for the workers (default: .venv-bench/bin/python if present)")
    p.add_argument("--content", choices=("defaults", "off", "on"), default="defaults",
                   help="prompt/completion capture: each library's default (traceai: off; OpenLLMetry, OpenLIT: on), "
                        "or forced off/on for all")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help="cProfile traceai's calls afterwards: auto = only when it misses the goal")
    p.add_argument("--profile-calls", type=int, default=200)
    p.add_argument("--json", help="write rows, span counts and raw per-call samples to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (model, worker logs)")
    p.add_argument("--model-dir", type=Path, default=None, help="use this model directory instead of building one")
    # internal: worker / model-builder entry points
    p.add_argument("--replay", action="store_true",
                   help="traceai's own CPU per call with the model's compute stubbed out, in this process, "
                        "in-process and export-process sinks (low noise; see replay_main)")
    p.add_argument("--same-process", action="store_true",
                   help="one worker process for the variants baseline, baseline-aa, traceai and "
                        "traceai-export-process, switched batch by batch (no difference between processes' "
                        "memory layouts in the figures)")
    p.add_argument("--_worker", dest="worker", help=argparse.SUPPRESS)
    p.add_argument("--_model-dir", dest="worker_model_dir", help=argparse.SUPPRESS)
    p.add_argument("--_worker-tmp", dest="worker_tmp", help=argparse.SUPPRESS)
    p.add_argument("--_build", dest="build", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.calls < 1 or args.rounds < 1:
        p.error("--calls and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build:
        return build_main(args)
    if args.replay:
        return replay_main(args)
    if args.worker:
        args.model_dir = args.worker_model_dir
        return same_process_worker_main(args) if args.worker == "same-process" else worker_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
