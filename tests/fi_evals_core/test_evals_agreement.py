"""Agreement with human labels (evals/agreement.py): every expected number is worked out by hand from
constructed rows, or from a brute-force recount of the same resample."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

from fi_evals_core.evals import Agreement, measure_agreement
from fi_evals_core.evals.agreement import (
    balanced_accuracy,
    best_threshold,
    bootstrap_intervals,
    dev_split,
    parse_label,
    roc_auc,
    roc_points,
)
from fi_evals_core.evals.dataset import Dataset

EV = "fc"


def row(score, label, passed=None, row_id=None, **extra):
    """A results row of evaluation `fc`; `passed` defaults to score >= 0.5; score None is an error."""
    out = {"human": label, **extra}
    if row_id is not None:
        out["row_id"] = row_id
    if score is None:
        out.update({f"{EV}.score": None, f"{EV}.passed": None, f"{EV}.error_type": "ValueError"})
    else:
        out.update({f"{EV}.score": score, f"{EV}.passed": score >= 0.5 if passed is None else passed,
                    f"{EV}.error_type": None})
    return out


def trapezoid(points):
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))


def noisy(n, seed=0, gap=0.2):
    """n rows, 60 % supported, scores that separate the classes imperfectly, each with a row_id."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.random() < 0.6
        score = min(1.0, max(0.0, rng.gauss(0.5 + (gap if label else -gap), 0.2)))
        rows.append(row(score, int(label), row_id=f"q{i}"))
    return rows


# ---------------------------------------------------------------------------------------------
# the measures, by hand


def test_a_perfect_scorer_scores_1_and_a_reversed_one_0():
    labels = [True, True, True, False, False, False]
    perfect = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]
    assert roc_auc(perfect, labels) == 1.0
    assert balanced_accuracy([s >= 0.5 for s in perfect], labels) == 1.0
    reversed_ = [1 - s for s in perfect]
    assert roc_auc(reversed_, labels) == 0.0
    assert balanced_accuracy([s >= 0.5 for s in reversed_], labels) == 0.0
    assert roc_points(perfect, labels)[:4] == [(0.0, 0.0), (0.0, 1 / 3), (0.0, 2 / 3), (0.0, 1.0)]

    result = measure_agreement([row(s, int(y)) for s, y in zip(perfect, labels)], EV, "human")
    assert (result.roc_auc, result.balanced_accuracy, result.accuracy) == (1.0, 1.0, 1.0)
    assert result.roc_auc_ci == (1.0, 1.0) and result.balanced_accuracy_ci == (1.0, 1.0)  # every resample is perfect


def test_auc_of_a_small_table_with_a_tie_by_hand():
    # supported 0.8, 0.6, 0.4; unsupported 0.6, 0.3. Pairs won: 0.8 beats both (2), 0.6 ties 0.6 (1/2)
    # and beats 0.3 (1), 0.4 beats 0.3 (1): 4.5 of 6 pairs.
    scores = [0.8, 0.6, 0.4, 0.6, 0.3]
    labels = [True, True, True, False, False]
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    # the curve steps diagonally through the tie, so its area is the same 0.75
    assert roc_points(scores, labels) == [(0.0, 0.0), (0.0, 1 / 3), (0.5, 2 / 3), (0.5, 1.0), (1.0, 1.0)]
    assert trapezoid(roc_points(scores, labels)) == pytest.approx(0.75)
    # all tied: no ranking at all
    assert roc_auc([0.5] * 4, [True, False, True, False]) == 0.5
    # one class only: undefined, not 0 or 1
    assert roc_auc([0.1, 0.9], [True, True]) is None and balanced_accuracy([True], [True]) is None


def test_balanced_accuracy_on_an_imbalanced_set_is_not_accuracy():
    # 9 supported, 1 unsupported, and an evaluator that passes everything: 90 % accurate, 50 % balanced
    rows = [row(0.9, "supported") for _ in range(9)] + [row(0.8, "unsupported")]
    result = measure_agreement(rows, EV, "human")
    assert result.accuracy == pytest.approx(0.9)
    assert result.balanced_accuracy == pytest.approx(0.5)
    # passing 8 of 9 supported and failing the one unsupported: (8/9 + 1) / 2
    assert balanced_accuracy([True] * 8 + [False, False], [True] * 9 + [False]) == pytest.approx((8 / 9 + 1) / 2)


