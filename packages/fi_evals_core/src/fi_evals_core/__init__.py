"""fi-evals-core: the telemetry core shared by traceai-huggingface and traceai-vllm, and NLI evaluators.

The evaluator names load lazily, so instrumenting an app never imports them.
"""

from typing import Any

from .telemetry import ConfigError, Telemetry, TelemetryConfig, register
from .telemetry.handoff import eval_context

__version__ = "0.1.0"

_EVALS = {
    "FactualConsistency", "Faithfulness", "Groundedness", "TaskCompletion", "EvalResult",
    "ClaimResult", "NLIScorer", "Evaluator", "LabelError",
}
_DATASETS = {"Dataset", "compare"}

__all__ = ["ConfigError", "Telemetry", "TelemetryConfig", "eval_context", "register", "__version__", *sorted(_EVALS | _DATASETS)]


def __getattr__(name: str) -> Any:
    if name in _EVALS:
        from . import evals

        return getattr(evals, name)
    if name in _DATASETS:
        from .evals import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'fi_evals_core' has no attribute {name!r}")
