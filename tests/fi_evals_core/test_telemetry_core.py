"""The shared telemetry core: configuration, JSONL default, request spans, GPU seam, streams, patching."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fi_evals_core.telemetry import (
    ConfigError,
    ContentCapture,
    DeviceMemory,
    ObservedAsyncStream,
    ObservedStream,
    Patcher,
    TelemetryConfig,
    TelemetryRuntime,
    drain,
    get_worker,
    strip_credentials,
)
from fi_evals_core.telemetry import attributes as A
from fi_evals_core.telemetry.gpu import TorchNvmlSource

PROGRAMS = Path(__file__).resolve().parent / "programs"


# -- configuration -------------------------------------------------------------------------

def test_defaults_need_no_server():
    config = TelemetryConfig.from_env({})
    assert config.traces_exporter == "jsonl"
    assert config.metrics_exporter == "none"
    assert config.capture_content is ContentCapture.NO_CONTENT
    assert config.traces_file == Path("traceai-traces.jsonl")


def test_per_signal_headers_go_to_their_signal_only():
    """OTEL_EXPORTER_OTLP_TRACES_HEADERS / _METRICS_HEADERS add to (and override) the common ones,
    each on its own signal's requests (a metrics backend's key never goes to the traces one): read
    on the wire by a real HTTP server taking OTLP/HTTP."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from fi_evals_core import register

    seen: dict[str, dict[str, str]] = {}

    class Otlp(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            seen[self.path] = {k.lower(): v for k, v in self.headers.items()}
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Otlp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = TelemetryConfig.from_env({
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-team=ml,x-key=common",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-key=traces-key",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "x-key=metrics-key,x-metrics=1",
        })
        telemetry = register(config=config, set_global=False, instrument=False)
        try:
            telemetry.tracer_provider.get_tracer("app").start_span("one").end()
            assert telemetry.force_flush()
        finally:
            telemetry.shutdown()
    finally:
        server.shutdown()
    traces, metrics = seen["/v1/traces"], seen["/v1/metrics"]
    assert traces["x-team"] == metrics["x-team"] == "ml"
    assert traces["x-key"] == "traces-key" and "x-metrics" not in traces
    assert metrics["x-key"] == "metrics-key" and metrics["x-metrics"] == "1"


def test_endpoint_selects_otlp_and_derives_http_signal_paths():
    config = TelemetryConfig.from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,x-team=ml",
        "OTEL_SERVICE_NAME": "svc",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    })
    assert config.traces_exporter == "otlp" and config.metrics_exporter == "otlp"
    assert config.otlp_traces_endpoint == "http://127.0.0.1:4318/v1/traces"
    assert config.otlp_metrics_endpoint == "http://127.0.0.1:4318/v1/metrics"
    assert config.otlp_headers == {"authorization": "Bearer abc", "x-team": "ml"}
    assert config.otlp_metrics_headers == config.otlp_headers
    assert "Bearer" not in repr(config)  # credentials stay out of reprs and logs
    assert config.service_name == "svc"
    assert config.sampler_arg == 0.25


@pytest.mark.parametrize(
    "env, variable, accepted",
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc, http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER", "traceidratio"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
         "OTEL_TRACES_SAMPLER_ARG", "<= 1.0"),
        ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "yes"},
         "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_AND_EVENT"),
        ({"TRACEAI_MAX_CONTENT_LENGTH": "-3"}, "TRACEAI_MAX_CONTENT_LENGTH", "integer >= 1"),
        ({"TRACEAI_GPU_POLL_INTERVAL": "fast"}, "TRACEAI_GPU_POLL_INTERVAL", "number"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS", "key=value"),
    ],
)
def test_bad_values_name_the_variable_and_what_it_accepts(env, variable, accepted):
    with pytest.raises(ConfigError) as err:
        TelemetryConfig.from_env(env)
    assert err.value.variable == variable
    assert variable in str(err.value) and accepted in str(err.value)