def test_the_tuned_threshold_separates_a_constructed_set():
    assert best_threshold([0.1, 0.2, 0.3, 0.6, 0.7, 0.8], [False] * 3 + [True] * 3) == (pytest.approx(0.45), 1.0)
    # unsupported 0.1, 0.2, 0.6; supported 0.3, 0.7, 0.8: no cut is perfect. Passing 0.7 and up gives
    # (2/3 + 3/3) / 2 = 5/6, as does passing 0.3 and up ((3/3 + 2/3) / 2); the higher one is kept, halfway
    # between 0.7 and the next lower score, 0.6
    assert best_threshold([0.1, 0.2, 0.6, 0.3, 0.7, 0.8], [False] * 3 + [True] * 3) == pytest.approx((0.65, 5 / 6))

    # An evaluator whose own threshold (0.9) is far off, on a set its score separates perfectly: its verdict
    # is poor, the threshold tuned on dev sits in the gap, and it is perfect on test.
    rng = random.Random(7)
    rows = []
    for i in range(200):
        label = i % 2 == 0
        score = rng.uniform(0.55, 0.95) if label else rng.uniform(0.05, 0.35)
        rows.append(row(score, label, passed=score >= 0.9, row_id=f"item-{i}"))
    result = measure_agreement(rows, EV, "human")
    assert result.balanced_accuracy < 0.7
    assert result.roc_auc == 1.0
    dev_scores = [r[f"{EV}.score"] for r, d in zip(rows, dev_split(rows)) if d]
    dev_labels = [r["human"] for r, d in zip(rows, dev_split(rows)) if d]
    highest_neg = max(s for s, y in zip(dev_scores, dev_labels) if not y)
    lowest_pos = min(s for s, y in zip(dev_scores, dev_labels) if y)
    assert result.threshold == pytest.approx((highest_neg + lowest_pos) / 2)  # the middle of the dev gap
    assert result.dev_balanced_accuracy == 1.0 and result.test_balanced_accuracy == 1.0
    assert result.dev_rows + result.test_rows == 200 and result.dev_rows == sum(dev_split(rows))


# ---------------------------------------------------------------------------------------------
# the dev / test split


def test_the_split_is_stable_across_calls_files_and_row_order():
    rows = noisy(400)
    first = dev_split(rows)
    assert dev_split(rows) == first
    assert 150 < sum(first) < 250  # about half, by the hash
    assert 80 < sum(dev_split(rows, 0.3)) < 160

    # the same rows scored for another checkpoint (other scores, shuffled): each row falls the same way
    other = [dict(r, checkpoint="v2", **{f"{EV}.score": 1 - r[f"{EV}.score"]}) for r in rows]
    random.Random(1).shuffle(other)
    side = {r["row_id"]: d for r, d in zip(rows, first)}
    assert [side[r["row_id"]] for r in other] == dev_split(other)

    # two results files of the same rows give the same dev/test counts
    a, b = measure_agreement(rows, EV, "human"), measure_agreement(other, EV, "human")
    assert (a.dev_positives, a.dev_negatives, a.test_positives, a.test_negatives) == \
        (b.dev_positives, b.dev_negatives, b.test_positives, b.test_negatives)
    assert a.split_by_index == 0

    # without row_id: by the row's index, and said
    plain = [{k: v for k, v in r.items() if k != "row_id"} for r in rows]
    assert dev_split(plain) == dev_split(plain) and dev_split(plain) != first
    by_index = measure_agreement(plain, EV, "human")
    assert by_index.split_by_index == 400 and "400 row(s) without one: by index" in str(by_index)

    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="dev_fraction must be a number between 0 and 1"):
            dev_split(rows, bad)


# ---------------------------------------------------------------------------------------------
# intervals


