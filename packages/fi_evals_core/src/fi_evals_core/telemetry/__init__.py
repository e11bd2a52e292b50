"""The shared telemetry runtime of traceai-huggingface and traceai-vllm."""

from . import attributes, handoff
from .config import ConfigError, ContentCapture, TelemetryConfig, get_config, set_config
from .content import ContentPolicy, strip_credentials
from .exporters import JsonlSpanExporter
from .framework import torch_framework_attributes
from .gpu import DeviceMemory, GpuMemorySource, GpuMonitor
from .instrumentor import PatchingInstrumentor
from .patching import Patcher
from .emit import Emitter
from .finished import FinishedRequest, SpanIds, error_details
from .request import RequestSpan
from .runtime import TelemetryRuntime, set_gpu_memory_source
from .setup import Telemetry, register
from .sinks import ExportProcessSink, RequestSink, WorkerSink
from .streams import ObservedAsyncStream, ObservedStream, StreamObserver
from .worker import drain, finish_queued, get_worker, hook_flushes

__all__ = [
    "ConfigError",
    "ContentCapture",
    "ContentPolicy",
    "DeviceMemory",
    "Emitter",
    "ExportProcessSink",
    "FinishedRequest",
    "GpuMemorySource",
    "GpuMonitor",
    "JsonlSpanExporter",
    "ObservedAsyncStream",
    "ObservedStream",
    "Patcher",
    "PatchingInstrumentor",
    "RequestSink",
    "RequestSpan",
    "SpanIds",
    "StreamObserver",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryRuntime",
    "WorkerSink",
    "attributes",
    "handoff",
    "drain",
    "error_details",
    "finish_queued",
    "hook_flushes",
    "get_worker",
    "get_config",
    "register",
    "set_config",
    "set_gpu_memory_source",
    "strip_credentials",
    "torch_framework_attributes",
]
