"""TRACEAI_EXPORT_PROCESS=1: spans and the request histograms exported by a child process, to the
real collector; what the app sees (trace ids, parent links) unchanged; a dead child never raises
into the app and what it loses is counted; a forked process gets its own export process."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fi_evals_core import register
from fi_evals_core.telemetry import ConfigError, TelemetryConfig
from fi_evals_core.telemetry import attributes as A
from fi_evals_core.telemetry.export_process import ExportProcess, ExportProcessSpanProcessor
from fi_evals_core.telemetry.metrics import DURATION_BUCKETS

PROGRAMS = Path(__file__).resolve().parent / "programs"


def test_register_exports_spans_and_request_histograms_from_a_child_process(collector, model_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    collector.clear()
    env = {**collector.otel_env("grpc"), "OTEL_SERVICE_NAME": "export-process-test", "TRACEAI_EXPORT_PROCESS": "1"}
    telemetry = register(config=TelemetryConfig.from_env(env), set_global=False)
    try:
        assert telemetry.export_process is not None
        assert "(from an export process)" in telemetry.destination
        processors = telemetry.tracer_provider._active_span_processor._span_processors
        assert [type(p) for p in processors] == [ExportProcessSpanProcessor]  # no OTLP exporter here
        model = AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"])
        tok = AutoTokenizer.from_pretrained(model_dirs["gpt2"])
        enc = tok("hello there", return_tensors="pt")
        tracer = telemetry.tracer_provider.get_tracer("app")
        with tracer.start_as_current_span("handle request") as app_span:
            model.generate(**enc, max_new_tokens=3, do_sample=False)
        app_context = app_span.get_span_context()
        assert telemetry.force_flush()
        child_pid = telemetry.export_process._proc.pid
    finally:
        telemetry.shutdown()
    assert telemetry.export_process._proc.poll() == 0  # the child exited cleanly at shutdown
    assert telemetry.export_process.dropped == 0

    spans = collector.wait_for_spans(lambda s: s["resource_attributes"].get("service.name") == "export-process-test",
                                     count=2)
    app = next(s for s in spans if s["name"] == "handle request")
    (generate,) = [s for s in spans if s["scope_name"] == "traceai_huggingface"]
    assert app["trace_id"] == format(app_context.trace_id, "032x") and app["span_id"] == format(app_context.span_id, "016x")
    assert generate["trace_id"] == app["trace_id"] and generate["parent_span_id"] == app["span_id"]
    assert generate["attributes"][A.USAGE_OUTPUT_TOKENS] == 3
    assert generate["attributes"][A.USAGE_INPUT_TOKENS] == enc["input_ids"].shape[1]
    assert generate["end_time_unix_nano"] > generate["start_time_unix_nano"]

    duration = collector.wait_for_metrics(A.METRIC_OPERATION_DURATION)[-1]
    assert duration["scope_name"] == "traceai_huggingface" and duration["unit"] == "s"
    assert duration["resource_attributes"]["service.name"] == "export-process-test"
    (point,) = duration["data_points"]
    assert point["count"] == 1 and tuple(point["explicit_bounds"]) == DURATION_BUCKETS
    assert point["attributes"][A.OPERATION_NAME] == generate["attributes"][A.OPERATION_NAME]
    usage = collector.wait_for_metrics(A.METRIC_TOKEN_USAGE)[-1]
    sums = {p["attributes"][A.TOKEN_TYPE]: p["sum"] for p in usage["data_points"]}
    assert sums == {"input": enc["input_ids"].shape[1], "output": 3}
    assert child_pid != __import__("os").getpid()


def test_bad_value_is_a_clear_error():
    with pytest.raises(ConfigError, match="TRACEAI_EXPORT_PROCESS='maybe' is not valid"):
        TelemetryConfig.from_env({"TRACEAI_EXPORT_PROCESS": "maybe"})
    assert TelemetryConfig.from_env({"TRACEAI_EXPORT_PROCESS": "off"}).export_process is False


def _provider(process: ExportProcess):
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    provider.add_span_processor(process.span_processor())
    return provider


def test_a_dead_export_process_never_raises_and_exporting_goes_on_in_process(tmp_path, caplog):
    """The child dies: one warning, nothing raises into the app, and export goes on from the
    serving process (as without TRACEAI_EXPORT_PROCESS); what died with the child is counted."""
    traces = tmp_path / "spans.jsonl"
    process = ExportProcess(TelemetryConfig(traces_exporter="jsonl", traces_file=traces), {"service.name": "t"})
    tracer = _provider(process).get_tracer("t")
    with tracer.start_as_current_span("before"):
        pass
    assert process.flush(30)
    assert [json.loads(line)["name"] for line in traces.read_text().splitlines()] == ["before"]

    process._proc.kill()
    process._proc.wait()
    with caplog.at_level(logging.WARNING, logger="fi_evals_core.telemetry.export_process"):
        for _ in range(5):
            with tracer.start_as_current_span("after"):  # never raises into the app
                pass
        process.flush(5)  # False if its marker went down with the child
        assert process.flush(30)
    gone = [r for r in caplog.records if "export process is gone" in r.getMessage()]
    assert len(gone) == 1 and "exporting in-process from now on" in gone[0].getMessage()
    names = [json.loads(line)["name"] for line in traces.read_text().splitlines()]
    assert names[0] == "before" and set(names[1:]) <= {"after"}
    assert len(names) - 1 + process.dropped == 5  # each one exported, or counted as lost with the child
    assert len(names) - 1 >= 4  # at most the first was in flight when the pipe broke
    process.close(5)


def test_a_forked_process_gets_its_own_export_process(tmp_path):
    traces = tmp_path / "spans.jsonl"
    env = {"PATH": "/usr/bin:/bin", "TRACEAI_TRACES_FILE": str(traces), "TRACEAI_EXPORT_PROCESS": "1"}
    proc = subprocess.run([sys.executable, str(PROGRAMS / "fork_export_process.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CHILD_EXPORT True" in proc.stdout and "DROPPED 0" in proc.stdout
    names = sorted(json.loads(line)["name"] for line in traces.read_text().splitlines())
    assert names == ["in the child", "in the parent", "in the parent again"]


def _request_scenario(runtime, app_span, error=None):
    """A deferred batch span enclosing a deferred request (as LLM.generate and its requests)."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    parent = trace.set_span_in_context(app_span)
    batch = runtime.start("LLM.generate tiny", {A.PROVIDER_NAME: "vllm"}, kind=SpanKind.INTERNAL, context=parent,
                          defer_span=True, metrics=None)
    with runtime.enclosing(batch):
        request = runtime.start("text_completion tiny", {A.OPERATION_NAME: "text_completion", A.REQUEST_MODEL: "tiny",
                                                         A.REQUEST_MAX_TOKENS: 3},
                                kind=SpanKind.SERVER, defer_span=True, metrics="server",
                                late_attributes={A.MODEL_FRAMEWORK: "pytorch", A.RESPONSE_ID: "overridden"})
    request.mark_first_token()
    request.set_usage(input_tokens=5, output_tokens=3, cache_read_input_tokens=2, decode_steps=3)
    request.set_response(response_id="r-1", finish_reasons=["length"])
    request.use_engine_latency(0.25, 0.5)
    request.set_attribute(A.VLLM_QUEUE_TIME, 0.125)
    request.end(error=error, finalize=lambda r: r.set_attribute(A.VLLM_KV_CACHE_USAGE, 0.5))
    batch.end()
    return batch, request


