"""traceai-vllm: OpenTelemetry instrumentation for vLLM (not implemented yet; see README)."""

__version__ = "0.0.1"
