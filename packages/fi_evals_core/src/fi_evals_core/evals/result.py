"""What an evaluation returns: a score, a verdict, a reason, and the evidence per claim."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Chunk:
    """A piece of a premise that fits the model with a claim: `text == passage_text[start:end]`."""

    text: str
    passage: int  # index of the passage in the premise list (0 when the premise is one string)
    start: int
    end: int


@dataclass(frozen=True)
class ClaimResult:
    """One claim and the premise chunk that supports it best."""

    claim: str
    support: float  # probability that the best chunk supports the claim
    contradiction: float | None  # the best chunk's contradiction probability; None for 2-way checkpoints
    evidence: Chunk | None  # the best-supporting chunk
    contradicting: Chunk | None = None  # the best chunk again when it contradicts the claim (the veto)
    windows: int = 1  # >1: the claim was longer than the model's claim budget, scored as its weakest window
    truncated: bool = False  # a reference profile cut one of its pairs at the window, as its reference does


@dataclass
class EvalResult:
    """The outcome of one evaluation.

    An item that could not be scored (bad input, a scorer failure) has `score`/`passed` None and
    `error_type` (the exception's class name, as OpenTelemetry's `error.type`) and `reason` set.
    """

    name: str
    score: float | None
    passed: bool | None
    reason: str
    threshold: float | None = None
    claims: list[ClaimResult] = field(default_factory=list)
    error_type: str | None = None

    @property
    def label(self) -> str | None:
        """`pass` / `fail` (the `gen_ai.evaluation.score.label`), None when not scored."""
        if self.passed is None:
            return None
        return "pass" if self.passed else "fail"

    @property
    def ok(self) -> bool:
        return self.error_type is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["label"] = self.label
        return data

    @classmethod
    def from_error(cls, name: str, exc: BaseException, threshold: float | None = None) -> "EvalResult":
        return cls(name=name, score=None, passed=None, reason=str(exc), threshold=threshold,
                   error_type=type(exc).__name__)