@pytest.mark.parametrize("sampler", ["parentbased_always_on", "traceidratio"])
def test_finished_requests_are_made_into_spans_by_the_export_process(tmp_path, sampler):
    """A deferred request that nothing in the serving process needs goes to the export process as a
    record: the child derives the same attributes, status and parent link as the telemetry worker
    would here, with the provider's sampler; its deferred parent (the batch), whose ids its child
    needed, is a span made here and handed over when it ends."""
    from fi_evals_core.telemetry import ExportProcessSink, TelemetryRuntime, drain

    traces = tmp_path / "spans.jsonl"
    env = {"TRACEAI_TRACES_FILE": str(traces), "TRACEAI_EXPORT_PROCESS": "1", "OTEL_TRACES_SAMPLER": sampler,
           "OTEL_TRACES_SAMPLER_ARG": "0"}
    telemetry = register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)
    try:
        runtime = TelemetryRuntime("direct-test", "1.2", tracer_provider=telemetry.tracer_provider,
                                   meter_provider=telemetry.meter_provider, config=telemetry.config,
                                   sink=telemetry.sink)
        assert isinstance(runtime.sink, ExportProcessSink) and runtime.sink.direct
        app = telemetry.tracer_provider.get_tracer("app").start_span("app")  # parentbased: sampled parent
        batch, request = _request_scenario(runtime, app, ValueError("boom"))
        drain()
        app.end()
        assert request.span is None  # made in the child, from its record
        if sampler == "parentbased_always_on":
            assert batch.span.get_span_context().is_valid  # its child needed its ids here
        # The provider's own flush: once it returns, the child has written the spans.
        assert telemetry.tracer_provider.force_flush()
        lines = traces.read_text().splitlines() if traces.exists() else []
        dropped = telemetry.export_process.dropped
    finally:
        telemetry.shutdown()
    assert dropped == 0
    records = {json.loads(line)["name"]: json.loads(line) for line in lines}
    if sampler == "traceidratio":  # ratio 0: the child's sampler dropped them, as the SDK's would have
        assert records == {}
        return
    span = records["text_completion tiny"]
    batch_ctx = batch.span.get_span_context()
    assert span["trace_id"] == format(app.get_span_context().trace_id, "032x") == format(batch_ctx.trace_id, "032x")
    assert span["parent_span_id"] == format(batch_ctx.span_id, "016x")
    assert records["LLM.generate tiny"]["parent_span_id"] == format(app.get_span_context().span_id, "016x")
    assert span["kind"] == "SERVER" and span["scope"] == {"name": "direct-test", "version": "1.2"}
    assert span["status"] == {"code": "ERROR", "description": "boom"}
    attrs = span["attributes"]
    assert attrs[A.USAGE_INPUT_TOKENS] == 5 and attrs[A.USAGE_OUTPUT_TOKENS] == 3 and attrs[A.ERROR_TYPE] == "ValueError"
    assert attrs[A.RESPONSE_FINISH_REASONS] == ["length"] and attrs[A.RESPONSE_ID] == "r-1"  # over the late one
    assert attrs[A.MODEL_FRAMEWORK] == "pytorch" and attrs[A.VLLM_KV_CACHE_USAGE] == 0.5
    assert attrs[A.RESPONSE_TIME_TO_FIRST_CHUNK] == 0.25 and attrs[A.TIME_PER_OUTPUT_TOKEN] == 0.25
    assert span["end_time_unix_nano"] >= span["start_time_unix_nano"]


