"""Nothing lost silently: spans an exporter fails to deliver are counted by reason in the
`traceai.telemetry.dropped` counter (exported like any metric), logged once per reason, and totalled
at shutdown (losses.py). Real failures: a trace file replaced by a directory, a collector port where
nothing listens. A trace file that cannot be written at all is an error at register()."""

from __future__ import annotations

import logging

from fi_evals_core import register
from fi_evals_core.telemetry import TelemetryConfig
from fi_evals_core.telemetry.losses import DROPPED_COUNTER, EXPORT_FAILED, losses
from fi_evals_core.testing.servers import free_port


def _spans(telemetry, n: int) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    for i in range(n):
        tracer.start_span(f"work {i}").end()


def test_a_trace_file_that_became_unwritable_counts_every_span_and_the_counter_reaches_the_collector(
        tmp_path, collector, caplog):
    before = losses.counts().get(EXPORT_FAILED, 0)
    traces = tmp_path / "spans.jsonl"
    env = {"TRACEAI_TRACES_FILE": str(traces),
           "OTEL_TRACES_EXPORTER": "jsonl", "OTEL_METRICS_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": collector.grpc_endpoint, "OTEL_SERVICE_NAME": "losses-jsonl",
           "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    with caplog.at_level(logging.WARNING):
        telemetry = register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)
        traces.unlink()
        traces.mkdir()  # the file is gone and a directory is in its place: every write fails from now on
        try:
            _spans(telemetry, 3)
            telemetry.force_flush()
            assert losses.counts()[EXPORT_FAILED] - before == 3
            _spans(telemetry, 2)
            telemetry.force_flush()
        finally:
            telemetry.shutdown()
    assert losses.counts()[EXPORT_FAILED] - before == 5
    # logged: at most one line per reason a minute while it goes on, and the totals at shutdown
    assert len([r for r in caplog.records if "dropped: the exporter failed" in r.getMessage()]) <= 1
    assert any("telemetry dropped in this process" in r.getMessage() and "(export_failed)" in r.getMessage()
               for r in caplog.records)
    # the cumulative counter, as exported at each flush and at shutdown: 3, then 5 (or more: the
    # ledger is the process's, other tests' losses included)
    collector.wait_for_metrics(
        lambda m: m["name"] == DROPPED_COUNTER and m["resource_attributes"].get("service.name") == "losses-jsonl"
        and any(p["attributes"].get("reason") == EXPORT_FAILED and p["value"] - before >= 5
                for p in m["data_points"]))


def test_a_collector_that_is_not_there_counts_the_spans_it_never_got():
    """Nothing listens: the spans wait in the outage buffer (a flush says False), and shutdown
    counts them as collector_unreachable."""
    from fi_evals_core.telemetry.outage import COLLECTOR_UNREACHABLE

    before = losses.counts().get(COLLECTOR_UNREACHABLE, 0)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "1000"}
    telemetry = register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)
    try:
        _spans(telemetry, 4)
        assert telemetry.force_flush() is False  # not delivered, and it says so
    finally:
        telemetry.shutdown()
    assert losses.counts()[COLLECTOR_UNREACHABLE] - before == 4


def test_an_unusable_trace_file_is_an_error_at_register_naming_the_variable(tmp_path):
    import pytest

    from fi_evals_core.telemetry import ConfigError

    read_only = tmp_path / "read-only.jsonl"
    read_only.write_text("")
    read_only.chmod(0o444)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for path in (tmp_path, blocked / "spans.jsonl") + ((read_only,) if __import__("os").geteuid() != 0 else ()):
        for export_process in ("0", "1"):
            env = {"TRACEAI_TRACES_FILE": str(path), "TRACEAI_EXPORT_PROCESS": export_process}
            with pytest.raises(ConfigError, match="TRACEAI_TRACES_FILE=.*a file this process can append to"):
                register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)


class _HeldExporter:
    """A span exporter whose first export waits until released: the batch processor's queue fills
    behind it."""

    def __init__(self) -> None:
        import threading

        self.entered, self.release = threading.Event(), threading.Event()
        self.exported: list[str] = []

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.entered.set()
        self.release.wait(30)
        self.exported.extend(s.name for s in spans)
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis=30000):
        return True

    def shutdown(self):
        pass


def test_the_batch_processors_own_drops_are_counted_queue_full_and_after_shutdown():
    """OTEL_BSP_MAX_QUEUE_SIZE reached while the exporter is busy: the SDK pushes the oldest span out
    of its queue (its warning says so, without a number); each is counted (queue_full), and a span
    ended after shutdown too (ended_after_shutdown): delivered + counted = ended."""
    from opentelemetry.sdk.trace import TracerProvider

    from fi_evals_core.telemetry.losses import ENDED_AFTER_SHUTDOWN, QUEUE_FULL
    from fi_evals_core.telemetry.providers import ExportingSpanProcessor

    before = losses.counts()
    exporter = _HeldExporter()
    processor = ExportingSpanProcessor(exporter, max_queue_size=4, max_export_batch_size=2, schedule_delay_millis=10)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(2):
        tracer.start_span(f"first {i}").end()
    assert exporter.entered.wait(30)  # the worker holds its first batch and waits in export()
    for i in range(10):
        tracer.start_span(f"queued {i}").end()  # 4 fit; 6 push older ones out
    exporter.release.set()
    provider.shutdown()
    tracer.start_span("too late").end()
    counted = {reason: losses.counts().get(reason, 0) - before.get(reason, 0)
               for reason in (QUEUE_FULL, ENDED_AFTER_SHUTDOWN)}
    assert counted == {QUEUE_FULL: 6, ENDED_AFTER_SHUTDOWN: 1}
    assert len(exporter.exported) == 2 + 4  # the first batch, and the queue's last 4
    assert exporter.exported[2:] == [f"queued {i}" for i in range(6, 10)]
    assert len(exporter.exported) + sum(counted.values()) == 2 + 10 + 1


def test_metric_points_of_a_failed_export_are_counted():
    """A metric export that fails (nothing listens) counts its points (metric_export_failed, with
    signal=metrics on the counter: not mixed with spans)."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    from fi_evals_core.telemetry.losses import METRIC_EXPORT_FAILED
    from fi_evals_core.telemetry.metric_export import StopWhenRefused

    endpoint = f"http://127.0.0.1:{free_port()}"
    exporter = StopWhenRefused(OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=1), "grpc", endpoint, None)
    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=3600000)])
    counter = provider.get_meter("t").create_counter("work")
    for kind in ("a", "b", "c"):
        counter.add(1, {"kind": kind})
    before = losses.counts().get(METRIC_EXPORT_FAILED, 0)
    provider.force_flush()
    assert losses.counts().get(METRIC_EXPORT_FAILED, 0) - before == 3
    observed = {(o.attributes["reason"], o.attributes["signal"]) for o in losses.observe(None)}
    assert (METRIC_EXPORT_FAILED, "metrics") in observed
    assert all(signal == "traces" for reason, signal in observed if reason != METRIC_EXPORT_FAILED)
    provider.shutdown()
