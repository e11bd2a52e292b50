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
