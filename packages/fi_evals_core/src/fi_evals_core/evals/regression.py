"""Pass-rate regressions between two results sets (a baseline checkpoint and a candidate).

Per evaluation, and per cohort (all rows, then each value of each `by` column), the candidate's
pass rate is set against the baseline's.

The gate fails closed. A row whose evaluation errored is a failure of its side, never absent data
(it is also counted apart, in `errors`). A side where more than `max_error_rate` of an evaluation's
rows errored (a scorer that did not load, a wrong device or labels: every row errors) is not
compared at all: `BrokenResults` names the side, the share and the most common cause (`fi-evals
compare` exits 2). A candidate with fewer rows of an evaluation than the baseline is a `problem`
that fails the gate like a regression (rows went missing).

Paired or not. The same golden rows scored for two checkpoints are paired data: rows are matched
by their `row_id` (written by `Dataset.run`: the dataset's id column, else a hash of the row's
inputs other than the response) or by an `id_column` given to `compare`. When every row of each
side has a key, the keys are unique, and both sides hold the same keys, the comparison is paired;
otherwise it is unpaired and says why (`Comparison.pairing`).

The paired interval. With a = both pass, b = only the candidate passes, c = only the baseline
passes, d = both fail (n pairs; an error is a fail), d = p_c - p_b = (b - c) / n and the 95 %
interval is Newcombe's square-and-add interval for paired proportions (Newcombe 1998, "Improved
confidence intervals for the difference between binomial proportions based on paired data",
Statistics in Medicine 17:2635-2650, method 10; the worked form in Altman et al., "Statistics with
Confidence", 2nd ed., ch. 6): each side's Wilson interval (l, u), and phi, the correlation of the
two verdicts (A = (a+b)(c+d)(a+c)(b+d), B = ad - bc; phi = (B - n/2)/sqrt(A) when B > n/2,
B/sqrt(A) when B < 0, else 0):

    lower = d - sqrt((p_c - l_c)^2 - 2 phi (p_c - l_c)(u_b - p_b) + (u_b - p_b)^2)
    upper = d + sqrt((p_b - l_b)^2 - 2 phi (p_b - l_b)(u_c - p_c) + (u_c - p_c)^2)

Most rows get the same verdict from both checkpoints, so phi is large and the paired interval far
narrower than the unpaired one: a 10-row drop in a cohort of 85 (60 -> 50 passes, no row gained)
is [-18.9, -4.5] points paired and [-25.4, +2.6] unpaired. McNemar's exact test (two-sided, on the
b + c discordant pairs: p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2)) is reported
beside it.

The unpaired interval. For two independent proportions the interval is Newcombe's hybrid score
interval (Newcombe 1998, "Interval estimation for the difference between independent proportions:
comparison of eleven methods", Statistics in Medicine 17:873-890, method 10), from each side's
Wilson score interval (l, u) without continuity correction:

    lower = d - sqrt((p_c - l_c)^2 + (u_b - p_b)^2)
    upper = d + sqrt((u_c - p_c)^2 + (p_b - l_b)^2)

Both keep near-nominal coverage for small n and for rates at 0 or 1 (where the Wald interval
collapses to a point) and need no iteration.

The rule. A cohort is a `regression` when its pass rate fell by more than `max_delta`
(change < -max_delta) *and* the interval's upper bound is below 0, i.e. the drop is both larger
than the tolerance and not explainable by sampling noise at that confidence. A 3-row cohort that
went from 3/3 to 1/3 passes fell 67 points, but its interval (-0.94, +0.06) holds 0: it is
reported, not flagged. `significant` says only that the interval excludes 0 (either direction).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Callable, Iterable, Mapping, Sequence

METHOD = "Newcombe hybrid score interval (Wilson, no continuity correction)"
PAIRED_METHOD = "Newcombe paired square-and-add interval (Wilson, phi-corrected) and McNemar's exact test"
ROW_ID = "row_id"  # the results column that pairs a row with the same golden row of another run
DEFAULT_MAX_ERROR_RATE = 0.01  # the share of an evaluation's rows that may error before results are refused


class BrokenResults(ValueError):
    """One side's results cannot be compared: too many of its rows errored."""


