"""Configuration from environment variables, parsed once, in one place.

Both instrumentors and `register()` read the same `TelemetryConfig`, so a value means the same
thing everywhere and a bad value fails once, with a message naming the variable and what it
accepts, instead of being silently replaced by a default deep inside an exporter.
"""

from __future__ import annotations

import enum
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote, urlparse


class ConfigError(ValueError):
    """A configuration variable holds a value this project cannot use."""

    def __init__(self, variable: str, value: str, accepted: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}={value!r} is not valid: {accepted}")


class ContentCapture(enum.Enum):
    """Where prompt and completion text may be exported (GenAI content-capturing modes)."""

    NO_CONTENT = "NO_CONTENT"
    SPAN_ONLY = "SPAN_ONLY"
    EVENT_ONLY = "EVENT_ONLY"
    SPAN_AND_EVENT = "SPAN_AND_EVENT"

    @property
    def on_span(self) -> bool:
        return self in (ContentCapture.SPAN_ONLY, ContentCapture.SPAN_AND_EVENT)

    @property
    def on_event(self) -> bool:
        return self in (ContentCapture.EVENT_ONLY, ContentCapture.SPAN_AND_EVENT)

    @property
    def enabled(self) -> bool:
        return self is not ContentCapture.NO_CONTENT


TRACES_EXPORTERS = ("otlp", "jsonl", "console", "none")
METRICS_EXPORTERS = ("otlp", "console", "none")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_TRACES_FILE = "traceai-traces.jsonl"