def test_header_values_never_echoed_in_errors():
    with pytest.raises(ConfigError) as err:
        TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_HEADERS": "Bearer-secret-token"})
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(
    "raw, mode",
    [("true", ContentCapture.SPAN_ONLY), ("FALSE", ContentCapture.NO_CONTENT),
     ("span_and_event", ContentCapture.SPAN_AND_EVENT), ("EVENT_ONLY", ContentCapture.EVENT_ONLY),
     ("NO_CONTENT", ContentCapture.NO_CONTENT)],
)
def test_content_capture_values(raw, mode):
    env = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": raw}
    assert TelemetryConfig.from_env(env).capture_content is mode


def test_strip_credentials():
    assert strip_credentials("https://user:hf_secret@host:8443/path?token=x") == "https://host:8443/path"


# -- register() and the JSONL default ----------------------------------------------------------

def test_register_writes_jsonl_by_default_and_instruments_installed_engines(tmp_path, model_dirs):
    """A fresh process, configured only by the environment, as a user would run it."""
    traces = tmp_path / "spans.jsonl"
    env = {"PATH": "/usr/bin:/bin", "TRACEAI_TRACES_FILE": str(traces), "OTEL_SERVICE_NAME": "jsonl-test",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(PROGRAMS / "register_and_generate.py"),
                           str(model_dirs["gpt2"])], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"DEST {traces}" in proc.stdout
    records = [json.loads(line) for line in traces.read_text().splitlines()]
    (record,) = [r for r in records if r["scope"]["name"] == "traceai_huggingface"]
    assert record["attributes"][A.USAGE_OUTPUT_TOKENS] == 3
    prompt_tokens = int(proc.stdout.split("PROMPT_TOKENS ")[1].split()[0])
    assert record["attributes"][A.USAGE_INPUT_TOKENS] == prompt_tokens
    assert record["resource"]["service.name"] == "jsonl-test"
    assert len(record["trace_id"]) == 32 and record["end_time_unix_nano"] > record["start_time_unix_nano"]