def test_intervals_contain_the_estimate_shrink_with_n_and_repeat():
    small, large = measure_agreement(noisy(120), EV, "human"), measure_agreement(noisy(3000), EV, "human")
    for result in (small, large):
        assert result.balanced_accuracy_ci[0] <= result.balanced_accuracy <= result.balanced_accuracy_ci[1]
        assert result.roc_auc_ci[0] <= result.roc_auc <= result.roc_auc_ci[1]
        assert result.test_balanced_accuracy_ci[0] <= result.test_balanced_accuracy \
            <= result.test_balanced_accuracy_ci[1]

    def width(ci):
        return ci[1] - ci[0]

    # 25 times the rows: about a fifth of the width (1/sqrt(25)); at most half, whatever the draws
    assert width(large.roc_auc_ci) < width(small.roc_auc_ci) / 2
    assert width(large.balanced_accuracy_ci) < width(small.balanced_accuracy_ci) / 2
    assert measure_agreement(noisy(120), EV, "human") == small  # a fixed seed: the same intervals every time
    assert measure_agreement(noisy(120), EV, "human", seed=1).roc_auc_ci != small.roc_auc_ci


@pytest.mark.parametrize("numpy_installed", [True, False])
def test_each_resample_is_counted_as_a_brute_force_recount(monkeypatch, numpy_installed):
    """With one resample the interval is that resample's value: recount it from the same draws by
    sorting the resampled rows (the shortcut reweights the sorted negatives instead)."""
    data = noisy(60, seed=3)
    scores = [round(r[f"{EV}.score"], 1) for r in data]  # rounded: many ties
    labels = [bool(r["human"]) for r in data]
    verdicts = [s >= 0.5 for s in scores]
    pos = [i for i, y in enumerate(labels) if y]
    neg = sorted((i for i, y in enumerate(labels) if not y), key=scores.__getitem__)
    if numpy_installed:
        import numpy as np

        rng = np.random.default_rng(11)
        pick_pos, pick_neg = rng.integers(0, len(pos), (1, len(pos)))[0], rng.integers(0, len(neg), (1, len(neg)))[0]
    else:
        monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy raises ImportError
        rng = random.Random(11)
        pick_pos, pick_neg = rng.choices(range(len(pos)), k=len(pos)), rng.choices(range(len(neg)), k=len(neg))
    rows = [pos[k] for k in pick_pos] + [neg[k] for k in pick_neg]
    expected_auc = roc_auc([scores[i] for i in rows], [labels[i] for i in rows])
    expected_bacc = balanced_accuracy([verdicts[i] for i in rows], [labels[i] for i in rows])
    bacc_ci, auc_ci = bootstrap_intervals(labels, verdicts, scores, resamples=1, seed=11)
    assert auc_ci == (pytest.approx(expected_auc), pytest.approx(expected_auc))
    assert bacc_ci == (pytest.approx(expected_bacc), pytest.approx(expected_bacc))


