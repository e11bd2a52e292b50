"""A collector outage ridden out (outage.py): the real collector killed and restarted on the same
ports loses nothing; past the buffer's bound, every span is either delivered or counted."""

from __future__ import annotations


import pytest

from fi_evals_core import register
from fi_evals_core.telemetry import TelemetryConfig
from fi_evals_core.telemetry.losses import losses
from fi_evals_core.telemetry.outage import BUFFER_FULL, COLLECTOR_UNREACHABLE
from fi_evals_core.testing.collector import RotelCollector
from fi_evals_core.testing.servers import wait_until


def _emit(telemetry, prefix: str, n: int) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    for i in range(n):
        tracer.start_span(f"{prefix} {i}").end()


def _delivered(collector, service: str) -> list[str]:
    return [s["name"] for s in collector.spans() if s["resource_attributes"].get("service.name") == service]


def _deliver_then_kill(telemetry, collector, service: str, n: int) -> None:
    """`n` spans delivered, then the collector killed (an outage)."""
    _emit(telemetry, "before", n)
    assert telemetry.force_flush()
    # rotel forwards what it took to the test's sink asynchronously: let it, before killing it
    collector.wait_for_spans(lambda s: s["resource_attributes"].get("service.name") == service, count=n)
    collector.kill()


def _env(collector, service: str, **extra: str) -> dict[str, str]:
    return {**collector.otel_env("grpc"), "OTEL_SERVICE_NAME": service, "OTEL_METRICS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1000", **extra}


@pytest.mark.parametrize("export_process", ["0", "1"])
def test_a_collector_killed_and_restarted_loses_nothing(tmp_path, export_process):
    """In-process, and with the export process (its buffer, its flushes answered "not delivered"
    while the collector is down)."""
    with RotelCollector(tmp_path) as collector:
        before = losses.counts()
        env = _env(collector, "outage-restart", TRACEAI_EXPORT_PROCESS=export_process)
        telemetry = register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)
        try:
            _deliver_then_kill(telemetry, collector, "outage-restart", 10)
            for batch in range(3):  # the collector is down: kept, and flushes say so
                _emit(telemetry, f"during{batch}", 20)
                assert telemetry.force_flush() is False
            collector.restart()
            _emit(telemetry, "after", 5)
            # the backlog goes out first, then these, at the buffer's next try (its pause after the
            # failures) once the exporter's channel has reconnected: a deadline poll
            wait_until(telemetry.force_flush, 60, "the backlog sent")
        finally:
            telemetry.shutdown()
        spans = collector.wait_for_spans(lambda s: s["resource_attributes"].get("service.name") == "outage-restart",
                                         count=75)
        # every span arrived; at least once: a batch whose answer timed out is sent again, and the
        # backend sees its span ids twice
        assert len({s["span_id"] for s in spans}) == 75
        assert losses.counts() == before  # nothing dropped


def test_past_the_bound_every_span_is_delivered_or_counted(tmp_path):
    with RotelCollector(tmp_path) as collector:
        before = losses.counts()
        env = _env(collector, "outage-bounded", TRACEAI_EXPORT_BUFFER_SPANS="30")
        telemetry = register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)
        try:
            _deliver_then_kill(telemetry, collector, "outage-bounded", 5)
            for batch in range(5):
                _emit(telemetry, f"during{batch}", 20)
                telemetry.force_flush()
        finally:
            telemetry.shutdown()  # still down: what is kept is counted, without waiting on the collector
        after = losses.counts()
        dropped = {reason: after.get(reason, 0) - before.get(reason, 0) for reason in (BUFFER_FULL,
                                                                                     COLLECTOR_UNREACHABLE)}
        # whole batches leave the buffer past the bound; at most 30 were still kept at shutdown
        assert dropped[BUFFER_FULL] + dropped[COLLECTOR_UNREACHABLE] == 100, dropped
        assert 0 < dropped[COLLECTOR_UNREACHABLE] <= 30 and dropped[BUFFER_FULL] >= 70, dropped
        collector.restart()
        assert len(_delivered(collector, "outage-bounded")) == 5  # delivered + counted = finished (105)


