"""The four evaluators. Each turns its inputs into claims and premises, lets the shared NLI scorer
score every (chunk, claim) pair, and reads a verdict from the evidence in its own way:

| evaluator | claims from | premise | score | passes when |
| --- | --- | --- | --- | --- |
| `FactualConsistency` | response | reference | mean over claims of the best chunk's support | score >= threshold and no claim contradicted |
| `Faithfulness` | response | context passages | share of claims whose support >= `claim_threshold` | score >= threshold |
| `Groundedness` | response | context passages | the weakest claim's support | score >= threshold |
| `TaskCompletion` | expected output (given) / response (not) | response / task | mean support of the expected claims by the response / 1 - strongest contradiction of the task | score >= threshold |

A claim is "contradicted" when the chunk that supports it best also contradicts it: that chunk's
contradiction is at least 0.5 and above its support (3-way checkpoints only). A contradiction from
another chunk does not count: a claim supported at 0.92 by one passage is not vetoed by an
unrelated passage of a long document that the model reads as contradicting it at 0.95 (MiniCheck,
AlignScore and SummaC read the best chunk only, too). The verdict is read from the evidence, so the
fused and the PyTorch scoring paths share it. `Faithfulness` counts claims (a response with one
unsupported claim out of four scores 0.75 whatever the probabilities); `Groundedness` is as strong
as its weakest claim and says which passage grounds each claim.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from .config import EVALUATOR_NAMES, EvalsConfig
from .profiles import DEFAULT as DEFAULT_PROFILE
from .profiles import ScoringProfile
from .result import ClaimResult, EvalResult
from .scorer import (ClaimEvidence, NLIScorer, RequestPlan, ScorePlanner, ScoreRequest, is_shared_scorer,
                     shared_planner, shared_scorer)
from .text import has_words

CONTRADICTED = 0.5
_QUOTE = 160


@dataclass
class Task:
    """What one item asks the scorer, plus how to read the answer."""

    claims: list[str]
    premises: list[str]
    mode: str = ""


@dataclass
class Planned:
    """An item checked and cut for the model (`Evaluator.plan_batch`), waiting to be scored."""

    task: Task
    plan: RequestPlan


def require_text(name: str, value: Any) -> str:
    if value is None:
        raise ValueError(f"{name} is None: expected a non-empty string")
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} is empty")
    if not has_words(value):
        raise ValueError(f"{name} has no letters or digits to check: {value[:40]!r}")
    return value


def require_passages(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or value is None:
        return [require_text(name, value)]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a string or a list of strings, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} is an empty list")
    return [require_text(f"{name}[{i}]", passage) for i, passage in enumerate(value)]


def quote(text: str) -> str:
    text = " ".join(text.split())
    return f'"{text}"' if len(text) <= _QUOTE else f'"{text[:_QUOTE - 1]}…"'


def claim_result(evidence: ClaimEvidence) -> ClaimResult:
    """The claim, its best-supporting chunk, and that chunk's contradiction (`contradicting` is set
    when the claim is contradicted, see the module docstring)."""
    if not evidence.support:
        return ClaimResult(evidence.claim, 0.0, None, None, windows=evidence.windows, truncated=evidence.truncated)
    best = evidence.best()
    support, chunk = evidence.support[best], evidence.chunks[best]
    if not evidence.contradiction:
        return ClaimResult(evidence.claim, support, None, chunk, windows=evidence.windows,
                           truncated=evidence.truncated)
    contradiction = evidence.contradiction[best]
    contradicted = contradiction >= CONTRADICTED and contradiction > support
    return ClaimResult(evidence.claim, support, contradiction, chunk, chunk if contradicted else None,
                       evidence.windows, evidence.truncated)


def is_contradicted(claim: ClaimResult) -> bool:
    return claim.contradicting is not None


class Evaluator:
    """Base: input checks, batching through the scorer, error results for bad items."""

    name: ClassVar[str]
    required: ClassVar[tuple[str, ...]]
    optional: ClassVar[tuple[str, ...]] = ()
    default_threshold: ClassVar[float] = 0.5

    def __init__(self, *, threshold: float | None = None, scorer: NLIScorer | None = None,
                 model: str | None = None, device: str | None = None, profile: str | None = None) -> None:
        threshold = self.default_threshold if threshold is None else threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a number from 0 to 1, got {threshold!r}")
        self.threshold = float(threshold)
        self._scorer = scorer
        self._model = model
        self._device = device
        self._profile = profile

    @property
    def scorer(self) -> NLIScorer:
        """The scorer given, else the process's shared one for FI_EVALS_MODEL (loaded on first use)."""
        if self._scorer is None:
            self._scorer = shared_scorer(self._model, self._device, profile=self._profile)
        return self._scorer

    @property
    def planner(self) -> ScorePlanner:
        """What cuts inputs into claims and chunks: the scorer once loaded, else its checkpoint's
        tokenizer and config alone (so CPU tasks plan rows without loading a model)."""
        if self._scorer is not None:
            return self._scorer
        return shared_planner(self._model, profile=self._profile)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.required + self.optional

    def unloaded(self) -> "Evaluator":
        """A copy without its loaded model, for another process to load its own from the same
        settings; one built with a scorer object cannot be copied so (ValueError)."""
        if self._scorer is not None and not is_shared_scorer(self._scorer):
            raise ValueError("its evaluator was given a scorer object, which cannot be sent to another process; "
                             "build it with model=, device= and profile= instead")
        evaluator = copy.copy(self)
        evaluator._scorer = None
        return evaluator

    def settings(self) -> dict[str, Any]:
        """What decides this evaluator's results besides its inputs (the device aside: it changes
        scores only by rounding); a results folder records them to refuse a different run."""
        if self._scorer is not None and not is_shared_scorer(self._scorer):
            return {"evaluator": type(self).__name__, "threshold": self.threshold, "scorer": self._scorer.name}
        config = EvalsConfig.from_env()
        return {"evaluator": type(self).__name__, "threshold": self.threshold, "model": self._model or config.model,
                "dtype": config.dtype, "labels": list(config.labels) if config.labels else None,
                "profile": self._profile or config.profile}

    def evaluate(self, **inputs: Any) -> EvalResult:
        """Score one item. Bad input raises `ValueError` naming the argument."""
        scorer = self.scorer
        task = self.prepare(inputs)
        return self.judge_task(task, scorer.score([ScoreRequest(task.claims, task.premises)])[0])

    def evaluate_batch(self, items: Iterable[Mapping[str, Any]],
                       on_progress: Callable[[int, int], None] | None = None) -> list[EvalResult]:
        """Score many items in one batched pass; a bad item gets an error result of its own (and every
        item the scorer's load error, tried once, when it cannot load).
        `on_progress(done, total)`: the (chunk, claim) pairs scored so far, after each model batch."""
        items = list(items)
        try:
            self.scorer  # noqa: B018 - loaded first: it plans too
        except Exception as exc:  # noqa: BLE001 - no model: every item gets this error
            return [EvalResult.from_error(self.name, exc, self.threshold) for _ in items]
        return self.score_planned(self.plan_batch(items), on_progress)

    def plan_batch(self, items: Iterable[Mapping[str, Any]]) -> list[Planned | EvalResult]:
        """Each item checked and cut into claims and chunks by the planner (no model): a `Planned`, or
        the error result of a bad item (every item's, when the planner cannot load)."""
        items = list(items)
        try:
            planner = self.planner
        except Exception as exc:  # noqa: BLE001 - no tokenizer: every item gets this error
            return [EvalResult.from_error(self.name, exc, self.threshold) for _ in items]
        prepared: list[Any] = []
        for item in items:
            try:
                prepared.append(self.prepare(item))
            except (ValueError, TypeError) as exc:
                prepared.append(EvalResult.from_error(self.name, exc, self.threshold))
        tasks = [(i, t) for i, t in enumerate(prepared) if isinstance(t, Task)]
        requests = [ScoreRequest(t.claims, t.premises) for _, t in tasks]
        try:
            plans: list[Any] = planner.plan(requests)
        except Exception:  # noqa: BLE001 - find the item that fails, plan the rest
            plans = [_alone(planner.plan, r) for r in requests]
        for (index, task), plan in zip(tasks, plans):
            prepared[index] = (EvalResult.from_error(self.name, plan, self.threshold)
                               if isinstance(plan, BaseException) else Planned(task, plan))
        return prepared

    def score_planned(self, planned: Sequence[Planned | EvalResult],
                      on_progress: Callable[[int, int], None] | None = None) -> list[EvalResult]:
        """The verdicts of planned items, all scored in one batched pass (error results kept as they
        are; a planned item the scorer fails on gets its error)."""
        results: list[Any] = list(planned)
        todo = [(i, p) for i, p in enumerate(results) if isinstance(p, Planned)]
        try:
            scorer = self.scorer
        except Exception as exc:  # noqa: BLE001 - no model: every planned item gets this error
            for index, _ in todo:
                results[index] = EvalResult.from_error(self.name, exc, self.threshold)
            return results
        evidence: list[Any]
        try:
            evidence = scorer.score_plans([p.plan for _, p in todo], on_progress)
        except Exception:  # noqa: BLE001 - find the item that fails, score the rest
            evidence = [_alone(scorer.score_plans, p.plan) for _, p in todo]
        for (index, item), item_evidence in zip(todo, evidence):
            if isinstance(item_evidence, BaseException):
                results[index] = EvalResult.from_error(self.name, item_evidence, self.threshold)
            else:
                results[index] = self.judge_task(item.task, item_evidence)
        return results

    def prepare(self, inputs: Mapping[str, Any]) -> Task:
        unknown = sorted(set(inputs) - set(self.inputs))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected input(s) {', '.join(unknown)}; "
                            f"it takes {', '.join(self.inputs)}")
        for name in self.required:
            if name not in inputs:
                raise ValueError(f"{name} is missing: {type(self).__name__} needs {', '.join(self.required)}")
        return self._prepare(**inputs)

    def _prepare(self, **inputs: Any) -> Task:
        raise NotImplementedError

    def judge_task(self, task: Task, evidence: Sequence[ClaimEvidence]) -> EvalResult:
        return self.judge(evidence)

    def judge(self, evidence: Sequence[ClaimEvidence]) -> EvalResult:
        """The verdict from the evidence: the seam where tests inject probability tables."""
        raise NotImplementedError

    @property
    def profile(self) -> ScoringProfile:
        """The scorer's scoring profile (the default before a scorer is loaded, or for a stand-in)."""
        return getattr(self._scorer, "profile", DEFAULT_PROFILE)

    def claims(self, name: str, value: Any) -> list[str]:
        """The claims `value` (checked as text) is scored as, by the scorer's profile."""
        return self.planner.profile.claims(require_text(name, value))

    def passes(self, score: float) -> bool:
        return self.profile.passes(score, self.threshold)

    def _result(self, score: float, passed: bool, reason: str, claims: list[ClaimResult]) -> EvalResult:
        cut = [c for c in claims if c.truncated]
        if cut:  # what a reference profile cuts, it says
            reason += (f"; {len(cut)} claim(s) cut at the model's {getattr(self._scorer, 'max_length', '?')}-token "
                       f"window, as the {self.profile.name} reference does")
        return EvalResult(self.name, score, passed, reason, self.threshold, claims)


