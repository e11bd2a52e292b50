"""Configuration from environment variables, parsed once, in one place.

`EnvReader` is the one parser of every variable this project reads (the telemetry's here, the
evaluators' in `fi_evals_core.evals.config`), and `ConfigError` its one error: a bad value fails
once, with a message naming the variable and what it accepts, instead of being silently replaced
by a default deep inside an exporter. Both instrumentors and `register()` read the same
`TelemetryConfig`, so a value means the same thing everywhere.
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
METRICS_TEMPORALITIES = ("cumulative", "delta", "lowmemory")
HISTOGRAM_AGGREGATIONS = ("explicit_bucket_histogram", "base2_exponential_bucket_histogram")
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
    otlp_headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # for traces
    otlp_metrics_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    otlp_timeout_s: float = 10.0
    metrics_temporality: str = "cumulative"  # OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
    histogram_aggregation: str = "explicit_bucket_histogram"  # OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    traces_file: Path = Path(DEFAULT_TRACES_FILE)
    capture_content: ContentCapture = ContentCapture.NO_CONTENT
    max_content_length: int = 8192
    gpu_poll_interval_s: float = 1.0
    export_process: bool = False  # TRACEAI_EXPORT_PROCESS: export from a child process (export_process.py)
    export_buffer_spans: int = 10_000  # TRACEAI_EXPORT_BUFFER_SPANS: spans kept through a collector outage

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "TelemetryConfig":
        env = EnvReader(environ)
        protocol = env.choice("OTEL_EXPORTER_OTLP_PROTOCOL", OTLP_PROTOCOLS, "grpc")
        protocol = env.choice("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", OTLP_PROTOCOLS, protocol)
        base_endpoint = env.url("OTEL_EXPORTER_OTLP_ENDPOINT")
        traces_endpoint = env.url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _signal_endpoint(
            base_endpoint, protocol, "traces"
        )
        metrics_endpoint = env.url("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or _signal_endpoint(
            base_endpoint, protocol, "metrics"
        )
        traces_exporter = env.choice("OTEL_TRACES_EXPORTER", TRACES_EXPORTERS, "otlp" if traces_endpoint else "jsonl")
        if traces_exporter == "otlp" and not traces_endpoint:
            raise ConfigError(
                "OTEL_TRACES_EXPORTER",
                "otlp",
                "otlp needs OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            )
        metrics_exporter = env.choice(
            "OTEL_METRICS_EXPORTER", METRICS_EXPORTERS, "otlp" if metrics_endpoint else "none"
        )
        if metrics_exporter == "otlp" and not metrics_endpoint:
            raise ConfigError(
                "OTEL_METRICS_EXPORTER",
                "otlp",
                "otlp needs OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            )
        sampler = env.choice("OTEL_TRACES_SAMPLER", SAMPLERS, "parentbased_always_on")
        sampler_arg = None
        if sampler.endswith("traceidratio"):
            sampler_arg = env.number("OTEL_TRACES_SAMPLER_ARG", 1.0, low=0.0, high=1.0)
        common = env.headers("OTEL_EXPORTER_OTLP_HEADERS")
        headers = {**common, **env.headers("OTEL_EXPORTER_OTLP_TRACES_HEADERS")}
        metrics_headers = {**common, **env.headers("OTEL_EXPORTER_OTLP_METRICS_HEADERS")}
        # user:password@ in an endpoint: sent as HTTP basic authentication (as curl would), and the
        # endpoint kept without it, so no exporter or log line ever shows it
        (traces_endpoint, metrics_endpoint), basic = _split_credentials(traces_endpoint, metrics_endpoint)
        if basic is not None:
            headers.setdefault("authorization", basic)
            metrics_headers.setdefault("authorization", basic)
        return cls(
            service_name=env.text("OTEL_SERVICE_NAME", "unknown_service"),
            traces_exporter=traces_exporter,
            metrics_exporter=metrics_exporter,
            otlp_protocol=protocol,
            otlp_traces_endpoint=traces_endpoint,
            otlp_metrics_endpoint=metrics_endpoint,
            otlp_headers=headers,
            otlp_metrics_headers=metrics_headers,
            otlp_timeout_s=env.number("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000.0, low=1.0) / 1000.0,
            metrics_temporality=env.choice("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                                           METRICS_TEMPORALITIES, "cumulative"),
            histogram_aggregation=env.choice("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
                                             HISTOGRAM_AGGREGATIONS, "explicit_bucket_histogram"),
            sampler=sampler,
            sampler_arg=sampler_arg,
            traces_file=Path(env.text("TRACEAI_TRACES_FILE", DEFAULT_TRACES_FILE)),
            capture_content=env.capture(),
            max_content_length=env.integer("TRACEAI_MAX_CONTENT_LENGTH", 8192, low=1),
            gpu_poll_interval_s=env.number("TRACEAI_GPU_POLL_INTERVAL", 1.0, low=0.01),
            export_process=env.flag("TRACEAI_EXPORT_PROCESS", False),
            export_buffer_spans=env.integer("TRACEAI_EXPORT_BUFFER_SPANS", 10_000, low=0),
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


class EnvReader:
    """The one parser of this project's environment variables (OTEL_*, TRACEAI_*, FI_EVALS_*): each
    method reads one variable, treats empty as unset (the default), and raises `ConfigError` naming
    the variable and what it accepts."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if environ is None else environ

    def text(self, name: str, default: str | None = None) -> str | None:
        return (self.env.get(name) or "").strip() or default

    def choice(self, name: str, accepted: tuple[str, ...], default: str) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        value = raw.lower()
        if value not in accepted:
            raise ConfigError(name, raw, "accepted values are " + ", ".join(accepted))
        return value

    def flag(self, name: str, default: bool) -> bool:
        """An on/off variable: 1/0, true/false, yes/no, on/off."""
        raw = self.text(name)
        if raw is None:
            return default
        value = raw.lower()
        if value in _ON:
            return True
        if value in _OFF:
            return False
        raise ConfigError(name, raw, "accepted values are 1/0, true/false, yes/no, on/off")

    def switch(self, name: str, *, old_name: str | None = None) -> str:
        """"auto", "on" or "off" (also 1/0, true/false, yes/no); `old_name` is read when `name` is unset."""
        if old_name is not None and self.text(name) is None and self.text(old_name) is not None:
            name = old_name
        raw = self.text(name)
        if raw is None or raw.lower() == "auto":
            return "auto"
        if raw.lower() in _ON:
            return "on"
        if raw.lower() in _OFF:
            return "off"
        raise ConfigError(name, raw, "accepted values are auto, on (1) or off (0)")

    def integer(self, name: str, default: int, *, low: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, raw, f"an integer >= {low} is expected") from None
        if value < low:
            raise ConfigError(name, raw, f"an integer >= {low} is expected")
        return value

    def number(self, name: str, default: float, *, low: float, high: float | None = None) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        expected = f"a number >= {low}" + (f" and <= {high}" if high is not None else "")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, raw, expected + " is expected") from None
        if value != value or value < low or (high is not None and value > high):
            raise ConfigError(name, raw, expected + " is expected")
        return value

    def url(self, name: str) -> str | None:
        raw = self.text(name)
        if raw is None:
            return None
        expected = "an http:// or https:// URL with a host (and a port from 1 to 65535, if any) is expected"
        try:
            parsed = urlparse(raw)
            port = parsed.port  # raises for a port that is not a number in range
        except ValueError:
            raise ConfigError(name, _without_userinfo(raw), expected) from None
        if (parsed.scheme not in ("http", "https") or not parsed.hostname or any(c.isspace() for c in raw)
                or port == 0):
            raise ConfigError(name, _without_userinfo(raw), expected)
        return raw.rstrip("/") if parsed.path in ("", "/") else raw

    def names(self, name: str, accepted: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated list of names, each one of `accepted`."""
        raw = self.text(name)
        if raw is None:
            return default
        names = tuple(n.strip() for n in raw.split(",") if n.strip())
        if not names or any(n not in accepted for n in names):
            raise ConfigError(name, raw, "comma-separated names from " + ", ".join(accepted))
        return names

    def headers(self, name: str) -> dict[str, str]:
        """W3C-baggage-style `key=value,key2=value2`, values URL-encoded (the OTLP exporter format)."""
        raw = self.text(name)
        headers: dict[str, str] = {}
        if raw is None:
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

    def capture(self, name: str = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT") -> ContentCapture:
        raw = self.text(name)
        if raw is None or raw.lower() == "false":
            return ContentCapture.NO_CONTENT
        if raw.lower() == "true":
            return ContentCapture.SPAN_ONLY
        try:
            return ContentCapture(raw.upper())
        except ValueError:
            accepted = "true, false, " + ", ".join(m.value for m in ContentCapture)
            raise ConfigError(name, raw, "accepted values are " + accepted) from None


_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def parse_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off variable (see `EnvReader.flag`)."""
    return EnvReader(env).flag(name, default)


def _without_userinfo(url: str) -> str:
    """For error messages: never echo a password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep and "@" in rest.split("/", 1)[0] else url


def _split_credentials(*urls: str | None) -> tuple[tuple[str | None, ...], str | None]:
    """The URLs without `user:password@`, and the first such credentials as a basic-auth header."""
    import base64

    out, basic = [], None
    for url in urls:
        parts = urlparse(url) if url else None
        if parts is None or (parts.username is None and parts.password is None):
            out.append(url)
            continue
        if basic is None:
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            basic = "Basic " + base64.b64encode(pair.encode()).decode()
        out.append(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
    return tuple(out), basic


def _signal_endpoint(base: str | None, protocol: str, signal: str) -> str | None:
    """The per-signal URL the OTLP spec derives from the base endpoint (HTTP appends /v1/<signal>)."""
    if base is None:
        return None
    return base if protocol == "grpc" else f"{base}/v1/{signal}"