@dataclass(frozen=True)
class TelemetryConfig:
    """Everything the telemetry runtime needs to know, resolved from the environment."""

    service_name: str = "unknown_service"
    traces_exporter: str = "jsonl"
    metrics_exporter: str = "none"
    otlp_protocol: str = "grpc"
    otlp_traces_endpoint: str | None = None
    otlp_metrics_endpoint: str | None = None
    otlp_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    otlp_timeout_s: float = 10.0
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    traces_file: Path = Path(DEFAULT_TRACES_FILE)
    capture_content: ContentCapture = ContentCapture.NO_CONTENT
    max_content_length: int = 8192
    gpu_poll_interval_s: float = 1.0
    export_process: bool = False  # TRACEAI_EXPORT_PROCESS: export from a child process (export_process.py)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "TelemetryConfig":
        env = os.environ if environ is None else environ
        get = lambda name: (env.get(name) or "").strip()  # noqa: E731 - empty means unset

        protocol = _choice(env, "OTEL_EXPORTER_OTLP_PROTOCOL", OTLP_PROTOCOLS, "grpc")
        protocol = _choice(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", OTLP_PROTOCOLS, protocol)
        base_endpoint = _url(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
        traces_endpoint = _url(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _signal_endpoint(
            base_endpoint, protocol, "traces"
        )
        metrics_endpoint = _url(env, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or _signal_endpoint(
            base_endpoint, protocol, "metrics"
        )
        traces_exporter = _choice(
            env, "OTEL_TRACES_EXPORTER", TRACES_EXPORTERS, "otlp" if traces_endpoint else "jsonl"
        )
        if traces_exporter == "otlp" and not traces_endpoint:
            raise ConfigError(
                "OTEL_TRACES_EXPORTER",
                "otlp",
                "otlp needs OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            )
        metrics_exporter = _choice(
            env, "OTEL_METRICS_EXPORTER", METRICS_EXPORTERS, "otlp" if metrics_endpoint else "none"
        )
        if metrics_exporter == "otlp" and not metrics_endpoint:
            raise ConfigError(
                "OTEL_METRICS_EXPORTER",
                "otlp",
                "otlp needs OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            )
        sampler = _choice(env, "OTEL_TRACES_SAMPLER", SAMPLERS, "parentbased_always_on")
        sampler_arg = None
        if sampler.endswith("traceidratio"):
            sampler_arg = _float(env, "OTEL_TRACES_SAMPLER_ARG", 1.0, low=0.0, high=1.0)
        headers = _headers(env, "OTEL_EXPORTER_OTLP_HEADERS")
        headers.update(_headers(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS"))
        return cls(
            service_name=get("OTEL_SERVICE_NAME") or "unknown_service",
            traces_exporter=traces_exporter,
            metrics_exporter=metrics_exporter,
            otlp_protocol=protocol,
            otlp_traces_endpoint=traces_endpoint,
            otlp_metrics_endpoint=metrics_endpoint,
            otlp_headers=headers,
            otlp_timeout_s=_float(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000.0, low=1.0) / 1000.0,
            sampler=sampler,
            sampler_arg=sampler_arg,
            traces_file=Path(get("TRACEAI_TRACES_FILE") or DEFAULT_TRACES_FILE),
            capture_content=_capture(env),
            max_content_length=_int(env, "TRACEAI_MAX_CONTENT_LENGTH", 8192, low=1),
            gpu_poll_interval_s=_float(env, "TRACEAI_GPU_POLL_INTERVAL", 1.0, low=0.01),
            export_process=parse_flag(env, "TRACEAI_EXPORT_PROCESS", False),
        )


_cached: TelemetryConfig | None = None
_cached_lock = threading.Lock()


def get_config() -> TelemetryConfig:
    """The process-wide configuration, read from the environment on first use."""
    global _cached
    with _cached_lock:
        if _cached is None:
            _cached = TelemetryConfig.from_env()
        return _cached


def set_config(config: TelemetryConfig | None) -> None:
    """Replace the process-wide configuration (None: read the environment again on next use)."""
    global _cached
    with _cached_lock:
        _cached = config


def _choice(env: Mapping[str, str], name: str, accepted: tuple[str, ...], default: str) -> str:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    value = raw.lower()
    if value not in accepted:
        raise ConfigError(name, raw, "accepted values are " + ", ".join(accepted))
    return value


def parse_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off variable: 1/0, true/false, yes/no, on/off; empty means `default`."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, raw, "accepted values are 1/0, true/false, yes/no, on/off")


def _int(env: Mapping[str, str], name: str, default: int, *, low: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, raw, f"an integer >= {low} is expected") from None
    if value < low:
        raise ConfigError(name, raw, f"an integer >= {low} is expected")
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, *, low: float, high: float | None = None
) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    expected = f"a number >= {low}" + (f" and <= {high}" if high is not None else "")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, raw, expected + " is expected") from None
    if value != value or value < low or (high is not None and value > high):
        raise ConfigError(name, raw, expected + " is expected")
    return value


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(name, raw, "an http:// or https:// URL with a host is expected")
    return raw.rstrip("/") if parsed.path in ("", "/") else raw


def _signal_endpoint(base: str | None, protocol: str, signal: str) -> str | None:
    """The per-signal URL the OTLP spec derives from the base endpoint (HTTP appends /v1/<signal>)."""
    if base is None:
        return None
    return base if protocol == "grpc" else f"{base}/v1/{signal}"


def _headers(env: Mapping[str, str], name: str) -> dict[str, str]:
    """W3C-baggage-style `key=value,key2=value2`, values URL-encoded (the OTLP exporter format)."""
    raw = (env.get(name) or "").strip()
    headers: dict[str, str] = {}
    if not raw:
        return headers
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # Never echo the value: headers carry credentials.
            raise ConfigError(name, "<redacted>", "comma-separated key=value pairs are expected")
        headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


def _capture(env: Mapping[str, str]) -> ContentCapture:
    name = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
    raw = (env.get(name) or "").strip()
    if not raw or raw.lower() == "false":
        return ContentCapture.NO_CONTENT
    if raw.lower() == "true":
        return ContentCapture.SPAN_ONLY
    try:
        return ContentCapture(raw.upper())
    except ValueError:
        accepted = "true, false, " + ", ".join(m.value for m in ContentCapture)
        raise ConfigError(name, raw, "accepted values are " + accepted) from None
