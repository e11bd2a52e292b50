"""A real OTLP collector (``rotel-agent``) for end-to-end telemetry tests, with typed read-back.

Why: in-memory exporters skip the OTLP encoding path. Here telemetry goes through the real SDK exporters
(gRPC or HTTP/protobuf) into the real ``rotel-agent`` process, exactly as in production.

How read-back works: rotel is started with ``--exporter otlp --otlp-exporter-protocol http`` pointing at a tiny
in-process OTLP/HTTP receiver (``127.0.0.1:<ephemeral>``). Rotel forwards every request it received as
protobuf ``Export{Trace,Metrics,Logs}ServiceRequest`` (gzip-compressed, which the receiver undoes); the receiver
decodes them with ``opentelemetry-proto`` and turns spans / metric points / log records into plain dicts. Attribute
values keep their OTLP types (str, int, float, bool, bytes, list, dict), which rotel's debug log could not give
reliably. Batching in rotel is disabled, so data shows up as soon as the SDK exporter delivers it (tens of ms).
"""

from __future__ import annotations

import atexit
import ctypes
import gzip
import os
import signal
import socket
import subprocess
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["RotelCollector", "rotel_agent_path", "any_value", "attributes_dict"]

Span = dict[str, Any]
SpanPredicate = Callable[[Span], bool]


def rotel_agent_path() -> str:
    """Path of the ``rotel-agent`` binary shipped inside the ``rotel`` wheel."""
    import rotel

    return os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")


