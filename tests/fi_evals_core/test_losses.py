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