def error_summary(rows: Sequence[Mapping[str, Any]], name: str) -> tuple[int, int, str | None]:
    """(rows that errored in evaluation `name`, rows, the most common cause as "Type: reason")."""
    causes: dict[str, int] = {}
    errors = 0
    for row in rows:
        if row.get(f"{name}.passed") is None:
            errors += 1
            cause = error_cause(row.get(f"{name}.error_type"), row.get(f"{name}.reason"))
            causes[cause] = causes.get(cause, 0) + 1
    return errors, len(rows), max(causes, key=causes.__getitem__) if causes else None


def check_error_rate(rows: Sequence[Mapping[str, Any]], name: str, max_error_rate: float, what: str) -> None:
    """BrokenResults when more than `max_error_rate` of `rows` errored in evaluation `name`."""
    errors, total, cause = error_summary(rows, name)
    check_error_counts(errors, total, lambda: cause, name, max_error_rate, what)


def check_error_counts(errors: int, total: int, cause: Callable[[], str | None], name: str, max_error_rate: float,
                       what: str) -> None:
    """BrokenResults when more than `max_error_rate` of `total` rows errored in evaluation `name`; the
    most common cause is asked for only then (a results folder finds it with a filtered scan)."""
    if total == 0:
        raise BrokenResults(f"{what}: no rows of evaluation {name!r}")
    if errors / total > max_error_rate:
        raise BrokenResults(f"{what}: {errors} of {total} rows of evaluation {name!r} errored "
                            f"({errors / total:.1%}, more than the {max_error_rate:.1%} allowed by "
                            f"--max-error-rate); most common cause: {cause()}")


def error_cause(error_type: Any, reason: Any) -> str:
    """An errored row's cause as counted by `error_summary`: "Type: reason" on one line."""
    reason = " ".join(str(reason or "").split())
    return f"{error_type or 'error'}: {reason}".strip()


OVERALL = "(all)"
MISSING = "(missing)"