def test_without_numpy_the_module_imports_and_gives_close_intervals():
    code = ("import sys; sys.modules['numpy'] = None\n"
            "import json; from fi_evals_core.evals.agreement import measure_agreement\n"
            "rows = [json.loads(line) for line in sys.stdin]\n"
            "print(json.dumps(measure_agreement(rows, 'fc', 'human').to_dict()))")
    rows = noisy(500)
    proc = subprocess.run([sys.executable, "-c", code], input="".join(json.dumps(r) + "\n" for r in rows),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pure = json.loads(proc.stdout)
    with_numpy = measure_agreement(rows, EV, "human").to_dict()
    for key in ("roc_auc", "balanced_accuracy", "threshold", "test_balanced_accuracy", "dev_rows"):
        assert pure[key] == with_numpy[key]  # the point estimates do not depend on numpy
    for key in ("roc_auc_ci", "balanced_accuracy_ci"):  # other draws, the same method: close intervals
        assert pure[key] == pytest.approx(with_numpy[key], abs=0.02)


# ---------------------------------------------------------------------------------------------
# labels and counts


@pytest.mark.parametrize("value, expected", [
    (1, True), (0, False), (True, True), (False, False), (1.0, True), ("1", True), ("0", False), ("1.0", True),
    ("true", True), ("FALSE", False), ("Yes", True), ("no", False), ("pass", True), ("Fail", False),
    ("supported", True), ("Unsupported", False), ("consistent", True), ("inconsistent", False),
    ("correct", True), ("incorrect", False), ("entailment", True), ("not_entailment", False),
    ("Not-Entailment", False), (" supported ", True),
    (None, None), ("", None), ("   ", None), (float("nan"), None),
])
def test_labels_in_every_documented_form(value, expected):
    assert parse_label(value) is expected


def test_unreadable_labels_raise_naming_the_column_and_values():
    rows = [row(0.9, v) for v in ("maybe", "2", "neutral", "maybe", 2, 0.5, "??", "supported")]
    with pytest.raises(ValueError) as info:
        measure_agreement(rows, EV, "human")
    message = str(info.value)
    assert "label column 'human'" in message and "7 value(s) are not a human label" in message
    assert "'maybe'" in message and "'neutral'" in message and "and 1 more" in message  # 6 distinct, 5 named
    with pytest.raises(ValueError, match="label column 'humna': no such column; columns are human, fc.score"):
        measure_agreement(rows, EV, "humna")


def test_missing_labels_and_errored_rows_are_counted_never_dropped():
    rows = [row(0.9, 1), row(0.8, "yes"), row(0.2, 0), row(0.3, "no"),
            row(0.7, None), row(0.6, ""), row(0.1, float("nan")), {f"{EV}.score": 0.5, f"{EV}.passed": True},
            row(None, 1), row(None, 0), row(None, None)]
    result = measure_agreement(rows, EV, "human")
    assert (result.rows, result.measured, result.unlabelled, result.errored) == (11, 4, 5, 2)
    assert (result.positives, result.negatives) == (2, 2)
    assert result.measured + result.unlabelled + result.errored == result.rows
    text = str(result)
    assert "4 of 11 rows measured (2 supported, 2 not); left out: 5 without a label, 2 errored" in text


def test_one_class_only_says_why_instead_of_a_number():
    result = measure_agreement([row(0.9, 1), row(0.4, 1), row(0.7, 1)], EV, "human")
    assert result.balanced_accuracy is None and result.roc_auc is None and result.threshold is None
    assert result.balanced_accuracy_ci is None and result.roc_auc_ci is None
    assert "no balanced accuracy or ROC-AUC: the measured rows hold no unsupported rows" in result.notes
    assert any(note.startswith("no threshold tuned") for note in result.notes)
    assert "note: no balanced accuracy" in str(result)
    json.dumps(result.to_dict())  # still serialisable


def test_agreement_reads_a_results_file_or_a_dataset(tmp_path):
    rows = [dict(r, checkpoint="v7") for r in noisy(80)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_file = measure_agreement(path, None, "human")  # the only evaluation
    assert isinstance(from_file, Agreement) and from_file.checkpoint == "v7" and from_file.evaluation == EV
    assert measure_agreement(Dataset.from_results(path), EV, "human") == from_file == measure_agreement(rows, EV, "human")
    data = from_file.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["measured"] == 80 and data["dev_rows"] + data["test_rows"] == 80
    assert data["roc_auc_ci"][0] <= data["roc_auc"] <= data["roc_auc_ci"][1]
    assert "LLM-AggreFact" in data["method"] and "dev fraction 0.5" in data["method"]
    text = str(from_file)
    assert text.startswith("fc (v7) against human label 'human': 80 of 80 rows measured")
    assert f"ROC-AUC of its score {from_file.roc_auc:.3f}" in text
    assert f"threshold tuned on dev {from_file.dev_rows} rows" in text
    with pytest.raises(ValueError, match="no evaluation 'nope'"):
        measure_agreement(path, "nope", "human")
    with pytest.raises(ValueError, match="run\\(\\) it first"):
        measure_agreement(Dataset(rows), EV, "human")
    assert math.isclose(measure_agreement(rows, EV, "human", dev_fraction=0.3).dev_fraction, 0.3)
