"""fi-evals-core: the telemetry core shared by traceai-huggingface and traceai-vllm."""

from .telemetry import ConfigError, Telemetry, TelemetryConfig, register

__version__ = "0.1.0"

__all__ = ["ConfigError", "Telemetry", "TelemetryConfig", "register", "__version__"]