# ---------------------------------------------------------------------------------------------- protobuf -> dict
def any_value(v: common_pb2.AnyValue) -> Any:
    """Decode an OTLP ``AnyValue`` keeping its type (arrays -> list, kvlists -> dict, empty -> None)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attributes_dict(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _hex(b: bytes) -> str | None:
    return b.hex() if b else None


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return enum.Name(value).removeprefix(prefix)
    except ValueError:
        return str(value)


def _span_dict(span: trace_pb2.Span, resource: dict[str, Any], scope: common_pb2.InstrumentationScope, schema_url: str) -> Span:
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": _hex(span.parent_span_id),
        "trace_state": span.trace_state,
        "flags": span.flags,
        "name": span.name,
        "kind": _enum_name(trace_pb2.Span.SpanKind, span.kind, "SPAN_KIND_"),  # INTERNAL/SERVER/CLIENT/PRODUCER/CONSUMER
        "start_time_unix_nano": span.start_time_unix_nano,
        "end_time_unix_nano": span.end_time_unix_nano,
        "attributes": attributes_dict(span.attributes),
        "dropped_attributes_count": span.dropped_attributes_count,
        "events": [
            {"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": attributes_dict(e.attributes)} for e in span.events
        ],
        "links": [
            {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(), "attributes": attributes_dict(link.attributes)}
            for link in span.links
        ],
        "status_code": _enum_name(trace_pb2.Status.StatusCode, span.status.code, "STATUS_CODE_"),  # UNSET/OK/ERROR
        "status_message": span.status.message,
        "resource_attributes": resource,
        "scope_name": scope.name,
        "scope_version": scope.version,
        "scope_attributes": attributes_dict(scope.attributes),
        "schema_url": schema_url,
    }


def _number_point(p: metrics_pb2.NumberDataPoint) -> dict[str, Any]:
    kind = p.WhichOneof("value")
    return {
        "attributes": attributes_dict(p.attributes),
        "start_time_unix_nano": p.start_time_unix_nano,
        "time_unix_nano": p.time_unix_nano,
        "value": getattr(p, kind) if kind else None,  # as_int -> int, as_double -> float
    }


def _histogram_point(p: metrics_pb2.HistogramDataPoint) -> dict[str, Any]:
    return {
        "attributes": attributes_dict(p.attributes),
        "start_time_unix_nano": p.start_time_unix_nano,
        "time_unix_nano": p.time_unix_nano,
        "count": p.count,
        "sum": p.sum if p.HasField("sum") else None,
        "bucket_counts": list(p.bucket_counts),
        "explicit_bounds": list(p.explicit_bounds),
        "min": p.min if p.HasField("min") else None,
        "max": p.max if p.HasField("max") else None,
    }


def _exp_histogram_point(p: metrics_pb2.ExponentialHistogramDataPoint) -> dict[str, Any]:
    return {
        "attributes": attributes_dict(p.attributes),
        "start_time_unix_nano": p.start_time_unix_nano,
        "time_unix_nano": p.time_unix_nano,
        "count": p.count,
        "sum": p.sum if p.HasField("sum") else None,
        "scale": p.scale,
        "zero_count": p.zero_count,
        "positive": {"offset": p.positive.offset, "bucket_counts": list(p.positive.bucket_counts)},
        "negative": {"offset": p.negative.offset, "bucket_counts": list(p.negative.bucket_counts)},
        "min": p.min if p.HasField("min") else None,
        "max": p.max if p.HasField("max") else None,
    }


def _metric_dict(m: metrics_pb2.Metric, resource: dict[str, Any], scope: common_pb2.InstrumentationScope) -> dict[str, Any]:
    kind = m.WhichOneof("data")
    out: dict[str, Any] = {
        "name": m.name,
        "description": m.description,
        "unit": m.unit,
        "type": kind,  # gauge / sum / histogram / exponential_histogram / summary
        "resource_attributes": resource,
        "scope_name": scope.name,
        "scope_version": scope.version,
    }
    temporality = lambda t: _enum_name(metrics_pb2.AggregationTemporality, t, "AGGREGATION_TEMPORALITY_")  # noqa: E731
    if kind == "gauge":
        out["data_points"] = [_number_point(p) for p in m.gauge.data_points]
    elif kind == "sum":
        out["data_points"] = [_number_point(p) for p in m.sum.data_points]
        out["is_monotonic"] = m.sum.is_monotonic
        out["aggregation_temporality"] = temporality(m.sum.aggregation_temporality)
    elif kind == "histogram":
        out["data_points"] = [_histogram_point(p) for p in m.histogram.data_points]
        out["aggregation_temporality"] = temporality(m.histogram.aggregation_temporality)
    elif kind == "exponential_histogram":
        out["data_points"] = [_exp_histogram_point(p) for p in m.exponential_histogram.data_points]
        out["aggregation_temporality"] = temporality(m.exponential_histogram.aggregation_temporality)
    elif kind == "summary":
        out["data_points"] = [
            {
                "attributes": attributes_dict(p.attributes),
                "time_unix_nano": p.time_unix_nano,
                "count": p.count,
                "sum": p.sum,
                "quantile_values": [{"quantile": q.quantile, "value": q.value} for q in p.quantile_values],
            }
            for p in m.summary.data_points
        ]
    else:
        out["data_points"] = []
    return out


def _log_dict(r: Any, resource: dict[str, Any], scope: common_pb2.InstrumentationScope) -> dict[str, Any]:
    return {
        "time_unix_nano": r.time_unix_nano,
        "observed_time_unix_nano": r.observed_time_unix_nano,
        "severity_number": r.severity_number,
        "severity_text": r.severity_text,
        "event_name": getattr(r, "event_name", ""),
        "body": any_value(r.body) if r.HasField("body") else None,
        "attributes": attributes_dict(r.attributes),
        "trace_id": _hex(r.trace_id),
        "span_id": _hex(r.span_id),
        "flags": r.flags,
        "resource_attributes": resource,
        "scope_name": scope.name,
        "scope_version": scope.version,
    }


# ---------------------------------------------------------------------------------------------- OTLP/HTTP sink
class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: RotelCollector


class _SinkHandler(BaseHTTPRequestHandler):
    server: _SinkServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        encoding = (self.headers.get("content-encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        path = self.path.split("?", 1)[0]
        try:
            response = self.server.owner._ingest(path, body)
        except Exception as exc:  # pragma: no cover - surfaces decoding problems in test output
            self.server.owner._errors.append(f"{path}: {exc!r}")
            self.send_response(HTTPStatus.BAD_REQUEST)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = response.SerializeToString()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


_LIVE: weakref.WeakSet[RotelCollector] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Safety net for collectors a test forgot to stop."""
    for col in list(_LIVE):
        col.stop()


