"""Agreement of an evaluator with human labels: how good it is on *your* data.

A results file whose rows carry a human label column answers it, per evaluation N:

- balanced accuracy of the evaluator's own verdict (`N.passed`) against the label: the mean of the
  share of supported rows it passes and the share of unsupported rows it fails. Unlike accuracy it
  is not flattered by the majority class: on a set that is 90 % supported, passing everything is
  90 % accurate and 50 % balanced-accurate.
- ROC-AUC of the score (`N.score`): the chance that a supported row scores above an unsupported one,
  a tie counting 1/2 (the Mann-Whitney U statistic over positives x negatives). It needs no
  threshold, so it says how well the score ranks, apart from where the evaluator cuts it.
- the LLM-AggreFact protocol (Tang et al. 2024, "MiniCheck: Efficient Fact-Checking of LLMs on
  Grounding Documents"): the threshold on the score that maximises balanced accuracy is tuned on a
  development split, and the balanced accuracy it gives is reported on the held-out test split, so
  the number is not fitted to the rows it is measured on. A row is dev or test by a hash of its
  `row_id` (written by `Dataset.run`; its index among the rows when it has none): the split is the
  same on every run, and for every checkpoint's results of the same rows.
- percentile-bootstrap intervals (95 % by default) for these, resampling within each label
  (stratified: every resample holds both classes, in the measured proportion) with a fixed seed, so
  a report is reproducible. Vectorised with numpy when it is installed, pure Python otherwise (the
  same method with other random draws: an interval's last digit may differ between the two). The
  test interval takes the tuned threshold as fixed: it is the test rows' sampling noise only.

The positive class is "the response is supported / passes". Labels are read from 1/0, true/false,
"1"/"0" (CSV text), yes/no, pass/fail, supported/unsupported, consistent/inconsistent,
correct/incorrect and entailment/not_entailment, in any case; anything else is a ValueError naming
the column and the values. No row is dropped silently: a missing label (None, empty text) is
counted as unlabelled, a row whose evaluation errored (no verdict or score) as errored.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import accumulate, repeat
from pathlib import Path
from typing import Any, Mapping, Sequence

from .regression import ROW_ID

__all__ = ["Agreement", "Labelled", "measure_agreement", "balanced_accuracy", "best_threshold", "bootstrap_intervals",
           "check_label_column", "dev_split", "labelled_scores", "measure", "parse_label", "read_labels",
           "roc_auc", "roc_points"]

POSITIVE_LABELS = frozenset({"1", "true", "yes", "pass", "passed", "supported", "consistent", "correct",
                             "entailment"})
NEGATIVE_LABELS = frozenset({"0", "false", "no", "fail", "failed", "unsupported", "not_supported",
                             "inconsistent", "incorrect", "not_entailment", "non_entailment"})
READABLE = ("1/0, true/false, yes/no, pass/fail, supported/unsupported, consistent/inconsistent, "
            "correct/incorrect or entailment/not_entailment")
DEFAULT_DEV_FRACTION = 0.5
DEFAULT_RESAMPLES = 1000
SPLIT_SALT = b"fi-evals dev/test split\0"  # so the split is not correlated with other uses of row_id
SHOWN = 5  # unreadable label values named in the error


# --------------------------------------------------------------------------------------------
# labels


def parse_label(value: Any) -> bool | None:
    """True (supported / passes), False, or None when missing (None, NaN, empty text).

    A ValueError for anything else: a label that is guessed at would make every number wrong.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return None
        if value in (0, 1):
            return bool(value)
    elif isinstance(value, str):
        text = "_".join(value.strip().lower().replace("-", " ").split())
        if not text:
            return None
        if text in POSITIVE_LABELS:
            return True
        if text in NEGATIVE_LABELS:
            return False
        if text in ("1.0", "0.0"):  # how pandas writes a 0/1 column that has gaps
            return text == "1.0"
    raise ValueError(f"unreadable human label {value!r}; use {READABLE}")


