"""A traces-only backend (a real gRPC server with only OTLP's TraceService, as Phoenix and Jaeger
serve; an HTTP server answering 404 on /v1/metrics): one warning naming the setting, then no more
metric exports; traces keep flowing. A backend that takes metrics, or one that is down, is not
treated as refusing."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from fi_evals_core import register
from fi_evals_core.telemetry import TelemetryConfig
from fi_evals_core.telemetry.metric_export import StopWhenRefused, refuses_metrics


class _Counting(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def intercept_service(self, continuation, handler_call_details):
        self.calls.append(handler_call_details.method)
        return continuation(handler_call_details)


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request, context):  # noqa: N802 - the gRPC method's name
        self.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def traces_only_grpc():
    counting, traces = _Counting(), _Traces()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[counting])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(traces, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", counting, traces
    finally:
        server.stop(0)


METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def test_a_traces_only_grpc_backend_gets_one_warning_then_no_metric_exports(traces_only_grpc, caplog):
    endpoint, counting, traces = traces_only_grpc
    config = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "3600000"})
    with caplog.at_level(logging.WARNING):
        telemetry = register(config=config, set_global=False, instrument=False)
        try:
            tracer = telemetry.tracer_provider.get_tracer("app")
            for _ in range(3):
                tracer.start_span("work").end()
                telemetry.force_flush()
        finally:
            telemetry.shutdown()
    # the first export failed, one probe asked, and nothing after (two more flushes and the shutdown)
    assert counting.calls.count(METRICS) == 2
    assert traces.spans == 3  # traces unaffected
    refusals = [r for r in caplog.records if "takes no OTLP metrics" in r.getMessage()]
    assert len(refusals) == 1 and "OTEL_METRICS_EXPORTER=none" in refusals[0].getMessage()
    assert endpoint in refusals[0].getMessage()


class _NoMetricsHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_http_404_on_metrics_is_a_refusal_and_a_down_endpoint_is_not():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoMetricsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert refuses_metrics("http/protobuf", f"{base}/v1/metrics") is True
        assert refuses_metrics("http/protobuf", f"{base}/v1/traces") is False  # it answered: takes it
    finally:
        server.shutdown()
        server.server_close()
    assert refuses_metrics("http/protobuf", f"{base}/v1/metrics", timeout_s=2) is None  # gone: unknown
    assert refuses_metrics("grpc", base, timeout_s=2) is None


def test_a_collector_that_takes_metrics_is_never_stopped(collector):
    from opentelemetry.sdk.metrics.export import MetricExportResult

    class Failing:
        def export(self, *a, **k):
            return MetricExportResult.FAILURE

    exporter = StopWhenRefused(Failing(), "grpc", collector.grpc_endpoint, None)
    for _ in range(3):
        exporter.export(None)
    assert not exporter.refused and exporter.skipped_exports == 0