def test_a_request_finished_in_the_export_process_matches_one_finished_here(collector):
    """The same request, finished in-process (SDK span, SDK histograms) and by the export process
    from its record: the same attributes and the same histogram points, at the real collector."""
    from opentelemetry import trace

    from fi_evals_core.telemetry import ExportProcessSink, TelemetryRuntime, drain

    collector.clear()
    exported = {}
    for mode in ("0", "1"):
        env = {**collector.otel_env("grpc"), "OTEL_SERVICE_NAME": f"record-{mode}", "TRACEAI_EXPORT_PROCESS": mode}
        telemetry = register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)
        try:
            runtime = TelemetryRuntime("record-test", "1", tracer_provider=telemetry.tracer_provider,
                                       meter_provider=telemetry.meter_provider, config=telemetry.config,
                                       sink=telemetry.sink)
            assert isinstance(runtime.sink, ExportProcessSink) == (mode == "1")
            app = trace.NonRecordingSpan(trace.SpanContext(0x1234, 0x5678, is_remote=True,
                                                           trace_flags=trace.TraceFlags(1)))
            _, request = _request_scenario(runtime, app)
            drain()
            assert telemetry.force_flush()
        finally:
            telemetry.shutdown()
        spans = collector.wait_for_spans(lambda s: s["resource_attributes"].get("service.name") == f"record-{mode}",
                                         count=2)
        (span,) = [s for s in spans if s["name"] == "text_completion tiny"]
        (batch,) = [s for s in spans if s["name"] == "LLM.generate tiny"]
        assert span["parent_span_id"] == batch["span_id"] and batch["parent_span_id"] == format(0x5678, "016x")
        metrics = {}
        for name in (A.METRIC_SERVER_REQUEST_DURATION, A.METRIC_SERVER_TIME_TO_FIRST_TOKEN,
                     A.METRIC_SERVER_TIME_PER_OUTPUT_TOKEN, A.METRIC_TOKEN_USAGE):
            last = [m for m in collector.wait_for_metrics(name)
                    if m["resource_attributes"].get("service.name") == f"record-{mode}"][-1]  # cumulative
            metrics[name] = sorted((p["count"], p["attributes"].get(A.TOKEN_TYPE), p["attributes"][A.OPERATION_NAME])
                                   for p in last["data_points"])
        exported[mode] = (span, metrics)
    (here, here_metrics), (there, there_metrics) = exported["0"], exported["1"]
    rate = A.OUTPUT_TOKENS_PER_SECOND  # output tokens over the duration: the two runs took different times
    assert {k: v for k, v in here["attributes"].items() if k != rate} == \
        {k: v for k, v in there["attributes"].items() if k != rate}
    assert rate in there["attributes"]
    assert [here[k] for k in ("kind", "trace_id", "status_code", "scope_name")] == \
        [there[k] for k in ("kind", "trace_id", "status_code", "scope_name")] == [
            "SERVER", format(0x1234, "032x"), "UNSET", "record-test"]
    assert here_metrics == there_metrics and here_metrics[A.METRIC_TOKEN_USAGE] == [
        (1, "input", "text_completion"), (1, "output", "text_completion")]


