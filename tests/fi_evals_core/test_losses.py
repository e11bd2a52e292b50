"""Nothing lost silently: spans an exporter fails to deliver are counted by reason in the
`traceai.telemetry.dropped` counter (exported like any metric), logged once per reason, and totalled
at shutdown (losses.py). Real failures: a trace file that is a directory, a collector port where
nothing listens."""

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


def test_an_unwritable_trace_file_counts_every_span_and_the_counter_reaches_the_collector(tmp_path, collector,
                                                                                          caplog):
    before = losses.counts().get(EXPORT_FAILED, 0)
    env = {"TRACEAI_TRACES_FILE": str(tmp_path),  # a directory: every write fails
           "OTEL_TRACES_EXPORTER": "jsonl", "OTEL_METRICS_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": collector.grpc_endpoint, "OTEL_SERVICE_NAME": "losses-jsonl",
           "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    with caplog.at_level(logging.WARNING):
        telemetry = register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)
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
    points = [p for m in collector.wait_for_metrics(
        lambda m: m["name"] == DROPPED_COUNTER and m["resource_attributes"].get("service.name") == "losses-jsonl")
        for p in m["data_points"] if p["attributes"].get("reason") == EXPORT_FAILED]
    assert points and points[-1]["value"] >= 5


def test_a_collector_that_is_not_there_counts_the_spans_it_never_got():
    before = losses.counts().get(EXPORT_FAILED, 0)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "1000"}
    telemetry = register(config=TelemetryConfig.from_env(env), set_global=False, instrument=False)
    try:
        _spans(telemetry, 4)
        telemetry.force_flush()
    finally:
        telemetry.shutdown()
    assert losses.counts()[EXPORT_FAILED] - before == 4