class FactualConsistency(Evaluator):
    """Does the response agree with a reference, and contradict none of it?"""

    name = "factual_consistency"
    required = ("response", "reference")

    def _prepare(self, response: Any = None, reference: Any = None) -> Task:
        return Task(self.claims("response", response), [require_text("reference", reference)])

    def judge(self, evidence: Sequence[ClaimEvidence]) -> EvalResult:
        claims = [claim_result(e) for e in evidence]
        score = sum(c.support for c in claims) / len(claims)
        contradicted = [c for c in claims if is_contradicted(c)] if self.profile.veto else []
        passed = self.passes(score) and not contradicted
        if contradicted:
            worst = max(contradicted, key=lambda c: c.contradiction or 0.0)
            reason = (f"{len(contradicted)} of {len(claims)} claims contradicted by the reference; "
                      f"strongest: {quote(worst.claim)} (contradiction {worst.contradiction:.2f}"
                      f"{_against(worst)})")
        else:
            weakest = min(claims, key=lambda c: c.support)
            reason = (f"mean support {score:.2f} over {len(claims)} claims; least supported: "
                      f"{quote(weakest.claim)} (support {weakest.support:.2f}{_by(weakest)})")
        return self._result(score, passed, reason, claims)


class Faithfulness(Evaluator):
    """What share of the response's claims does the retrieved context support?"""

    name = "faithfulness"
    required = ("response", "context")
    default_threshold = 0.75

    def __init__(self, *, claim_threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= claim_threshold <= 1:
            raise ValueError(f"claim_threshold must be from 0 to 1, got {claim_threshold!r}")
        self.claim_threshold = claim_threshold

    def _prepare(self, response: Any = None, context: Any = None) -> Task:
        return Task(self.claims("response", response), require_passages("context", context))

    def judge(self, evidence: Sequence[ClaimEvidence]) -> EvalResult:
        claims = [claim_result(e) for e in evidence]
        unsupported = [c for c in claims if c.support < self.claim_threshold]
        score = (len(claims) - len(unsupported)) / len(claims)
        reason = f"{len(claims) - len(unsupported)} of {len(claims)} claims supported by the context"
        if unsupported:
            weakest = min(unsupported, key=lambda c: c.support)
            reason += f"; unsupported: {quote(weakest.claim)} (support {weakest.support:.2f}{_by(weakest)})"
        return self._result(score, self.passes(score), reason, claims)


class Groundedness(Evaluator):
    """Is every claim of the response grounded in some passage? As strong as its weakest claim."""

    name = "groundedness"
    required = ("response", "context")

    def _prepare(self, response: Any = None, context: Any = None) -> Task:
        return Task(self.claims("response", response), require_passages("context", context))

    def judge(self, evidence: Sequence[ClaimEvidence]) -> EvalResult:
        claims = [claim_result(e) for e in evidence]
        weakest = min(claims, key=lambda c: c.support)
        passage = f", best passage {weakest.evidence.passage}" if weakest.evidence else ""
        reason = (f"weakest of {len(claims)} claims: {quote(weakest.claim)} "
                  f"(support {weakest.support:.2f}{passage}{_by(weakest)})")
        return self._result(weakest.support, self.passes(weakest.support), reason, claims)


class TaskCompletion(Evaluator):
    """Did the response do what was asked?

    With `expected` (a reference answer): how much of it the response entails — each expected
    claim is checked against the response, and the score is their mean support (a recall, the
    reverse direction of `FactualConsistency`). Without: whether the response goes against the
    task — 1 minus the strongest contradiction between the task and any response claim; this
    needs a 3-way checkpoint and catches answers that ignore explicit instructions, not wrong ones.
    """

    name = "task_completion"
    required = ("task", "response")
    optional = ("expected",)

    def _prepare(self, task: Any = None, response: Any = None, expected: Any = None) -> Task:
        require_text("task", task)
        response = require_text("response", response)
        if expected is not None:
            return Task(self.claims("expected", expected), [response], mode="expected")
        if self.planner.labels.contradiction is None:
            raise ValueError("expected is missing: without an expected output TaskCompletion needs a "
                             "3-way NLI checkpoint (this one has no contradiction class)")
        return Task(self.claims("response", response), [task], mode="task")

    def judge_task(self, task: Task, evidence: Sequence[ClaimEvidence]) -> EvalResult:
        return self.judge(evidence, against_expected=task.mode == "expected")

    def judge(self, evidence: Sequence[ClaimEvidence], *, against_expected: bool = True) -> EvalResult:
        claims = [claim_result(e) for e in evidence]
        if against_expected:
            score = sum(c.support for c in claims) / len(claims)
            weakest = min(claims, key=lambda c: c.support)
            reason = (f"the response covers the expected answer with mean support {score:.2f}; "
                      f"least covered: {quote(weakest.claim)} (support {weakest.support:.2f})")
        else:  # every part of the task binds: the strongest contradiction from any chunk of it counts
            strongest = [max(e.contradiction or [0.0]) for e in evidence]
            worst = max(range(len(claims)), key=strongest.__getitem__)
            score = 1.0 - strongest[worst]
            reason = (f"no expected output given; strongest conflict with the task: {quote(claims[worst].claim)} "
                      f"(contradiction {strongest[worst]:.2f})")
        return self._result(score, self.passes(score), reason, claims)


def _alone(step: Callable[[list[Any]], list[Any]], item: Any) -> Any:
    """`step` on one item alone: its result, or the exception it raised (that item's error)."""
    try:
        return step([item])[0]
    except Exception as exc:  # noqa: BLE001 - becomes this item's error result
        return exc


def _by(claim: ClaimResult) -> str:
    return f"; best premise span: {quote(claim.evidence.text)}" if claim.evidence else ""


def _against(claim: ClaimResult) -> str:
    return f"; against: {quote(claim.contradicting.text)}" if claim.contradicting else ""


EVALUATORS: dict[str, type[Evaluator]] = {
    cls.name: cls for cls in (FactualConsistency, Faithfulness, Groundedness, TaskCompletion)
}
assert tuple(sorted(EVALUATORS)) == tuple(sorted(EVALUATOR_NAMES)), "config.EVALUATOR_NAMES is out of date"


def evaluator_class(name: str) -> type[Evaluator]:
    """Look an evaluator up by its name (`factual_consistency`) or class name (`FactualConsistency`)."""
    key = name.strip()
    for cls in EVALUATORS.values():
        if key in (cls.name, cls.__name__):
            return cls
    raise ValueError(f"unknown evaluator {name!r}: choose from {', '.join(EVALUATORS)}")