def check_label_column(rows: Sequence[Mapping[str, Any]], column: str) -> None:
    """ValueError naming `column` when no row has it (a typo would otherwise read as all unlabelled)."""
    if any(column in row for row in rows):
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    shown = ", ".join(columns[:30]) + (", ..." if len(columns) > 30 else "")
    raise ValueError(f"label column {column!r}: no such column; columns are {shown or '(none)'}")


def read_labels(rows: Sequence[Mapping[str, Any]], column: str) -> list[bool | None]:
    """Each row's label (None: missing); a ValueError naming the column and up to five unreadable values."""
    labels: list[bool | None] = []
    bad: Counter[str] = Counter()
    for row in rows:
        try:
            labels.append(parse_label(row.get(column)))
        except ValueError:
            bad[repr(row.get(column))] += 1
            labels.append(None)
    if bad:
        shown = ", ".join(value for value, _ in bad.most_common(SHOWN))
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise ValueError(f"label column {column!r}: {sum(bad.values())} value(s) are not a human label: "
                         f"{shown}{more}; use {READABLE} (empty means unlabelled)")
    return labels


# --------------------------------------------------------------------------------------------
# the dev / test split


def _split_key(row: Mapping[str, Any], index: int) -> str:
    value = row.get(ROW_ID)
    return f"{ROW_ID}:{value}" if value not in (None, "") else f"index:{index}"


