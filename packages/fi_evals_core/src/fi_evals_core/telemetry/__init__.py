"""The shared telemetry runtime of traceai-huggingface and traceai-vllm."""

from . import attributes, handoff
from .config import ConfigError, ContentCapture, TelemetryConfig, get_config, set_config
from .content import ContentPolicy, strip_credentials
from .exporters import JsonlSpanExporter
from .framework import torch_framework_attributes
from .gpu import DeviceMemory, GpuMemorySource, GpuMonitor
from .instrumentor import PatchingInstrumentor
from .patching import Patcher
from .request import RequestSpan
from .runtime import TelemetryRuntime, set_gpu_memory_source
from .setup import Telemetry, register
from .streams import ObservedAsyncStream, ObservedStream, StreamObserver
from .worker import drain, get_worker

__all__ = [
    "ConfigError",
    "ContentCapture",
    "ContentPolicy",
    "DeviceMemory",
    "GpuMemorySource",
    "GpuMonitor",
    "JsonlSpanExporter",
    "ObservedAsyncStream",
    "ObservedStream",
    "Patcher",
    "PatchingInstrumentor",
    "RequestSpan",
    "StreamObserver",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryRuntime",
    "attributes",
    "handoff",
    "drain",
    "get_worker",
    "get_config",
    "register",
    "set_config",
    "set_gpu_memory_source",
    "strip_credentials",
    "torch_framework_attributes",
]