def test_kept_spans_go_out_on_their_own_once_the_collector_is_back(tmp_path):
    """No new spans and no flush after the restart: the buffer's own retry sends the backlog (the
    batch processor would never call it again)."""
    with RotelCollector(tmp_path) as collector:
        telemetry = register(config=TelemetryConfig.from_env(_env(collector, "outage-quiet")), set_global=False,
                             instrument=False)
        try:
            _deliver_then_kill(telemetry, collector, "outage-quiet", 3)
            _emit(telemetry, "during", 7)
            assert telemetry.force_flush() is False  # tried, failed, kept
            collector.restart()
            spans = collector.wait_for_spans(
                lambda s: s["resource_attributes"].get("service.name") == "outage-quiet", count=10, timeout=60)
            assert len({s["span_id"] for s in spans}) == 10
        finally:
            telemetry.shutdown()


def test_a_collector_back_a_moment_before_shutdown_gets_the_backlog_and_a_hung_one_costs_one_timeout(tmp_path):
    """Shutdown within the buffer's pause after a failure: the collector that refused connections
    then and takes them now (restarted just before a Ctrl-C) gets one more attempt and every span;
    one that takes connections and never answers (blackholed) gets none, and its spans are counted."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from fi_evals_core.telemetry.outage import OutageBuffer
    from fi_evals_core.telemetry.providers import ExportingSpanProcessor, span_exporter
    from fi_evals_core.testing.servers import Blackhole

    with RotelCollector(tmp_path) as collector:
        collector.kill()
        config = TelemetryConfig.from_env(_env(collector, "outage-back", OTEL_EXPORTER_OTLP_TIMEOUT="3000"))
        exporter = span_exporter(config)
        assert isinstance(exporter, OutageBuffer)
        processor = ExportingSpanProcessor(exporter)
        provider = TracerProvider(resource=Resource({"service.name": "outage-back"}))
        provider.add_span_processor(processor)
        for i in range(6):
            provider.get_tracer("app").start_span(f"kept {i}").end()
        assert processor.force_flush() is False and exporter.buffered == 6  # refused: kept, a pause begins
        collector.restart()
        before = losses.counts().get(COLLECTOR_UNREACHABLE, 0)
        provider.shutdown()  # within the pause: asked whether it listens, it does: one attempt
        assert losses.counts().get(COLLECTOR_UNREACHABLE, 0) == before
        assert len(collector.wait_for_spans(lambda s: s["resource_attributes"].get("service.name") == "outage-back",
                                            count=6)) == 6

    with Blackhole() as hole:
        config = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": hole.endpoint, "OTEL_METRICS_EXPORTER": "none",
                                           "OTEL_EXPORTER_OTLP_TIMEOUT": "1000"})
        exporter = span_exporter(config)
        provider = TracerProvider()
        provider.add_span_processor(ExportingSpanProcessor(exporter))
        for i in range(4):
            provider.get_tracer("app").start_span(f"hung {i}").end()
        calls = []
        inner = exporter.exporter.export
        exporter.exporter.export = lambda batch: calls.append(len(batch)) or inner(batch)
        assert provider.force_flush() is False  # one attempt, hung until the timeout
        before = losses.counts().get(COLLECTOR_UNREACHABLE, 0)
        provider.shutdown()
        assert calls == [4]  # no second attempt at shutdown: it would hang again
        assert losses.counts().get(COLLECTOR_UNREACHABLE, 0) - before == 4


def test_an_export_that_hangs_at_shutdown_is_aborted_and_its_spans_counted():
    """A blackholed collector and a long export timeout (60 s): at shutdown the batch worker hangs
    in its export. Shutdown waits at most SHUTDOWN_WAIT_S, then aborts it (the gRPC exporter's
    shutdown cancels the call): the worker ends long before its 60 s, and the spans are counted."""
    from opentelemetry.sdk.trace import TracerProvider

    from fi_evals_core.telemetry.providers import ExportingSpanProcessor, span_exporter
    from fi_evals_core.testing.servers import Blackhole

    with Blackhole() as hole:
        config = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": hole.endpoint, "OTEL_METRICS_EXPORTER": "none",
                                           "OTEL_EXPORTER_OTLP_TIMEOUT": "60000"})
        exporter = span_exporter(config)
        processor = ExportingSpanProcessor(exporter, schedule_delay_millis=10)
        provider = TracerProvider()
        provider.add_span_processor(processor)
        for i in range(5):
            provider.get_tracer("app").start_span(f"hung {i}").end()
        wait_until(lambda: exporter._lock.locked(), 10, "an export in flight")  # the worker, in the hung call
        before = losses.counts().get(COLLECTOR_UNREACHABLE, 0)
        provider.shutdown()
        worker = processor._batch_processor._worker_thread
        worker.join(20)  # its call was cancelled: it ends now, not after 60 s
        assert not worker.is_alive()
        assert losses.counts().get(COLLECTOR_UNREACHABLE, 0) - before == 5