def _in_dev(key: str, dev_fraction: float) -> bool:
    digest = hashlib.sha256(SPLIT_SALT + key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < dev_fraction


def _check_fraction(dev_fraction: float) -> None:
    if isinstance(dev_fraction, bool) or not isinstance(dev_fraction, (int, float)) or not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be a number between 0 and 1 (exclusive), got {dev_fraction!r}")


def dev_split(rows: Sequence[Mapping[str, Any]], dev_fraction: float = DEFAULT_DEV_FRACTION) -> list[bool]:
    """True for the rows in the dev split: by a hash of `row_id` (else the row's index), so the same
    rows fall the same way in every run and every checkpoint's results."""
    _check_fraction(dev_fraction)
    return [_in_dev(_split_key(row, i), dev_fraction) for i, row in enumerate(rows)]


# --------------------------------------------------------------------------------------------
# the measures


def balanced_accuracy(predictions: Sequence[bool], labels: Sequence[bool]) -> float | None:
    """(share of positives predicted positive + share of negatives predicted negative) / 2; None
    without both classes."""
    pos = neg = hits_pos = hits_neg = 0
    for predicted, label in zip(predictions, labels):
        if label:
            pos += 1
            hits_pos += bool(predicted)
        else:
            neg += 1
            hits_neg += not predicted
    return (hits_pos / pos + hits_neg / neg) / 2 if pos and neg else None


def _tie_groups(values: Sequence[float], descending: bool = False) -> list[list[int]]:
    """Indexes of `values` sorted, grouped by equal value."""
    order = sorted(range(len(values)), key=values.__getitem__, reverse=descending)
    groups: list[list[int]] = []
    for i in order:
        if groups and values[groups[-1][0]] == values[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _classes(labels: Sequence[bool]) -> tuple[int, int]:
    pos = sum(1 for label in labels if label)
    return pos, len(labels) - pos


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(a positive's score > a negative's), ties 1/2: Mann-Whitney U / (positives x negatives), from
    mid-ranks. None without both classes."""
    pos, neg = _classes(labels)
    if not pos or not neg:
        return None
    rank_sum, rank = 0.0, 0
    for group in _tie_groups(scores):
        mid = rank + (len(group) + 1) / 2  # ranks rank+1 .. rank+len(group), averaged
        rank_sum += mid * sum(1 for i in group if labels[i])
        rank += len(group)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def _sweep(scores: Sequence[float], labels: Sequence[bool]):
    """Per distinct score, highest first: (its tie group, true positives, false positives) of the
    verdict `score >= that score`."""
    tp = fp = 0
    for group in _tie_groups(scores, descending=True):
        hits = sum(1 for i in group if labels[i])
        tp, fp = tp + hits, fp + len(group) - hits
        yield group, tp, fp


def roc_points(scores: Sequence[float], labels: Sequence[bool]) -> list[tuple[float, float]]:
    """The ROC curve as (false positive rate, true positive rate) from (0, 0) to (1, 1), one point per
    distinct score (tied rows move both rates at once: the diagonal step that counts a tie 1/2)."""
    pos, neg = _classes(labels)
    if not pos or not neg:
        return []
    return [(0.0, 0.0)] + [(fp / neg, tp / pos) for _, tp, fp in _sweep(scores, labels)]


def best_threshold(scores: Sequence[float], labels: Sequence[bool]) -> tuple[float, float] | None:
    """(threshold, balanced accuracy) of the verdict `score >= threshold` that maximises balanced
    accuracy on these rows; None without both classes. The threshold is halfway between the lowest
    passing score and the next lower one (the widest margin these rows allow); of equally good
    thresholds, the highest."""
    pos, neg = _classes(labels)
    if not pos or not neg:
        return None
    best: tuple[float, float, int] | None = None  # (balanced accuracy, lowest passing score, its rank)
    steps = list(_sweep(scores, labels))
    for k, (group, tp, fp) in enumerate(steps):
        bacc = (tp / pos + (neg - fp) / neg) / 2
        if best is None or bacc > best[0] + 1e-12:
            best = (bacc, scores[group[0]], k)
    bacc, value, k = best  # type: ignore[misc]
    if k + 1 < len(steps):
        value = (value + scores[steps[k + 1][0][0]]) / 2
    return value, bacc


# --------------------------------------------------------------------------------------------
# bootstrap intervals


def _percentile_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """The (1-c)/2 and (1+c)/2 quantiles, linearly interpolated (numpy's default)."""
    ordered = sorted(values)

    def quantile(q: float) -> float:
        pos = q * (len(ordered) - 1)
        low = math.floor(pos)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

    return quantile((1 - confidence) / 2), quantile((1 + confidence) / 2)


def bootstrap_intervals(labels: Sequence[bool], verdicts: Sequence[bool] | None = None,
                        scores: Sequence[float] | None = None, *, resamples: int = DEFAULT_RESAMPLES,
                        confidence: float = 0.95, seed: int = 0
                        ) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Percentile-bootstrap intervals for (balanced accuracy of `verdicts`, ROC-AUC of `scores`),
    resampling positives and negatives apart (stratified). An entry is None when its input is not
    given or a class is empty.

    The AUC of a resample is counted without sorting it: with the negatives sorted once, each
    positive's place among them (strictly below, tied) is fixed, and a resample only reweights
    the negatives, so their running count gives every positive's wins.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples!r}")
    pos = [i for i, label in enumerate(labels) if label]
    neg = [i for i, label in enumerate(labels) if not label]
    if not pos or not neg or (verdicts is None and scores is None):
        return None, None
    ranks = None
    if scores is not None:
        neg.sort(key=scores.__getitem__)
        below = [scores[j] for j in neg]
        ranks = ([bisect_left(below, scores[i]) for i in pos], [bisect_right(below, scores[i]) for i in pos])
    correct = None if verdicts is None else ([bool(verdicts[i]) for i in pos], [not verdicts[j] for j in neg])
    try:
        import numpy
    except ImportError:
        baccs, aucs = _draws_python(len(pos), len(neg), correct, ranks, resamples, seed)
    else:
        baccs, aucs = _draws_numpy(numpy, len(pos), len(neg), correct, ranks, resamples, seed)
    return (None if correct is None else _percentile_interval(baccs, confidence),
            None if ranks is None else _percentile_interval(aucs, confidence))


def _draws_numpy(np: Any, n_pos: int, n_neg: int, correct: Any, ranks: Any, resamples: int,
                 seed: int) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    if correct is not None:
        ok_pos, ok_neg = (np.asarray(c, dtype=np.float64) for c in correct)
    if ranks is not None:
        lt, le = (np.asarray(r, dtype=np.int64) for r in ranks)
    baccs: list[float] = []
    aucs: list[float] = []
    chunk = max(1, min(resamples, 2_000_000 // (n_pos + n_neg)))  # a few MB of draws at a time
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        pick_pos = rng.integers(0, n_pos, size=(b, n_pos))
        pick_neg = rng.integers(0, n_neg, size=(b, n_neg))
        if correct is not None:
            baccs += ((ok_pos[pick_pos].mean(axis=1) + ok_neg[pick_neg].mean(axis=1)) / 2).tolist()
        if ranks is not None:
            offsets = (pick_neg + n_neg * np.arange(b)[:, None]).ravel()
            counts = np.bincount(offsets, minlength=b * n_neg).reshape(b, n_neg)
            below = np.zeros((b, n_neg + 1))
            np.cumsum(counts, axis=1, out=below[:, 1:])  # below[r, k]: resampled negatives among the k lowest
            rows = np.arange(b)[:, None]
            wins = below[rows, lt[pick_pos]] + below[rows, le[pick_pos]]  # twice the wins, ties once
            aucs += (wins.sum(axis=1) / (2 * n_pos * n_neg)).tolist()
    return baccs, aucs


def _draws_python(n_pos: int, n_neg: int, correct: Any, ranks: Any, resamples: int,
                  seed: int) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    baccs: list[float] = []
    aucs: list[float] = []
    all_pos, all_neg = range(n_pos), range(n_neg)
    for _ in range(resamples):
        pick_pos = rng.choices(all_pos, k=n_pos)
        pick_neg = rng.choices(all_neg, k=n_neg)
        if correct is not None:
            ok_pos, ok_neg = correct
            baccs.append((sum(map(ok_pos.__getitem__, pick_pos)) / n_pos
                          + sum(map(ok_neg.__getitem__, pick_neg)) / n_neg) / 2)
        if ranks is not None:
            lt, le = ranks
            counts = Counter(pick_neg)
            below = list(accumulate(map(counts.get, all_neg, repeat(0)), initial=0))
            wins = sum(map(below.__getitem__, map(lt.__getitem__, pick_pos)))
            wins += sum(map(below.__getitem__, map(le.__getitem__, pick_pos)))
            aucs.append(wins / (2 * n_pos * n_neg))
    return baccs, aucs


# --------------------------------------------------------------------------------------------
# one evaluation against the labels


@dataclass(frozen=True)
class Labelled:
    """The rows of one evaluation with both a readable label and a score, and the rows left out."""

    scores: tuple[float, ...]
    labels: tuple[bool, ...]
    verdicts: tuple[bool, ...]  # the evaluator's own `N.passed`
    keys: tuple[str, ...]  # what each row's dev/test side is hashed from
    rows: int  # all rows given
    unlabelled: int  # label missing
    errored: int  # labelled, but the evaluation gave no verdict or no score

    @property
    def by_index(self) -> int:
        """Measured rows without a `row_id`, split by their index instead."""
        return sum(key.startswith("index:") for key in self.keys)


def labelled_scores(rows: Sequence[Mapping[str, Any]], evaluation: str, label_column: str) -> Labelled:
    """Score, label, verdict and split key of each row of `evaluation` that has a readable label and
    a result; unreadable labels raise (see `read_labels`)."""
    labels = read_labels(rows, label_column)
    kept: list[tuple[float, bool, bool, str]] = []
    unlabelled = errored = 0
    for index, (row, label) in enumerate(zip(rows, labels)):
        if label is None:
            unlabelled += 1
            continue
        score, verdict = row.get(f"{evaluation}.score"), row.get(f"{evaluation}.passed")
        if (not isinstance(verdict, bool) or isinstance(score, bool) or not isinstance(score, (int, float))
                or math.isnan(score)):
            errored += 1
            continue
        kept.append((float(score), label, verdict, _split_key(row, index)))
    scores, flags, verdicts, keys = (tuple(column) for column in zip(*kept)) if kept else ((), (), (), ())
    return Labelled(scores, flags, verdicts, keys, len(rows), unlabelled, errored)


Interval = tuple[float, float]


@dataclass(frozen=True)
class Agreement:
    """One evaluation against the human labels (see the module docstring); rates are fractions."""

    evaluation: str
    label_column: str
    rows: int
    unlabelled: int
    errored: int
    positives: int
    negatives: int
    accuracy: float | None
    balanced_accuracy: float | None
    balanced_accuracy_ci: Interval | None
    roc_auc: float | None
    roc_auc_ci: Interval | None
    dev_fraction: float
    dev_positives: int
    dev_negatives: int
    test_positives: int
    test_negatives: int
    threshold: float | None  # tuned on the dev split
    dev_balanced_accuracy: float | None
    test_balanced_accuracy: float | None
    test_balanced_accuracy_ci: Interval | None
    split_by_index: int = 0  # measured rows without a row_id, split by index
    confidence: float = 0.95
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    checkpoint: str | None = None
    notes: tuple[str, ...] = ()  # why a measure is missing

    @property
    def measured(self) -> int:
        return self.positives + self.negatives

    @property
    def dev_rows(self) -> int:
        return self.dev_positives + self.dev_negatives

    @property
    def test_rows(self) -> int:
        return self.test_positives + self.test_negatives

    @property
    def interval_method(self) -> str:
        return (f"{self.confidence:.0%} percentile bootstrap, {self.resamples} resamples within each label, "
                f"seed {self.seed}")

    @property
    def method(self) -> str:
        by_index = f" ({self.split_by_index} row(s) without one: by index)" if self.split_by_index else ""
        return (f"{self.interval_method}; threshold tuned on dev, balanced accuracy on test (LLM-AggreFact); "
                f"dev/test by a hash of {ROW_ID}{by_index}, dev fraction {self.dev_fraction:g}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(measured=self.measured, dev_rows=self.dev_rows, test_rows=self.test_rows, method=self.method,
                    notes=list(self.notes))
        for key in ("balanced_accuracy_ci", "roc_auc_ci", "test_balanced_accuracy_ci"):
            data[key] = None if data[key] is None else list(data[key])
        return data

    def __str__(self) -> str:
        name = self.evaluation + (f" ({self.checkpoint})" if self.checkpoint else "")
        lines = [f"{name} against human label {self.label_column!r}: {self.measured} of {self.rows} rows measured "
                 f"({self.positives} supported, {self.negatives} not); left out: {self.unlabelled} without a "
                 f"label, {self.errored} errored"]
        if self.balanced_accuracy is not None:
            lines.append(f"  balanced accuracy of its verdict {_pct(self.balanced_accuracy)} "
                         f"{_pct_interval(self.balanced_accuracy_ci)} (accuracy {_pct(self.accuracy)})")
        if self.roc_auc is not None:
            lines.append(f"  ROC-AUC of its score {self.roc_auc:.3f} {_interval(self.roc_auc_ci)}")
        dev = f"dev {self.dev_rows} rows ({self.dev_positives} supported, {self.dev_negatives} not)"
        test = f"test {self.test_rows} rows ({self.test_positives} supported, {self.test_negatives} not)"
        if self.threshold is None:
            lines.append(f"  split: {dev}; {test}")
        else:
            tuned = (f"  threshold tuned on {dev}: {self.threshold:.3f} "
                     f"(dev balanced accuracy {_pct(self.dev_balanced_accuracy)})")
            if self.test_balanced_accuracy is not None:
                tuned += (f"; on {test}: balanced accuracy {_pct(self.test_balanced_accuracy)} "
                          f"{_pct_interval(self.test_balanced_accuracy_ci)}")
            lines.append(tuned)
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"  ({self.method})")
        return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pct_interval(ci: Interval | None) -> str:
    return "" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _interval(ci: Interval | None) -> str:
    return "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _lacking(labels: Sequence[bool], what: str) -> str | None:
    """Why a measure needs more than `labels` (the labels of `what`); None when both classes are there."""
    pos, neg = _classes(labels)
    if pos and neg:
        return None
    if not pos and not neg:
        return f"no {what}"
    return f"the {what} hold no {'unsupported' if pos else 'supported'} rows"


def measure(data: Labelled, evaluation: str, label_column: str, *, dev_fraction: float = DEFAULT_DEV_FRACTION,
            confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
            checkpoint: str | None = None) -> Agreement:
    """The agreement of `data` (see `labelled_scores`): every measure, its interval, the dev/test split."""
    _check_fraction(dev_fraction)
    labels, scores, verdicts = data.labels, data.scores, data.verdicts
    positives, negatives = _classes(labels)
    lacking = _lacking(labels, "measured rows")
    notes = [f"no balanced accuracy or ROC-AUC: {lacking}"] if lacking else []
    bacc_ci, auc_ci = bootstrap_intervals(labels, verdicts, scores, resamples=resamples, confidence=confidence,
                                          seed=seed)

    dev = [_in_dev(key, dev_fraction) for key in data.keys]
    dev_scores = [s for s, d in zip(scores, dev) if d]
    dev_labels = [y for y, d in zip(labels, dev) if d]
    test_scores = [s for s, d in zip(scores, dev) if not d]
    test_labels = [y for y, d in zip(labels, dev) if not d]
    tuned = best_threshold(dev_scores, dev_labels)
    test_bacc = test_ci = None
    if tuned is None:
        notes.append(f"no threshold tuned: {_lacking(dev_labels, 'dev rows')}")
    else:
        test_verdicts = [s >= tuned[0] for s in test_scores]
        test_bacc = balanced_accuracy(test_verdicts, test_labels)
        if test_bacc is None:
            notes.append(f"no test balanced accuracy: {_lacking(test_labels, 'test rows')}")
        test_ci, _ = bootstrap_intervals(test_labels, test_verdicts, resamples=resamples, confidence=confidence,
                                         seed=seed)
    dev_pos, dev_neg = _classes(dev_labels)
    test_pos, test_neg = _classes(test_labels)
    return Agreement(
        evaluation=evaluation, label_column=label_column, rows=data.rows, unlabelled=data.unlabelled,
        errored=data.errored, positives=positives, negatives=negatives,
        accuracy=sum(v == y for v, y in zip(verdicts, labels)) / len(labels) if labels else None,
        balanced_accuracy=balanced_accuracy(verdicts, labels), balanced_accuracy_ci=bacc_ci,
        roc_auc=roc_auc(scores, labels), roc_auc_ci=auc_ci, dev_fraction=float(dev_fraction),
        dev_positives=dev_pos, dev_negatives=dev_neg, test_positives=test_pos, test_negatives=test_neg,
        threshold=None if tuned is None else tuned[0], dev_balanced_accuracy=None if tuned is None else tuned[1],
        test_balanced_accuracy=test_bacc, test_balanced_accuracy_ci=test_ci, split_by_index=data.by_index,
        confidence=confidence, resamples=resamples, seed=seed, checkpoint=checkpoint, notes=tuple(notes))


def measure_agreement(rows: Any, evaluation: str | None, label_column: str, *,
              dev_fraction: float = DEFAULT_DEV_FRACTION, confidence: float = 0.95,
              resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Agreement:
    """How well `evaluation` agrees with the human labels in `label_column`.

    `rows` is a Dataset that has run (or was read with `Dataset.from_results`), a results file path,
    or results rows; `evaluation` may be None when the results hold only one. A label column no row
    has, or unreadable labels, raise ValueError.
    """
    from .dataset import Dataset, pick_evaluation
    from .regression import evaluation_names

    if isinstance(rows, (str, Path)):
        rows = Dataset.from_results(rows)
    if isinstance(rows, Dataset):
        if rows.results is None:
            raise ValueError("the dataset has no results: run() it first")
        rows = rows.results
    rows = list(rows)
    name = pick_evaluation(evaluation_names(rows), evaluation)
    check_label_column(rows, label_column)
    checkpoints = {str(row["checkpoint"]) for row in rows if row.get("checkpoint") not in (None, "")}
    return measure(labelled_scores(rows, name, label_column), name, label_column, dev_fraction=dev_fraction,
                   confidence=confidence, resamples=resamples, seed=seed,
                   checkpoint=checkpoints.pop() if len(checkpoints) == 1 else None)