@pytest.mark.parametrize("export_process", ["0", "1"])
@pytest.mark.parametrize("inline_rate", ["0", "1"])
def test_a_process_that_exits_right_after_its_last_request_loses_nothing(tmp_path, model_dirs, nli_checkpoint,
                                                                          inline_rate, export_process):
    """No shutdown() call: the request that ended just before exit, and its inline evaluation, are
    still exported. (The SDK providers register their exit-time shutdown when created, before any
    request: the telemetry worker's and the inline evaluator's exit hooks must run before it.) The same
    with TRACEAI_EXPORT_PROCESS=1, where the evaluation span, too, leaves through the export process."""
    traces = tmp_path / "spans.jsonl"
    env = {"PATH": "/usr/bin:/bin", "TRACEAI_TRACES_FILE": str(traces), "HF_HUB_OFFLINE": "1",
           "FI_EVALS_SAMPLE_RATE": inline_rate, "FI_EVALS_MODEL": nli_checkpoint("bert"), "FI_EVALS_DEVICE": "cpu",
           "TRACEAI_EXPORT_PROCESS": export_process}
    proc = subprocess.run([sys.executable, str(PROGRAMS / "exit_after_last_request.py"),
                           str(model_dirs["gpt2"])], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GENERATED" in proc.stdout
    records = [json.loads(line) for line in traces.read_text().splitlines()]
    hf_names = sorted(r["name"].split()[0] for r in records if r["scope"]["name"] == "traceai_huggingface")
    assert hf_names == ["pipeline", "text_completion"], [r["name"] for r in records]  # both, none lost
    generation = [r for r in records if r["scope"]["name"] == "traceai_huggingface"
                  and r["attributes"].get(A.USAGE_OUTPUT_TOKENS) == 3]
    assert len(generation) == 1, [r["name"] for r in records]
    evaluations = [r for r in records if r["name"].startswith("evaluation ")]
    assert len(evaluations) == int(inline_rate), [r["name"] for r in records]
    assert all(e["trace_id"] == generation[0]["trace_id"] for e in evaluations)


def test_bad_environment_fails_register_with_a_clear_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}
    proc = subprocess.run([sys.executable, str(PROGRAMS / "register_from_environment.py")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='carrier-pigeon' is not valid" in proc.stderr


# -- request spans -------------------------------------------------------------------------------

@pytest.fixture
def runtime_and_spans():
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    runtime = TelemetryRuntime("test", "0", tracer_provider=tracer_provider,
                               meter_provider=MeterProvider(metric_readers=[reader]), config=TelemetryConfig())
    return runtime, exporter, reader


def test_request_span_ends_once_and_leaves_unknown_counts_out(runtime_and_spans):
    runtime, exporter, reader = runtime_and_spans
    request = runtime.start("chat m", {A.OPERATION_NAME: "chat", A.PROVIDER_NAME: "p", A.REQUEST_MODEL: "m"})
    request.set_usage(output_tokens=None, input_tokens=None)
    request.end(RuntimeError("boom"))
    request.end()
    assert drain(10)
    (span,) = exporter.get_finished_spans()
    assert A.USAGE_INPUT_TOKENS not in span.attributes and A.USAGE_OUTPUT_TOKENS not in span.attributes
    assert span.attributes[A.ERROR_TYPE] == "RuntimeError"
    (point,) = [p for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics for p in m.data.data_points]
    assert point.count == 1 and point.attributes[A.ERROR_TYPE] == "RuntimeError"


class FakeGpu:
    """A GPU memory source standing in for torch.cuda + NVML (no GPU on this machine)."""

    def __init__(self):
        self.resets = 0
        self.allocated_bytes = 1_000

    def allocated(self, index):
        return self.allocated_bytes

    def reserved(self, index):
        return 4_000

    def peak(self, index):
        return 3_000

    def reset_peak(self, index):
        self.resets += 1

    def device_memory(self, index):
        return DeviceMemory(name="Fake H100", used=50 * 2**30, total=80 * 2**30)

    def allocator_counters(self, index):
        return {"num_alloc_retries": self.retries, "num_ooms": self.ooms}

    retries = ooms = 0


def test_gpu_attributes_from_the_memory_source(runtime_and_spans):
    runtime, exporter, _ = runtime_and_spans
    fake = FakeGpu()
    runtime._gpu_source = fake
    first = runtime.start("a", {A.OPERATION_NAME: "chat"}, gpu_index=0)
    second = runtime.start("b", {A.OPERATION_NAME: "chat"}, gpu_index=0)  # overlaps: no second reset
    gate = threading.Event()
    get_worker().submit(lambda: gate.wait(30))  # the worker is held: spans finish only after the gate opens
    first.end()
    fake.allocated_bytes = 2_000
    second.end()
    fake.allocated_bytes = 9_999  # after the end instant: must not show
    assert exporter.get_finished_spans() == ()
    gate.set()
    assert drain(10)
    assert fake.resets == 1
    a, b = exporter.get_finished_spans()
    assert a.attributes[A.GPU_TORCH_ALLOCATED] == 1_000
    assert b.attributes[A.GPU_TORCH_ALLOCATED] == 2_000
    assert a.attributes[A.GPU_TORCH_PEAK] == 3_000 and a.attributes[A.GPU_TORCH_RESERVED] == 4_000
    assert a.attributes[A.GPU_NAME] == "Fake H100" and a.attributes[A.GPU_MEMORY_TOTAL] == 80 * 2**30
    third = runtime.start("c", {A.OPERATION_NAME: "chat"}, gpu_index=0)  # device idle again: reset
    third.end()
    assert drain(10)
    assert fake.resets == 2


def test_real_nvml_source_without_gpu_gives_nothing_and_no_error():
    import pynvml  # nvidia-ml-py, installed by the test environment
    with pytest.raises(pynvml.NVMLError):
        pynvml.nvmlInit()  # really no GPU / driver here
    source = TorchNvmlSource(poll_interval_s=0.05)
    assert source.device_memory(0) is None
    assert source.device_memory(0) is None


# -- streams ------------------------------------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.chunks, self.ends = [], []

    def on_chunk(self, chunk):
        self.chunks.append(chunk)

    def on_end(self, error, completed):
        self.ends.append((error, completed))


def test_stream_exhausted_closed_broken_and_dropped():
    done = Recorder()
    assert list(ObservedStream(iter([1, 2, 3]), done)) == [1, 2, 3]
    assert done.chunks == [1, 2, 3] and done.ends == [(None, True)]

    closed = Recorder()
    stream = ObservedStream((i for i in range(5)), closed)
    next(stream)
    stream.close()
    stream.close()
    assert closed.ends == [(None, False)]

    broken = Recorder()
    for _ in ObservedStream((i for i in range(5)), broken):
        break
    gc.collect()
    assert broken.ends == [(None, False)]

    never = Recorder()
    ObservedStream((i for i in range(5)), never)
    gc.collect()
    assert never.ends == [(None, False)]

    def failing():
        yield 1
        raise KeyError("x")

    failed = Recorder()
    with pytest.raises(KeyError):
        list(ObservedStream(failing(), failed))
    assert isinstance(failed.ends[0][0], KeyError) and len(failed.ends) == 1


def test_async_stream_cancelled_and_aclosed():
    async def items():
        for i in range(100):
            yield i

    async def endless(gate: asyncio.Event):
        yield 0
        await gate.wait()  # never opened: the consumer is cancelled while the stream waits here
        yield 1

    async def consume(stream, started: asyncio.Event):
        async for _ in stream:
            started.set()

    async def main():
        cancelled = Recorder()
        started = asyncio.Event()
        task = asyncio.create_task(consume(ObservedAsyncStream(endless(asyncio.Event()), cancelled), started))
        await started.wait()  # the first item arrived; the stream cannot end before the cancellation
        assert cancelled.ends == []
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cancelled.chunks == [0] and len(cancelled.ends) == 1
        assert isinstance(cancelled.ends[0][0], asyncio.CancelledError)

        closed = Recorder()
        stream = ObservedAsyncStream(items(), closed)
        await stream.__anext__()
        await stream.aclose()
        assert closed.ends == [(None, False)]

        done = Recorder()
        assert [x async for x in ObservedAsyncStream(items(), done)][-1] == 99
        assert done.ends == [(None, True)]

    asyncio.run(main())


# -- patching ------------------------------------------------------------------------------------------

def test_missing_target_is_logged_once_and_the_module_left_alone(caplog):
    import json as target_module

    before = target_module.dumps
    patcher = Patcher("test-owner")
    patcher.add("json", "no_such_function", lambda w, i, a, k: w(*a, **k))
    patcher.add("json", "dumps", lambda w, i, a, k: "patched")
    with caplog.at_level(logging.WARNING):
        patcher.apply()
    try:
        assert patcher.missing == ["json.no_such_function"]
        assert "json.no_such_function not found" in caplog.text
        assert target_module.dumps({}) == "patched"
    finally:
        patcher.remove()
    assert target_module.dumps is before


def test_patching_waits_for_the_import(monkeypatch):
    monkeypatch.syspath_prepend(str(PROGRAMS))  # programs/late_module.py
    patcher = Patcher("test-owner")
    patcher.add("late_module", "f", lambda w, i, a, k: w(*a, **k) + 41)
    patcher.apply()
    try:
        assert "late_module" not in sys.modules
        import late_module

        assert late_module.f() == 42
    finally:
        patcher.remove()
        sys.modules.pop("late_module", None)
    assert late_module.f() == 1


def test_methods_are_wrapped_with_the_callers_view_unchanged(monkeypatch):
    """Sync methods get a plain function (cheaper than wrapt's proxies on hot paths), async ones
    wrapt: either way the wrapper sees the bound method, the instance, args and kwargs; name,
    signature and coroutine-ness are kept; remove() restores the very same function objects."""
    import inspect

    from fi_evals_core.telemetry.patching import is_patched

    monkeypatch.syspath_prepend(str(PROGRAMS))  # programs/hooked_module.py
    import hooked_module

    originals = {name: vars(hooked_module.Engine)[name] for name in ("step", "add")}
    helper = hooked_module.helper
    seen = []

    def spy(wrapped, instance, args, kwargs):
        seen.append((getattr(wrapped, "__name__", None), type(instance).__name__, args, kwargs))
        return wrapped(*args, **kwargs)

    async def async_spy(wrapped, instance, args, kwargs):
        seen.append(("async", type(instance).__name__, args, kwargs))
        return await wrapped(*args, **kwargs)

    patcher = Patcher("test-owner")
    patcher.add("hooked_module", "Engine.step", spy)
    patcher.add("hooked_module", "Engine.add", async_spy)
    patcher.add("hooked_module", "helper", spy)
    patcher.apply()
    try:
        engine = hooked_module.Engine()
        assert engine.step([1, 2], scale=3) == [3, 6]
        assert asyncio.run(engine.add(1)) == 2
        assert hooked_module.helper(5) == 10
        assert seen == [("step", "Engine", ([1, 2],), {"scale": 3}), ("async", "Engine", (1,), {}),
                        ("helper", "NoneType", (5,), {})]
        step = vars(hooked_module.Engine)["step"]
        assert inspect.isfunction(step) and step.__name__ == "step" and step.__doc__ == "One step."
        assert str(inspect.signature(hooked_module.Engine.step)) == "(self, batch, *, scale=1)"
        assert inspect.iscoroutinefunction(hooked_module.Engine.add)
        assert all(is_patched(hooked_module.Engine, name) for name in ("step", "add"))
        assert is_patched(hooked_module, "helper")
    finally:
        patcher.remove()
        sys.modules.pop("hooked_module", None)
    assert {name: vars(hooked_module.Engine)[name] for name in ("step", "add")} == originals
    assert hooked_module.helper is helper
    assert not is_patched(hooked_module.Engine, "step") and not is_patched(hooked_module.Engine, "add")


def test_zero_code_with_opentelemetry_instrument(tmp_path, model_dirs):
    """`opentelemetry-instrument` finds the instrumentor through its entry point: no code change."""
    bindir = Path(sys.executable).parent
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none", "HF_HUB_OFFLINE": "1", "OTEL_SERVICE_NAME": "zero-code"}
    proc = subprocess.run([str(bindir / "opentelemetry-instrument"), sys.executable,
                           str(PROGRAMS / "zero_code_app.py"), str(model_dirs["gpt2"])],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"gen_ai.usage.output_tokens": 4' in proc.stdout
    assert '"service.name": "zero-code"' in proc.stdout


@pytest.mark.parametrize("sampler, arg, expected", [("always_off", None, 0), ("traceidratio", "1.0", 3),
                                                     ("parentbased_traceidratio", "0", 0)])
def test_sampler_from_the_environment(tmp_path, gpt2, sampler, arg, expected):
    from fi_evals_core import register

    env = {"TRACEAI_TRACES_FILE": str(tmp_path / "s.jsonl"), "OTEL_TRACES_SAMPLER": sampler}
    if arg is not None:
        env["OTEL_TRACES_SAMPLER_ARG"] = arg
    telemetry = register(config=TelemetryConfig.from_env(env), set_global=False)
    model, tok = gpt2
    enc = tok("sampled?", return_tensors="pt")
    for _ in range(3):
        model.generate(**enc, max_new_tokens=2)
    telemetry.shutdown()
    path = tmp_path / "s.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    assert len(lines) == expected


def test_provider_force_flush_includes_requests_that_just_ended(gpt2):
    """A user's own provider: its force_flush() must not miss a span still queued on the worker."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from traceai_huggingface import HuggingFaceInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    instrumentor = HuggingFaceInstrumentor()
    instrumentor.instrument(tracer_provider=provider, meter_provider=MeterProvider(), config=TelemetryConfig())
    try:
        flushing = threading.Event()
        hooked_flush = provider.force_flush  # as instrument() left it: it finishes what is queued first

        def force_flush(timeout_millis: int = 30_000) -> bool:
            flushing.set()
            return hooked_flush(timeout_millis)

        provider.force_flush = force_flush
        # The worker is held until the app's force_flush() has begun: the span is still queued then.
        get_worker().submit(lambda: flushing.wait(30))
        model, tok = gpt2
        model.generate(**tok("flush me", return_tensors="pt"), max_new_tokens=2)
        assert exporter.get_finished_spans() == ()
        assert provider.force_flush(10_000)
        assert [s.name.split()[0] for s in exporter.get_finished_spans()] == ["text_completion"]
    finally:
        instrumentor.uninstrument()


def test_gpu_memory_gauges_read_the_source_at_collection_time():
    from fi_evals_core.telemetry.gpu import register_gpu_memory_gauges

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("gpu-test")
    assert register_gpu_memory_gauges(meter) is False  # no GPU here: nothing registered
    fake = FakeGpu()
    assert register_gpu_memory_gauges(meter, fake, device_count=2) is True
    fake.allocated_bytes = 12_345
    values = {(m.name, p.attributes[A.GPU_INDEX]): p.value
              for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics for p in m.data.data_points}
    assert values[(A.GPU_TORCH_ALLOCATED, 0)] == 12_345 and values[(A.GPU_TORCH_ALLOCATED, 1)] == 12_345
    assert values[(A.GPU_TORCH_RESERVED, 1)] == 4_000
    # allocator health: what the allocator holds that no tensor uses, its retries and OOMs
    fake.retries, fake.ooms = 3, 1
    values = {(m.name, p.attributes[A.GPU_INDEX]): p.value
              for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics for p in m.data.data_points}
    assert values[(A.GPU_TORCH_FRAGMENTATION, 0)] == 0  # allocated above reserved: never negative
    fake.allocated_bytes = 1_500
    values = {(m.name, p.attributes[A.GPU_INDEX]): p.value
              for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics for p in m.data.data_points}
    assert values[(A.GPU_TORCH_FRAGMENTATION, 1)] == 2_500
    assert values[(A.GPU_TORCH_ALLOC_RETRIES, 0)] == 3 and values[(A.GPU_TORCH_OOMS, 1)] == 1


def test_an_out_of_memory_request_ends_with_the_allocators_figures(runtime_and_spans, monkeypatch):
    """The OOM story on a span: error.type and, at that instant, what the allocator held, how much of
    it was fragmentation, its retries and OOMs so far, and the allocator configuration."""
    import torch

    runtime, exporter, _ = runtime_and_spans
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    fake = FakeGpu()
    runtime._gpu_source = fake
    request = runtime.start("chat big", {A.OPERATION_NAME: "chat"}, gpu_index=0)
    fake.allocated_bytes, fake.retries, fake.ooms = 3_900, 2, 1  # the moment the allocation failed
    request.end(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))  # torch.cuda.OutOfMemoryError
    fake.allocated_bytes, fake.ooms = 100, 5  # after the end: must not show
    assert drain(10)
    (span,) = exporter.get_finished_spans()
    a = span.attributes
    assert a[A.ERROR_TYPE] == "torch.OutOfMemoryError" and span.status.status_code.name == "ERROR"
    assert a[A.GPU_TORCH_ALLOCATED] == 3_900 and a[A.GPU_TORCH_RESERVED] == 4_000
    assert a[A.GPU_TORCH_FRAGMENTATION] == 100
    assert a[A.GPU_TORCH_ALLOC_RETRIES] == 2 and a[A.GPU_TORCH_OOMS] == 1
    assert a[A.GPU_TORCH_ALLOC_CONF] == "expandable_segments:True"


def test_framework_attributes_are_plain_values():
    """What crosses to the export process holds no torch objects: unpickling one there would import
    torch (torch.__version__ is a TorchVersion, a str subclass), racing inline evaluation's import."""
    import pickle

    from fi_evals_core.telemetry import torch_framework_attributes

    attrs = torch_framework_attributes(engine="x", engine_version="1", dtype="torch.float32", device="cpu")
    assert {type(v) for v in attrs.values()} == {str}
    assert b"torch" not in pickle.dumps(attrs).replace(b"pytorch", b"")


def test_nvml_devices_are_matched_to_torch_by_uuid_not_by_index():
    """NVML numbers devices by PCI bus, torch after CUDA_VISIBLE_DEVICES and CUDA's order: NVML's
    index 0 is not torch's cuda:0. The handles come from the UUID (a card's `GPU-`, a MIG instance's
    `MIG-`); a device NVML does not know is left out rather than read under another's index. (NVML's
    own lookup, stood in for here: there is no GPU on the test machines.)"""
    import types

    from fi_evals_core.telemetry.gpu import nvml_handles

    known = {"GPU-bbbb": "card-b", "MIG-aaaa": "mig-a"}

    def by_uuid(uuid):
        if uuid not in known:
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return known[uuid]

    pynvml = types.SimpleNamespace(nvmlDeviceGetHandleByUUID=by_uuid)
    assert nvml_handles(pynvml, ["aaaa", "bbbb", "cccc"]) == {0: "mig-a", 1: "card-b"}