def z_value(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion successes / n (no continuity correction)."""
    if n <= 0:
        raise ValueError("n must be positive")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be from 0 to n={n}, got {successes}")
    z = z_value(confidence)
    p = successes / n
    centre = 2 * n * p + z * z
    spread = z * math.sqrt(z * z + 4 * n * p * (1 - p))
    denominator = 2 * (n + z * z)
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def newcombe_interval(successes_1: int, n_1: int, successes_2: int, n_2: int,
                      confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2 (method 10 of Newcombe 1998)."""
    p1, p2 = successes_1 / n_1, successes_2 / n_2
    l1, u1 = wilson_interval(successes_1, n_1, confidence)
    l2, u2 = wilson_interval(successes_2, n_2, confidence)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def paired_newcombe_interval(a: int, b: int, c: int, d: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's interval for p1 - p2 from paired verdicts: a both succeed, b only side 1, c only
    side 2, d neither (method 10 of Newcombe 1998b, see the module docstring)."""
    n = a + b + c + d
    if n <= 0:
        raise ValueError("no pairs")
    if min(a, b, c, d) < 0:
        raise ValueError(f"pair counts must not be negative, got {(a, b, c, d)}")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    spread = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    phi = 0.0
    if spread > 0:
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(spread)
        elif cross < 0:
            phi = cross / math.sqrt(spread)
    diff = p1 - p2
    below = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2
    return diff - math.sqrt(max(below, 0.0)), diff + math.sqrt(max(above, 0.0))


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (a binomial test at 1/2)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must not be negative, got {(b, c)}")
    m = b + c
    if m == 0:
        return 1.0
    k = min(b, c)
    log_half = m * math.log(0.5)
    tail = sum(math.exp(math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) + log_half)
               for i in range(k + 1))
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Pairs:
    """Verdicts of one cohort's matched rows: `both` passed on both sides, `candidate_only` passed
    only for the candidate, `baseline_only` only for the baseline, `neither` on neither."""

    both: int = 0
    candidate_only: int = 0
    baseline_only: int = 0
    neither: int = 0

    @property
    def n(self) -> int:
        return self.both + self.candidate_only + self.baseline_only + self.neither


@dataclass(frozen=True)
class Side:
    """One side's counts in one cohort: `n` rows, `passed` of them; `errors` of the others errored
    (failures that are counted apart too)."""

    n: int = 0
    passed: int = 0
    errors: int = 0

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.n if self.n else None


@dataclass(frozen=True)
class CohortCounts:
    """What the statistics need of one evaluation in one cohort (`column` None: all rows): both
    sides' counts and, when paired, the matched verdicts. Results rows (`compare_results`) and a
    results folder's Arrow aggregation (results_folder.py) both come down to these."""

    evaluation: str
    column: str | None
    value: Any
    baseline: Side
    candidate: Side
    pairs: Pairs | None = None


@dataclass(frozen=True)
class ComparisonRow:
    evaluation: str
    column: str | None  # None for the all-rows cohort
    value: Any  # the cohort value ("(all)" for all rows)
    baseline: Side
    candidate: Side
    change: float | None  # candidate pass rate - baseline pass rate
    ci_low: float | None
    ci_high: float | None
    significant: bool
    regression: bool
    pairs: Pairs | None = None  # the matched verdicts when the comparison is paired
    mcnemar_p: float | None = None

    @property
    def paired(self) -> bool:
        return self.pairs is not None

    @property
    def cohort(self) -> str:
        if self.column is None:
            return OVERALL
        return f"{self.column}={MISSING if self.value is None else self.value}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for side in ("baseline", "candidate"):
            data[side]["pass_rate"] = getattr(self, side).pass_rate
        data["cohort"] = self.cohort
        data["paired"] = self.paired
        return data


class Comparison:
    """The rows of a comparison, the regressions among them, and their rendering."""

    def __init__(self, rows: list[ComparisonRow], *, max_delta: float, confidence: float,
                 baseline_label: str, candidate_label: str, skipped_evaluations: Sequence[str] = (),
                 problems: Sequence[str] = (), pairing: str = "unpaired", changes: Sequence[str] = (),
                 warnings: Sequence[str] = ()) -> None:
        self.rows = rows
        #: What changed between the two runs' records (runinfo.py), and what of it to warn about.
        self.changes = list(changes)
        self.warnings = list(warnings)
        #: How rows were matched: "paired by row_id (85 rows)" or "unpaired: <why>".
        self.pairing = pairing
        self.problems = list(problems)  # what fails the gate besides regressions (missing rows)
        self.max_delta = max_delta
        self.confidence = confidence
        self.baseline_label = baseline_label
        self.candidate_label = candidate_label
        self.skipped_evaluations = list(skipped_evaluations)

    @property
    def regressions(self) -> list[ComparisonRow]:
        return [row for row in self.rows if row.regression]

    @property
    def paired(self) -> bool:
        return self.pairing.startswith("paired")

    @property
    def failed(self) -> bool:
        """The candidate fails the gate: a regression, or a problem (rows missing)."""
        return bool(self.regressions or self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline_label,
            "candidate": self.candidate_label,
            "max_delta": self.max_delta,
            "confidence": self.confidence,
            "interval": PAIRED_METHOD if self.paired else METHOD,
            "pairing": self.pairing,
            "rule": "regression = change < -max_delta and ci_high < 0",
            "regressions": len(self.regressions),
            "problems": self.problems,
            "failed": self.failed,
            "skipped_evaluations": self.skipped_evaluations,
            "changes": self.changes,
            "warnings": self.warnings,
            "rows": [row.to_dict() for row in self.rows],
        }

    def __str__(self) -> str:
        pct = f"{self.confidence:.0%}"
        header = ["evaluation", "cohort", "base n", "base pass", "cand n", "cand pass", "change",
                  f"{pct} CI", "errors b/c", *(["lost/gained", "McNemar p"] if self.paired else []), ""]
        table = [header]
        for r in self.rows:
            interval = "-" if r.ci_low is None else f"[{_points(r.ci_low)}, {_points(r.ci_high)}]"
            flag = "REGRESSION" if r.regression else ("significant" if r.significant else "")
            table.append([r.evaluation, r.cohort, str(r.baseline.n), _rate(r.baseline.pass_rate),
                          str(r.candidate.n), _rate(r.candidate.pass_rate),
                          "-" if r.change is None else _points(r.change), interval,
                          f"{r.baseline.errors}/{r.candidate.errors}",
                          *([_discordant(r), _p_value(r.mcnemar_p)] if self.paired else []), flag])
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        lines = [f"baseline {self.baseline_label} vs candidate {self.candidate_label}; "
                 f"max drop {self.max_delta * 100:g} points; {pct} "
                 f"{PAIRED_METHOD if self.paired else METHOD}; {self.pairing}"]
        lines += [f"changed: {change}" for change in self.changes]
        lines += [f"WARNING: {warning}" for warning in self.warnings]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
        if self.skipped_evaluations:
            lines.append(f"not in both: {', '.join(self.skipped_evaluations)}")
        lines += [f"PROBLEM: {problem}" for problem in self.problems]
        found = self.regressions
        lines.append(f"{len(found)} regression(s)" + (": " + "; ".join(
            f"{r.evaluation} {r.cohort} {_points(r.change)} points" for r in found) if found else ""))
        return "\n".join(lines)


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f}"


def _discordant(row: ComparisonRow) -> str:
    """Rows the candidate lost (passed only for the baseline) / gained."""
    return "-" if row.pairs is None else f"{row.pairs.baseline_only}/{row.pairs.candidate_only}"


def _p_value(p: float | None) -> str:
    return "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def compare_counts(evaluation: str, column: str | None, value: Any, baseline: Side, candidate: Side,
                   max_delta: float, confidence: float, pairs: Pairs | None = None) -> ComparisonRow:
    """One cohort's row: the paired interval and McNemar's test when `pairs` is given (the sides are
    then the same rows), else the unpaired interval."""
    if baseline.n == 0 or candidate.n == 0:
        return ComparisonRow(evaluation, column, value, baseline, candidate, None, None, None, False, False)
    change = candidate.pass_rate - baseline.pass_rate  # type: ignore[operator]
    mcnemar = None
    if pairs is not None:
        low, high = paired_newcombe_interval(pairs.both, pairs.candidate_only, pairs.baseline_only, pairs.neither,
                                             confidence)
        mcnemar = mcnemar_exact_p(pairs.candidate_only, pairs.baseline_only)
    else:
        low, high = newcombe_interval(candidate.passed, candidate.n, baseline.passed, baseline.n, confidence)
    return ComparisonRow(evaluation, column, value, baseline, candidate, change, low, high,
                         significant=high < 0 or low > 0, regression=change < -max_delta and high < 0,
                         pairs=pairs, mcnemar_p=mcnemar)


