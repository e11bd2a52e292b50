"""OpenTelemetry instrumentation for Hugging Face: local transformers and InferenceClient.

    from traceai_huggingface import HuggingFaceInstrumentor
    HuggingFaceInstrumentor().instrument()

or, for every installed engine at once, `from fi_evals_core import register; register()`.
"""

from __future__ import annotations

from typing import Collection

from fi_evals_core.telemetry import Patcher, PatchingInstrumentor, TelemetryRuntime

from . import _hub, _transformers
from .package import _instruments
from .version import __version__

__all__ = ["HuggingFaceInstrumentor", "__version__"]

_HUB_CLIENTS = (
    ("huggingface_hub.inference._client", "InferenceClient", _hub.client_wrapper),
    ("huggingface_hub.inference._generated._async_client", "AsyncInferenceClient", _hub.async_client_wrapper),
)
_PIPELINES = (
    ("transformers.pipelines.text_generation", "TextGenerationPipeline", False),
    # transformers 4.x only; removed in 5.0
    ("transformers.pipelines.text2text_generation", "Text2TextGenerationPipeline", True),
)


class HuggingFaceInstrumentor(PatchingInstrumentor):
    """Spans for `generate`, text-generation pipelines and (Async)InferenceClient calls."""

    scope_name = __name__
    scope_version = __version__
    owner = "traceai-huggingface"

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def add_targets(self, patcher: Patcher, runtime: TelemetryRuntime) -> None:
        patcher.add("transformers.generation.utils", "GenerationMixin.generate",
                    _transformers.generate_wrapper(runtime))
        pipeline = _transformers.pipeline_wrapper(runtime)
        for module, cls, optional in _PIPELINES:
            patcher.add(module, f"{cls}.__call__", pipeline, optional=optional)
        for module, cls, make_wrapper in _HUB_CLIENTS:
            for method in ("text_generation", "chat_completion", "feature_extraction"):
                patcher.add(module, f"{cls}.{method}", make_wrapper(runtime, method))
            patcher.add(module, f"{cls}._inner_post", _hub.inject_trace_context)