try:  # resolved in the parent: the forked child must not dlopen while other threads may hold loader locks
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl if os.uname().sysname == "Linux" else None
except (OSError, AttributeError):  # pragma: no cover
    _PRCTL = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: have the kernel SIGTERM rotel if the test process dies without cleaning up (e.g. SIGKILL)."""
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------------------------------------- collector
class RotelCollector:
    """Run ``rotel-agent`` on free 127.0.0.1 ports and capture everything it receives.

    ``with RotelCollector(tmp_path) as col:`` then export to ``col.grpc_endpoint`` (gRPC) or
    ``col.http_endpoint + "/v1/traces"`` (HTTP/protobuf), and read back with :meth:`spans`,
    :meth:`wait_for_spans`, :meth:`metrics`, :meth:`logs`. Pid/log files live in ``tmpdir``.
    """

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        *,
        extra_args: list[str] | None = None,
        startup_timeout: float = 20.0,
        debug_log: str | None = None,
    ) -> None:
        self.tmpdir = Path(tmpdir)
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.pid_file = self.tmpdir / "rotel-agent.pid"
        self.log_file = self.tmpdir / "rotel-agent.log"
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.debug_log = debug_log  # e.g. "traces" to also dump received spans into log_file for debugging
        self.grpc_port = 0
        self.http_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None
        self._cond = threading.Condition()
        self._spans: list[Span] = []
        self._metrics: list[dict[str, Any]] = []
        self._logs: list[dict[str, Any]] = []
        self._errors: list[str] = []
        #: Raw decoded requests as forwarded by rotel: (path, protobuf message), for anything the dicts omit.
        self.raw_requests: list[tuple[str, Any]] = []
        self._sink = _SinkServer(("127.0.0.1", 0), _SinkHandler)
        self._sink.owner = self
        self._sink_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ endpoints
    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """Base URL; the SDK HTTP exporters need ``+ "/v1/traces"`` / ``"/v1/metrics"`` / ``"/v1/logs"`` when passed explicitly."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def sink_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._sink.server_address[1]}"

    def otel_env(self, protocol: str = "grpc") -> dict[str, str]:
        """Standard ``OTEL_EXPORTER_OTLP_*`` variables (for subprocesses); ``protocol`` is ``grpc`` or ``http/protobuf``."""
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_EXPORTER_OTLP_INSECURE": "true"}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> RotelCollector:
        if self._sink_thread is None:
            self._sink_thread = threading.Thread(target=self._sink.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-sink", daemon=True)
            self._sink_thread.start()
        last_error = ""
        for _attempt in range(3):  # the free-port probe can race with other processes; retry with new ports
            self.grpc_port, self.http_port = _free_port(), _free_port()
            while self.http_port == self.grpc_port:
                self.http_port = _free_port()
            if self._launch():
                return self
            last_error = self._log_tail()
        self.stop()
        raise RuntimeError(f"rotel-agent failed to start; log tail:\n{last_error}")

    def _command(self) -> list[str]:
        cmd = [
            rotel_agent_path(), "start",
            "--pid-file", str(self.pid_file),
            "--log-file", str(self.log_file),
            "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
            "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
            "--exporter", "otlp",
            "--otlp-exporter-protocol", "http",
            "--otlp-exporter-endpoint", self.sink_endpoint,
            "--otlp-exporter-compression", "none",
            "--otlp-exporter-retry-initial-backoff", "100ms",
            "--otlp-exporter-retry-max-backoff", "500ms",
            "--disable-batching",
        ]
        if self.debug_log:
            cmd += ["--debug-log", self.debug_log, "--debug-log-verbosity", "detailed"]
        return cmd + self.extra_args

    def _launch(self) -> bool:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
        self._log_handle = open(self.log_file, "ab")  # foreground mode logs to stdout; keep it in tmpdir
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches pytest, whose teardown stops rotel cleanly
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._reap()
                return False
            if _port_open(self.grpc_port) and _port_open(self.http_port):
                return True
            time.sleep(0.02)
        self._reap()
        return False

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """An outage: rotel is killed (SIGKILL); its ports refuse connections until `restart()`."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def restart(self) -> None:
        """rotel again, on the same ports (after `kill()`)."""
        if not self._launch():
            raise RuntimeError(f"rotel-agent failed to restart; log tail:\n{self._log_tail()}")

    def stop(self) -> None:
        """Terminate rotel (SIGTERM, then SIGKILL after 5 s) and the sink. Idempotent."""
        self._reap()
        if self._sink_thread is not None:
            self._sink.shutdown()
            self._sink_thread.join(timeout=5)
            self._sink_thread = None
        self._sink.server_close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> RotelCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ ingestion (sink thread)
    def _ingest(self, path: str, body: bytes) -> Any:
        if path.endswith("/v1/traces"):
            req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            new = [
                _span_dict(span, attributes_dict(rs.resource.attributes), ss.scope, ss.schema_url or rs.schema_url)
                for rs in req.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]
            with self._cond:
                self.raw_requests.append((path, req))
                self._spans.extend(new)
                self._cond.notify_all()
            return trace_service_pb2.ExportTraceServiceResponse()
        if path.endswith("/v1/metrics"):
            req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
            new = [
                _metric_dict(m, attributes_dict(rm.resource.attributes), sm.scope)
                for rm in req.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            ]
            with self._cond:
                self.raw_requests.append((path, req))
                self._metrics.extend(new)
                self._cond.notify_all()
            return metrics_service_pb2.ExportMetricsServiceResponse()
        if path.endswith("/v1/logs"):
            req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
            new = [
                _log_dict(r, attributes_dict(rl.resource.attributes), sl.scope)
                for rl in req.resource_logs
                for sl in rl.scope_logs
                for r in sl.log_records
            ]
            with self._cond:
                self.raw_requests.append((path, req))
                self._logs.extend(new)
                self._cond.notify_all()
            return logs_service_pb2.ExportLogsServiceResponse()
        raise ValueError(f"unexpected OTLP path {path}")

    # ------------------------------------------------------------------ read-back
    def spans(self) -> list[Span]:
        """All spans received so far, in arrival order (copies of the list; dicts are shared)."""
        with self._cond:
            return list(self._spans)

    def metrics(self) -> list[dict[str, Any]]:
        """Every metric record received (one per metric per export; cumulative exports repeat)."""
        with self._cond:
            return list(self._metrics)

    def logs(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._logs)

    @property
    def errors(self) -> list[str]:
        """Payloads the sink could not decode (should stay empty)."""
        return list(self._errors)

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()
            self._metrics.clear()
            self._logs.clear()
            self.raw_requests.clear()

    def find_spans(self, name: str | None = None, **attrs: Any) -> list[Span]:
        """Spans with ``name`` (if given) whose attributes contain every ``attrs`` item (dots as ``__``)."""
        wanted = {k.replace("__", "."): v for k, v in attrs.items()}
        return [
            s for s in self.spans()
            if (name is None or s["name"] == name) and all(k in s["attributes"] and s["attributes"][k] == v for k, v in wanted.items())
        ]

    def _wait(self, source: Callable[[], list[Any]], where: int | Callable[[Any], bool], count: int, timeout: float, what: str) -> list[Any]:
        if isinstance(where, int):
            predicate: Callable[[Any], bool] = lambda _x: True  # noqa: E731
            count = where
        else:
            predicate = where
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                items = [x for x in source() if predicate(x)]
                if len(items) >= count:
                    return items
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.25))
        seen = [x.get("name") for x in source()]
        raise TimeoutError(f"waited {timeout}s for {count} matching {what}; got {len(items)} matching, all received: {seen}; sink errors: {self._errors}")

    def wait_for_spans(self, where: int | SpanPredicate = 1, *, count: int = 1, timeout: float = 10.0) -> list[Span]:
        """Block until spans arrive; return them.

        ``where`` is either a total count (``wait_for_spans(2)``: at least 2 spans, returns all) or a predicate
        (``wait_for_spans(lambda s: s["name"] == "chat", count=1)``: returns the matching spans once at least
        ``count`` match). Raises ``TimeoutError`` listing the span names received so far.
        """
        return self._wait(lambda: self._spans, where, count, timeout, "spans")

    def wait_for_metrics(self, where: int | str | Callable[[dict[str, Any]], bool] = 1, *, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Like :meth:`wait_for_spans` for metric records; a ``str`` matches the metric name."""
        if isinstance(where, str):
            name = where
            where = lambda m: m["name"] == name  # noqa: E731
        return self._wait(lambda: self._metrics, where, count, timeout, "metrics")

    def wait_for_logs(self, where: int | Callable[[dict[str, Any]], bool] = 1, *, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        return self._wait(lambda: self._logs, where, count, timeout, "log records")

    def metric_points(self, name: str) -> list[dict[str, Any]]:
        """Data points of metric ``name`` across all exports, in arrival order."""
        return [p for m in self.metrics() if m["name"] == name for p in m["data_points"]]

    def latest_metric(self, name: str) -> dict[str, Any] | None:
        """The most recently received record for metric ``name`` (the current state for cumulative metrics)."""
        for m in reversed(self.metrics()):
            if m["name"] == name:
                return m
        return None

    @staticmethod
    def by_id(spans: list[Span]) -> Mapping[str, Span]:
        return {s["span_id"]: s for s in spans}