def match_rows(base_rows: Sequence[Mapping[str, Any]], cand_rows: Sequence[Mapping[str, Any]],
               id_column: str | None = None) -> tuple[list[Mapping[str, Any]] | None, str]:
    """The candidate rows in the baseline's order when the two sides pair one to one by `id_column`
    (default `row_id`), else None; and the pairing as said in the comparison."""
    column = id_column or ROW_ID
    keys: list[list[str]] = []
    for side, rows in (("baseline", base_rows), ("candidate", cand_rows)):
        side_keys = [row.get(column) for row in rows]
        without = sum(key is None for key in side_keys)
        if without:
            return None, unpaired_without_key(without, side, column)
        side_keys = [cohort_key(key) for key in side_keys]
        repeated = len(side_keys) - len(set(side_keys))
        if repeated:
            first = next(k for k, n in Counter(side_keys).items() if n > 1)
            return None, unpaired_repeated_key(repeated, side, column, first)
        keys.append(side_keys)
    base_keys, cand_keys = keys
    by_key = dict(zip(cand_keys, cand_rows))
    only_base = sum(key not in by_key for key in base_keys)
    only_cand = len(cand_keys) - (len(base_keys) - only_base)
    if only_base or only_cand:
        return None, unpaired_mismatch(column, only_base, only_cand)
    return [by_key[key] for key in base_keys], paired_by(column, len(base_keys))


# The pairing as `Comparison.pairing` says it, whichever path matched the rows.
def unpaired_without_key(without: int, side: str, column: str) -> str:
    return (f"unpaired: {without} {side} row(s) have no {column!r} "
            f"(results written before row ids, or no such column; see --id-column)")


