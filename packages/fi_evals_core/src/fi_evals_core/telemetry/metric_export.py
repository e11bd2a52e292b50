"""Metric export to a backend that takes traces only (Phoenix, Jaeger): one warning, then no more
attempts, instead of an exporter error line every export interval.

`StopWhenRefused` wraps the OTLP metric exporter `register()` builds. When an export fails, it asks
the endpoint once, with an empty OTLP metrics request, whether it serves metrics at all: a gRPC
UNIMPLEMENTED, or an HTTP 404, 405, 415 or 501, means it does not. Then one WARNING names the
setting that avoids it (`OTEL_METRICS_EXPORTER=none`), and later exports are skipped and counted
(`skipped_exports`). Any other failure (a collector that is down or restarting) changes nothing:
exports go on, and the endpoint is asked again after the next failure until it answers. The points
of every failed export are counted (`traceai.telemetry.dropped{reason=metric_export_failed,
signal=metrics}`): with delta temporality they are lost; a cumulative series carries their totals
in its next export, and only the interval's resolution is lost.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Any, Mapping
from urllib.parse import urlsplit

from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter, MetricExportResult, MetricsData

from .content import strip_credentials
from .losses import METRIC_EXPORT_FAILED, losses

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
_REFUSED_HTTP = (404, 405, 415, 501)
_METRICS_EXPORT_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def refuses_metrics(protocol: str, endpoint: str, headers: Mapping[str, str] | None = None,
                    timeout_s: float = PROBE_TIMEOUT_S) -> bool | None:
    """True when the OTLP endpoint answers that it has no metrics service, False when it answers
    otherwise, None when it cannot be asked (unreachable, timeout)."""
    headers = dict(headers or {})
    if protocol == "grpc":
        import grpc

        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        target = parts.netloc.rpartition("@")[2]
        channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials()) if parts.scheme == "https"
                   else grpc.insecure_channel(target))
        try:
            call = channel.unary_unary(_METRICS_EXPORT_METHOD, request_serializer=lambda _: b"",
                                       response_deserializer=lambda data: data)
            call(b"", timeout=timeout_s, metadata=tuple(headers.items()) or None)
            return False
        except grpc.RpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            return code == grpc.StatusCode.UNIMPLEMENTED
        finally:
            channel.close()
    request = urllib.request.Request(endpoint, data=b"", method="POST",
                                     headers={**headers, "Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return False
    except urllib.error.HTTPError as error:
        return error.code in _REFUSED_HTTP
    except (OSError, ValueError):
        return None


class StopWhenRefused(MetricExporter):
    """`exporter`, until its endpoint says it takes no metrics (see the module docstring)."""

    def __init__(self, exporter: MetricExporter, protocol: str, endpoint: str, headers: Mapping[str, str] | None,
                 preferred_temporality: Mapping[type, AggregationTemporality] | None = None) -> None:
        super().__init__(preferred_temporality=dict(preferred_temporality) if preferred_temporality else None)
        self.exporter = exporter
        self.protocol = protocol
        self.endpoint = endpoint
        self._headers = dict(headers or {})
        self.refused = False
        self.skipped_exports = 0
        self._answered = False  # the endpoint said whether it takes metrics: not asked again

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self.refused:
            self.skipped_exports += 1
            return MetricExportResult.FAILURE
        result = self.exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        if result is MetricExportResult.FAILURE:
            losses.add(METRIC_EXPORT_FAILED, _points(metrics_data), "metric points")
        if result is MetricExportResult.FAILURE and not self._answered:
            refused = refuses_metrics(self.protocol, self.endpoint, self._headers)
            self._answered = refused is not None  # unreachable now: asked again after the next failure
            if refused:
                self.refused = True
                logger.warning(
                    "traceai: %s takes no OTLP metrics (a traces-only backend?): metric export is stopped; set "
                    "OTEL_METRICS_EXPORTER=none to not send them, or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT to a "
                    "collector that takes them", strip_credentials(self.endpoint))
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.exporter.shutdown(timeout_millis=timeout_millis, **kwargs)


def _points(metrics_data: MetricsData | None) -> int:
    if metrics_data is None:
        return 0
    return sum(len(metric.data.data_points) for resource in metrics_data.resource_metrics
               for scope in resource.scope_metrics for metric in scope.metrics)