@pytest.mark.parametrize("export_process", ["0", "1"])
def test_an_extra_span_processor_keeps_sdk_spans(tmp_path, export_process):
    """Anything else on the provider (a processor the app added) sees real SDK spans: request spans
    are then made through the provider, in-process or with the export process alike."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from fi_evals_core.telemetry import TelemetryRuntime, drain

    env = {"TRACEAI_TRACES_FILE": str(tmp_path / "spans.jsonl"), "TRACEAI_EXPORT_PROCESS": export_process}
    telemetry = register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)
    try:
        memory = InMemorySpanExporter()
        telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
        runtime = TelemetryRuntime("direct-test", "1", tracer_provider=telemetry.tracer_provider,
                                   meter_provider=telemetry.meter_provider, config=telemetry.config,
                                   sink=telemetry.sink)
        assert not runtime.sink.direct  # request spans are made here now, where the app's processor is
        runtime.start("op", {A.OPERATION_NAME: "op"}, defer_span=True).end()
        drain()
        assert [s.name for s in memory.get_finished_spans()] == ["op"]
        assert telemetry.force_flush()
    finally:
        telemetry.shutdown()
    # and the configured exporter still got it
    assert [json.loads(line)["name"] for line in (tmp_path / "spans.jsonl").read_text().splitlines()] == ["op"]


def test_an_export_process_that_cannot_start_means_exporting_in_process(tmp_path, monkeypatch, caplog):
    """No child can be started (here: no interpreter): one warning, and the same work is done in
    this process, so nothing is lost and flush means what it says."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    process = ExportProcess(TelemetryConfig(traces_exporter="jsonl", traces_file=tmp_path / "s.jsonl"), {})
    tracer = _provider(process).get_tracer("t")
    with caplog.at_level(logging.WARNING, logger="fi_evals_core.telemetry.export_process"):
        for _ in range(3):
            with tracer.start_as_current_span("kept"):
                pass
        assert process.flush(30) is True
    assert [r.getMessage() for r in caplog.records] == [
        "traceai: could not start the export process; exporting in-process instead"]
    assert process.dropped == 0 and process._proc is None
    assert [json.loads(line)["name"] for line in (tmp_path / "s.jsonl").read_text().splitlines()] == ["kept"] * 3
    process.close(5)


def test_a_request_that_does_not_pickle_is_dropped_alone(tmp_path, caplog):
    """One hand-over item that cannot be pickled costs that item (counted, one warning), not the
    export process nor the items sent with it."""
    import threading

    from fi_evals_core.telemetry import TelemetryRuntime, drain

    traces = tmp_path / "spans.jsonl"
    env = {"TRACEAI_TRACES_FILE": str(traces), "TRACEAI_EXPORT_PROCESS": "1"}
    telemetry = register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)
    try:
        runtime = TelemetryRuntime("pickle-test", "1", tracer_provider=telemetry.tracer_provider,
                                   meter_provider=telemetry.meter_provider, config=telemetry.config,
                                   sink=telemetry.sink)
        bad = runtime.start("bad", {A.OPERATION_NAME: "op"}, defer_span=True)
        bad.set_attribute("app.lock", threading.Lock())  # not a valid attribute value, and no pickle
        good = runtime.start("good", {A.OPERATION_NAME: "op"}, defer_span=True)
        with caplog.at_level(logging.WARNING):
            bad.end()
            good.end()
            drain()
            assert telemetry.tracer_provider.force_flush()
        dropped = telemetry.export_process.dropped
        alive = telemetry.export_process._proc.poll() is None
    finally:
        telemetry.shutdown()
    assert [json.loads(line)["name"] for line in traces.read_text().splitlines()] == ["good"]
    assert dropped == 1 and alive
    assert "not_picklable" in caplog.text  # the ledger says it (losses.py)


