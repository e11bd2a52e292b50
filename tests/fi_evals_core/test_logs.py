"""traceai's start-up line and warnings reach the operator even when a dependency muted the root
logger; an application's own logging configuration is respected; TRACEAI_LOG_LEVEL silences."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fi_evals_core.telemetry import ConfigError
from fi_evals_core.telemetry.logs import make_visible

PROGRAM = Path(__file__).resolve().parent / "programs" / "startup_log_line.py"
# credentials in the endpoint must never be printed
ENDPOINT = "http://operator:s3cret@127.0.0.1:9"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEAI_", "FI_EVALS_"))}
    environ.update(env)
    return subprocess.run([sys.executable, str(PROGRAM), ENDPOINT, *args], env=environ, capture_output=True,
                          text=True, timeout=120)


def test_one_start_up_line_and_warnings_reach_stderr_when_the_root_logger_is_muted():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "traceai: " in line]
    (start,) = [line for line in lines if "spans to" in line]
    assert "INFO fi_evals_core.telemetry.setup" in start
    assert "instrumented " in start  # the installed instrumentors, by name
    assert "spans to OTLP grpc http://127.0.0.1:9" in start and "metrics to OTLP grpc http://127.0.0.1:9" in start
    assert "sampler traceidratio 0.25" in start and "content capture NO_CONTENT" in start
    assert "inline evaluation off" in start
    assert "s3cret" not in proc.stderr and "operator:" not in proc.stderr
    assert "traceai warning for the operator" in proc.stderr


def test_an_applications_logging_configuration_is_respected():
    proc = _run("configured")
    assert proc.returncode == 0, proc.stderr
    # its root handler (stdout, WARNING) gets traceai's warning once; nothing goes to stderr besides
    assert proc.stdout.count("APP fi_evals_core.telemetry.test traceai warning for the operator") == 1
    assert "traceai warning" not in proc.stderr and "spans to" not in proc.stderr


def test_traceai_log_level_silences_the_start_up_line():
    proc = _run(TRACEAI_LOG_LEVEL="warning")
    assert proc.returncode == 0, proc.stderr
    assert "spans to" not in proc.stderr and "traceai warning for the operator" in proc.stderr


def test_a_bad_log_level_names_the_variable():
    with pytest.raises(ConfigError, match="TRACEAI_LOG_LEVEL='loud'"):
        make_visible({"TRACEAI_LOG_LEVEL": "loud"})


def test_credentials_in_an_endpoint_become_basic_auth_and_leave_the_url():
    from fi_evals_core.telemetry import TelemetryConfig

    config = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://op%40corp:s3cret@collector:4318",
                                       "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert config.otlp_traces_endpoint == "https://collector:4318/v1/traces"
    assert config.otlp_metrics_endpoint == "https://collector:4318/v1/metrics"
    assert config.otlp_headers["authorization"] == "Basic " + __import__("base64").b64encode(b"op@corp:s3cret").decode()
    assert "s3cret" not in repr(config)
    explicit = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://op:s3cret@collector:4317",
                                         "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc"})
    assert explicit.otlp_headers["authorization"] == "Bearer abc"  # the header given wins
    assert explicit.otlp_traces_endpoint == "http://collector:4317"


@pytest.mark.parametrize("message, secret, kept", [
    ("401 Client Error: Unauthorized for url: http://alice:s3cret@10.0.0.1:8080/v1/chat", "s3cret",
     "http://10.0.0.1:8080/v1/chat"),
    ("GET https://x.io/generate?api_key=abc123def&stream=1 failed", "abc123def", "stream=1"),
    ("request headers {'Authorization': 'Bearer hf_abcdefgh1234'}", "hf_abcdefgh1234", "request headers"),
    ("proxy said: authorization: Basic YWxpY2U6czNjcmV0", "YWxpY2U6czNjcmV0", "proxy said"),
    ("x-api-key=sk-12345678 rejected", "sk-12345678", "rejected"),
])
def test_error_messages_lose_their_credentials(message, secret, kept):
    from fi_evals_core.telemetry import error_details

    error_type, description = error_details(RuntimeError(message))
    assert error_type == "RuntimeError"
    assert secret not in description and kept in description


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://collector:99999", "http://collector:abc",
                                      "http://col lector:4317", "http://op:s3cret@collector:0", "http://:4317"])
def test_a_malformed_endpoint_is_an_error_naming_the_variable_without_the_password(endpoint):
    from fi_evals_core.telemetry import TelemetryConfig

    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT=") as err:
        TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    assert "s3cret" not in str(err.value)
