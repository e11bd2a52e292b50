"""NLI evaluators: score completions against references or retrieved context.

Importing this package is light; torch and transformers load with the first scorer.
"""

from .agreement import Agreement, measure_agreement
from .config import DEFAULT_MODEL, EvalsConfig
from .evaluators import (
    EVALUATORS,
    Evaluator,
    FactualConsistency,
    Faithfulness,
    Groundedness,
    TaskCompletion,
    evaluator_class,
)
from .labels import LabelError, LabelScheme
from .result import Chunk, ClaimResult, EvalResult
from .scorer import ClaimEvidence, NLIScorer, ScoreRequest, shared_scorer

__all__ = [
    "Agreement", "measure_agreement", "DEFAULT_MODEL", "EVALUATORS", "Chunk", "ClaimEvidence", "ClaimResult", "EvalResult",
    "EvalsConfig", "Evaluator", "FactualConsistency", "Faithfulness", "Groundedness", "LabelError",
    "LabelScheme", "NLIScorer", "ScoreRequest", "TaskCompletion", "evaluator_class", "shared_scorer",
]