def unpaired_repeated_key(repeated: int, side: str, column: str, example: Any) -> str:
    return f"unpaired: {repeated} repeated {column!r} value(s) in the {side} (e.g. {example!r})"


def unpaired_mismatch(column: str, only_base: int, only_cand: int) -> str:
    return (f"unpaired: the rows do not match by {column!r} ({only_base} baseline row(s) without a "
            f"candidate row, {only_cand} candidate row(s) without a baseline row)")


def paired_by(column: str, n: int) -> str:
    return f"paired by {column!r} ({n} rows)"


def _pair_counts(base_rows: Sequence[Mapping[str, Any]], cand_rows: Sequence[Mapping[str, Any]], name: str) -> Pairs:
    tally = [0, 0, 0, 0]  # both, candidate only, baseline only, neither (an error is a fail)
    for base, cand in zip(base_rows, cand_rows):
        b, c = bool(base.get(f"{name}.passed")), bool(cand.get(f"{name}.passed"))
        tally[0 if b and c else 1 if c else 2 if b else 3] += 1
    return Pairs(*tally)


def compare_results(base_rows: Sequence[Mapping[str, Any]], cand_rows: Sequence[Mapping[str, Any]], *,
                    base_label: str = "baseline", cand_label: str = "candidate", max_delta: float = 0.02,
                    by: str | Sequence[str] | None = None, confidence: float = 0.95,
                    evaluations: Sequence[str] | None = None,
                    max_error_rate: float = DEFAULT_MAX_ERROR_RATE, id_column: str | None = None) -> Comparison:
    """Pass-rate change per evaluation and cohort between two sets of results rows, with Newcombe
    intervals (paired when the rows match by `id_column`, default `row_id`) and regression flags
    (`dataset.compare` takes Datasets or results files). Evaluations default to those present on
    both sides. Errored rows count as failures; a side with more than `max_error_rate` of an
    evaluation's rows errored raises `BrokenResults` (see the module docstring). Cohorts of paired
    rows follow the baseline row's value, in order of first appearance."""
    check_compare_options(max_delta, max_error_rate, confidence)
    columns = cohort_columns(by)
    names, skipped = pick_evaluations(evaluation_names(base_rows), evaluation_names(cand_rows), evaluations)
    for column in columns:
        for side, rows in (("baseline", base_rows), ("candidate", cand_rows)):
            if not any(column in row for row in rows):
                raise ValueError(f"column {column!r} not in the {side} results")

    if id_column is not None:
        for side, rows in (("baseline", base_rows), ("candidate", cand_rows)):
            if not any(id_column in row for row in rows):
                raise ValueError(f"id column {id_column!r} not in the {side} results")

    for name in names:
        check_error_rate(base_rows, name, max_error_rate, f"the baseline ({base_label})")
        check_error_rate(cand_rows, name, max_error_rate, f"the candidate ({cand_label})")
    matched, pairing = match_rows(base_rows, cand_rows, id_column)
    return comparison_from_counts(_row_counts(base_rows, cand_rows, matched, names, columns), max_delta=max_delta,
                                  confidence=confidence, base_label=base_label, cand_label=cand_label,
                                  skipped=skipped, pairing=pairing)


def check_compare_options(max_delta: float, max_error_rate: float, confidence: float) -> None:
    if isinstance(max_delta, bool) or not isinstance(max_delta, (int, float)) or not 0 <= max_delta < 1:
        raise ValueError(f"max_delta must be a number from 0 to 1 (0.02 = 2 points), got {max_delta!r}")
    if isinstance(max_error_rate, bool) or not isinstance(max_error_rate, (int, float)) or not 0 <= max_error_rate <= 1:
        raise ValueError(f"max_error_rate must be a number from 0 to 1 (0.01 = 1 %), got {max_error_rate!r}")
    z_value(confidence)


def cohort_columns(by: str | Sequence[str] | None) -> list[str]:
    return [by] if isinstance(by, str) else list(by or [])