def test_ctrl_c_to_the_process_group_loses_no_span(collector, model_dirs):
    """SIGINT to the whole process group, as a terminal sends it: the export process ignores it, the
    app dies of KeyboardInterrupt without calling shutdown(), and at its exit the export process
    exports both requests' spans, then exits."""
    import os
    import signal

    collector.clear()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEAI_"))}
    env.update({**collector.otel_env("grpc"), "OTEL_SERVICE_NAME": "interrupted-app", "TRACEAI_EXPORT_PROCESS": "1"})
    proc = subprocess.Popen([sys.executable, str(PROGRAMS / "interrupted_app.py"), str(model_dirs["gpt2"])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "KeyboardInterrupt" in stderr  # the app itself was interrupted
    spans = collector.wait_for_spans(lambda s: s["resource_attributes"].get("service.name") == "interrupted-app"
                                     and s["scope_name"] == "traceai_huggingface", count=2)
    assert len(spans) == 2
    assert "export process is gone" not in stderr


def _sigkilled_after(process: ExportProcess, spans: int, collector_up: bool) -> int:
    """`spans` spans handed to the child and flushed (delivered, or kept in its outage buffer when
    the collector is down); then the child is SIGKILLed. What the parent counts as lost with it."""
    from fi_evals_core.telemetry.losses import EXPORT_PROCESS_LOST, losses
    from fi_evals_core.testing.servers import wait_until

    tracer = _provider(process).get_tracer("t")
    for i in range(spans):
        tracer.start_span(f"held {i}").end()
    # the child has read them all: exported (True), or kept for a collector that is not there (False)
    assert process.flush(30) is collector_up
    before = losses.counts().get(EXPORT_PROCESS_LOST, 0)
    process._proc.kill()
    wait_until(lambda: process._child_gone, 30, "the parent noticing its export process is gone")
    process.close(10)
    return losses.counts().get(EXPORT_PROCESS_LOST, 0) - before


def test_a_sigkilled_export_process_is_counted_for_exactly_what_it_held():
    """The collector is down: the child keeps 7 spans in its outage buffer. SIGKILLed, it takes them
    along, and the parent counts exactly those 7 (export_process_lost): it knows which hand-over
    frames the child had not settled (`s N` lines)."""
    from fi_evals_core.testing.servers import free_port

    config = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                                       "OTEL_METRICS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_TIMEOUT": "1000"})
    process = ExportProcess(config, {"service.name": "killed-holding"})
    assert _sigkilled_after(process, 7, collector_up=False) == 7
    assert process.dropped == 7


def test_a_sigkilled_export_process_that_had_delivered_everything_is_counted_for_nothing(collector):
    """Every span delivered (the collector acknowledged them) before the SIGKILL: nothing counted."""
    collector.clear()
    config = TelemetryConfig.from_env({**collector.otel_env("grpc"), "OTEL_METRICS_EXPORTER": "none",
                                       "OTEL_SERVICE_NAME": "killed-delivered"})
    process = ExportProcess(config, {"service.name": "killed-delivered"})
    assert _sigkilled_after(process, 5, collector_up=True) == 0
    assert len(collector.wait_for_spans(
        lambda s: s["resource_attributes"].get("service.name") == "killed-delivered", count=5)) == 5


def test_a_frame_the_child_cannot_read_back_is_counted_and_the_child_goes_on(tmp_path):
    """An item that pickles here but not back in the child (an HTTPError in an attribute): its frame
    is lost, counted by its item count (not_picklable), and the child exports what follows."""
    import io
    import time
    import urllib.error

    from fi_evals_core.telemetry.export_process import SpanData
    from fi_evals_core.telemetry.finished import SpanIds

    traces = tmp_path / "spans.jsonl"
    process = ExportProcess(TelemetryConfig(traces_exporter="jsonl", traces_file=traces), {"service.name": "t"})
    tracer = _provider(process).get_tracer("t")
    tracer.start_span("before").end()
    assert process.flush(30)
    now = time.time_ns()
    error = urllib.error.HTTPError("http://x", 401, "no", {}, io.BytesIO())
    bad = SpanData("bad", SpanIds(1, 2), None, 1, now, now, 0, None, {"error": error}, (), (), None)
    assert process.send_span(bad)
    tracer.start_span("sent with it").end()  # same frame: lost with it, and counted
    process.flush(30)
    tracer.start_span("after").end()
    assert process.flush(30)
    names = [json.loads(line)["name"] for line in traces.read_text().splitlines()]
    assert names == ["before", "after"]
    assert process.dropped == 2 and process._proc.poll() is None
    process.close(10)


def test_the_export_process_says_at_its_stop_which_heavy_modules_it_imported():
    """Its last line: INFO "imported none of torch, transformers, vllm" (the vLLM fault tests read
    it from a real server's log), or a WARNING naming what a hand-over value pulled in."""
    import torch  # noqa: F401  (as a TorchVersion handed over would import it in the child)

    from fi_evals_core.telemetry.export_process import heavy_modules_line

    level, line = heavy_modules_line()
    assert level == logging.WARNING and "imported torch" in line and "not a plain built-in type" in line