def pick_evaluations(base_names: Sequence[str], cand_names: Sequence[str],
                     evaluations: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(the evaluations to compare, those present on one side only that are left out)."""
    if evaluations is None:
        names = [n for n in base_names if n in cand_names]
        if not names:
            raise ValueError(f"no evaluation in both results: baseline has {', '.join(base_names) or 'none'}, "
                             f"candidate has {', '.join(cand_names) or 'none'}")
    else:
        names = list(evaluations)
        for name in names:
            for side, present in (("baseline", base_names), ("candidate", cand_names)):
                if name not in present:
                    raise ValueError(f"no evaluation {name!r} in the {side} results")
    return names, [n for n in dict.fromkeys([*base_names, *cand_names]) if n not in names]


def comparison_from_counts(counts: Iterable[CohortCounts], *, max_delta: float, confidence: float,
                           base_label: str, cand_label: str, skipped: Sequence[str], pairing: str) -> Comparison:
    """The comparison of counted cohorts, in the order given; a candidate with fewer rows of an
    evaluation than the baseline (its all-rows cohort) is a problem."""
    problems: list[str] = []
    out: list[ComparisonRow] = []
    for c in counts:
        if c.column is None and c.candidate.n < c.baseline.n:
            problems.append(f"{c.evaluation}: the candidate has {c.candidate.n} rows, the baseline {c.baseline.n} "
                            f"({c.baseline.n - c.candidate.n} missing)")
        out.append(compare_counts(c.evaluation, c.column, c.value, c.baseline, c.candidate, max_delta, confidence,
                                  c.pairs))
    return Comparison(out, max_delta=float(max_delta), confidence=confidence, baseline_label=base_label,
                      candidate_label=cand_label, skipped_evaluations=skipped, problems=problems, pairing=pairing)


def _row_counts(base_rows: Sequence[Mapping[str, Any]], cand_rows: Sequence[Mapping[str, Any]],
                matched: Sequence[Mapping[str, Any]] | None, names: Sequence[str],
                columns: Sequence[str]) -> Iterable[CohortCounts]:
    """Per evaluation the all-rows cohort, then each value of each column (first appearance first);
    `matched` is the candidate rows in the baseline's order when paired."""
    for name in names:
        base_all, cand_all = _count(base_rows, name), _count(cand_rows, name)
        pairs = _pair_counts(base_rows, matched, name) if matched is not None else None
        yield CohortCounts(name, None, OVERALL, base_all, cand_all, pairs)
        for column in columns:
            if matched is not None:  # a pair's cohort is its baseline row's
                groups = _groups(range(len(base_rows)), column, base_rows)
                for value, indexes in groups.items():
                    base_group = [base_rows[i] for i in indexes]
                    cand_group = [matched[i] for i in indexes]
                    yield CohortCounts(name, column, value, _count(base_group, name), _count(cand_group, name),
                                       _pair_counts(base_group, cand_group, name))
                continue
            base_groups, cand_groups = _groups(base_rows, column), _groups(cand_rows, column)
            for value in dict.fromkeys([*base_groups, *cand_groups]):
                yield CohortCounts(name, column, value, _count(base_groups.get(value, []), name),
                                   _count(cand_groups.get(value, []), name))


def evaluation_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Evaluations present in results rows: prefixes N with both `N.passed` and `N.score` columns."""
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key.endswith(".passed") and f"{key[:-len('.passed')]}.score" in row:
                names.setdefault(key[:-len(".passed")])
    return list(names)


def _count(rows: Iterable[Mapping[str, Any]], name: str) -> Side:
    n = passed = errors = 0
    for row in rows:
        verdict = row.get(f"{name}.passed")
        n += 1
        if verdict is None:
            errors += 1  # a failure of its side, counted apart too
        else:
            passed += bool(verdict)
    return Side(n, passed, errors)


def cohort_key(value: Any) -> Any:
    """A hashable cohort key: lists and dicts as their JSON text."""
    try:
        hash(value)
    except TypeError:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return value


def _groups(items: Iterable[Any], column: str, rows: Sequence[Mapping[str, Any]] | None = None) -> dict[Any, list[Any]]:
    """Items grouped by their row's value of `column` (an item is a row, or with `rows` an index into it)."""
    groups: dict[Any, list[Any]] = {}
    for item in items:
        row = item if rows is None else rows[item]
        groups.setdefault(cohort_key(row.get(column)), []).append(item)
    return groups
