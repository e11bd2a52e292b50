"""The four evaluators: their maths on hand-built probability tables, and their behaviour on
real (tiny, random) checkpoints with good and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fi_evals_core import EvalResult, FactualConsistency, Faithfulness, Groundedness, TaskCompletion
from fi_evals_core.evals import Chunk, ClaimEvidence, NLIScorer, evaluator_class
from fi_evals_core.testing.tiny_nli import MINICHECK_LABELS

QAGS = json.loads((Path(__file__).parent / "fixtures" / "qags_xsum_sample.json").read_text())
A = Chunk("Alpha passage.", 0, 0, 14)
B = Chunk("Beta passage.", 1, 0, 13)


def evidence(claim, support, contradiction=None, chunks=(A, B)):
    return ClaimEvidence(claim, list(chunks), list(support), None if contradiction is None else list(contradiction))


@pytest.fixture(scope="module")
def scorer(nli_checkpoint):
    return NLIScorer.from_pretrained(nli_checkpoint("bert"), device="cpu")


@pytest.fixture(scope="module")
def binary_scorer(nli_checkpoint):
    return NLIScorer.from_pretrained(nli_checkpoint("deberta-v2", MINICHECK_LABELS), device="cpu")


# -- the maths, on probability tables injected at `judge` -----------------------------------------

def test_factual_consistency_is_the_mean_best_support_and_fails_on_a_contradiction():
    fc = FactualConsistency(scorer=object(), threshold=0.5)
    table = [evidence("c1", [0.2, 0.9], [0.1, 0.0]), evidence("c2", [0.6, 0.3], [0.2, 0.1])]
    result = fc.judge(table)
    assert result.score == pytest.approx((0.9 + 0.6) / 2) and result.passed is True
    assert [c.evidence for c in result.claims] == [B, A]
    assert "least supported" in result.reason and '"c2"' in result.reason

    # contradicted: its best chunk (B) contradicts it at 0.7 >= 0.5, above that chunk's support
    table.append(evidence("c3", [0.2, 0.25], [0.1, 0.7]))
    result = fc.judge(table)
    assert result.score == pytest.approx((0.9 + 0.6 + 0.25) / 3)
    assert result.passed is False and result.label == "fail"
    assert '"c3"' in result.reason and "contradiction 0.70" in result.reason and "Beta passage" in result.reason
    assert result.claims[2].contradicting == B and result.claims[2].evidence == B

    # a high contradiction below the claim's support is not a contradiction
    assert fc.judge([evidence("c", [0.9, 0.1], [0.0, 0.6])]).passed is True


def test_a_contradiction_from_another_chunk_does_not_veto_a_supported_claim():
    """The 0.92 / 0.95 case: A supports the claim at 0.92; B, an unrelated chunk of a long document,
    'contradicts' it at 0.95. Only the best chunk's contradiction counts, so the claim passes."""
    fc = FactualConsistency(scorer=object(), threshold=0.5)
    result = fc.judge([evidence("c", [0.92, 0.01], [0.03, 0.95])])
    assert result.passed is True and result.score == pytest.approx(0.92)
    claim = result.claims[0]
    assert claim.evidence == A and claim.contradiction == pytest.approx(0.03) and claim.contradicting is None
    # the same figures from the same chunk: support 0.01 beside contradiction 0.95 is a veto, whatever
    # another chunk says; the mean support still passes the threshold, the veto fails the row
    vetoed = fc.judge([evidence("c1", [0.9, 0.1], [0.0, 0.0]), evidence("c2", [0.3, 0.6], [0.1, 0.35]),
                       evidence("c3", [0.45, 0.2], [0.52, 0.1])])
    assert vetoed.score >= 0.5 and vetoed.passed is False
    assert [c.contradicting for c in vetoed.claims] == [None, None, A]
    # 2-way checkpoints have no contradiction: only the support counts
    assert fc.judge([evidence("c", [0.45, 0.55])]).passed is True


def test_faithfulness_counts_supported_claims():
    f = Faithfulness(scorer=object(), claim_threshold=0.5, threshold=0.75)
    table = [evidence("c1", [0.9, 0.1]), evidence("c2", [0.2, 0.51]), evidence("c3", [0.49, 0.1]),
             evidence("c4", [0.7, 0.7])]
    result = f.judge(table)
    assert result.score == pytest.approx(0.75) and result.passed is True
    assert '"c3"' in result.reason and "3 of 4" in result.reason
    assert f.judge(table[1:3]).score == pytest.approx(0.5)


def test_groundedness_is_the_weakest_claim():
    g = Groundedness(scorer=object())
    table = [evidence("c1", [0.9, 0.1]), evidence("c2", [0.2, 0.45]), evidence("c3", [0.8, 0.3])]
    result = g.judge(table)
    assert result.score == pytest.approx(0.45) and result.passed is False
    assert '"c2"' in result.reason and "best passage 1" in result.reason
    # the same table: Faithfulness says two of three, FactualConsistency the mean — three different numbers
    assert Faithfulness(scorer=object()).judge(table).score == pytest.approx(2 / 3)
    assert FactualConsistency(scorer=object()).judge(table).score == pytest.approx((0.9 + 0.45 + 0.8) / 3)


def test_task_completion_against_expected_and_against_the_task():
    t = TaskCompletion(scorer=object())
    covered = [evidence("e1", [0.8]), evidence("e2", [0.4])]
    assert t.judge(covered, against_expected=True).score == pytest.approx(0.6)
    conflict = [evidence("r1", [0.3], [0.1]), evidence("r2", [0.1], [0.8])]
    result = t.judge(conflict, against_expected=False)
    assert result.score == pytest.approx(0.2) and result.passed is False and '"r2"' in result.reason


# -- real checkpoints ---------------------------------------------------------------------------

def test_evaluate_on_real_documents(scorer):
    item = QAGS[0]
    result = FactualConsistency(scorer=scorer).evaluate(response=item["summary"], reference=item["document"])
    assert isinstance(result, EvalResult) and result.ok and 0.0 <= result.score <= 1.0
    assert result.label in ("pass", "fail") and result.claims
    for claim in result.claims:
        assert claim.evidence.text == item["document"][claim.evidence.start:claim.evidence.end]
        assert claim.contradiction is not None
    data = json.loads(json.dumps(result.to_dict()))
    assert data["name"] == "factual_consistency" and data["label"] == result.label


def test_context_passages_keep_their_index(scorer):
    result = Groundedness(scorer=scorer).evaluate(
        response="The council approved the arena. Tickets go on sale in May.",
        context=["The council approved a new arena on Tuesday.", "Tickets for the first concerts go on sale in May."],
    )
    assert len(result.claims) == 2
    assert {c.evidence.passage for c in result.claims} <= {0, 1}
    assert all(c.evidence.text in ("The council approved a new arena on Tuesday.",
                                   "Tickets for the first concerts go on sale in May.") for c in result.claims)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"response": None, "reference": "A text."}, "response is None"),
        ({"response": 42, "reference": "A text."}, "response must be a string, got int"),
        ({"response": "   \n", "reference": "A text."}, "response is empty"),
        ({"response": "?!... --", "reference": "A text."}, "response has no letters or digits"),
        ({"response": "A claim.", "reference": ""}, "reference is empty"),
        ({"response": "A claim."}, "reference is missing"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(scorer, inputs, message):
    with pytest.raises(ValueError, match=message):
        FactualConsistency(scorer=scorer).evaluate(**inputs)


def test_bad_context_names_the_passage(scorer):
    g = Groundedness(scorer=scorer)
    with pytest.raises(ValueError, match=r"context\[1\] is empty"):
        g.evaluate(response="A claim.", context=["Good passage.", " "])
    with pytest.raises(ValueError, match="context is an empty list"):
        g.evaluate(response="A claim.", context=[])
    with pytest.raises(TypeError, match="unexpected input.*reference"):
        g.evaluate(response="A claim.", context="x y", reference="z")
    with pytest.raises(ValueError, match="threshold"):
        Groundedness(threshold=1.5)


def test_a_bad_item_in_a_batch_gets_its_own_error_and_the_rest_are_scored(scorer):
    fc = FactualConsistency(scorer=scorer)
    items = [{"response": it["summary"], "reference": it["document"]} for it in QAGS[:3]]
    items.insert(1, {"response": None, "reference": "x"})
    results = fc.evaluate_batch(items)
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].error_type == "ValueError" and "response" in results[1].reason
    assert results[1].score is None and results[1].label is None
    for item, result in zip(items[:1] + items[2:], results[:1] + results[2:]):
        assert result.score == pytest.approx(fc.evaluate(**item).score, abs=1e-5)


def test_a_scorer_failure_on_one_item_spares_the_others(nli_checkpoint):
    class Failing(NLIScorer):
        def score_pairs(self, premises, hypotheses):
            if any("POISON" in p for p in premises):
                raise RuntimeError("model blew up")
            return super().score_pairs(premises, hypotheses)

    base = NLIScorer.from_pretrained(nli_checkpoint("bert"), device="cpu")
    failing = Failing(base.model, base.tokenizer, labels=base.labels)
    items = [{"response": "A cat sat.", "reference": "The cat sat on the mat."},
             {"response": "A dog ran.", "reference": "POISON pill here."},
             {"response": "It rained.", "reference": "It rained all day."}]
    results = FactualConsistency(scorer=failing).evaluate_batch(items)
    assert [r.error_type for r in results] == [None, "RuntimeError", None]
    assert results[1].reason == "model blew up"


def test_non_english_text_is_scored(scorer):
    result = FactualConsistency(scorer=scorer).evaluate(
        response="北京是中国的首都。它有很多人。", reference="北京是中华人民共和国的首都,人口超过两千万。")
    assert result.ok and len(result.claims) == 2 and 0 <= result.score <= 1
    result = Faithfulness(scorer=scorer).evaluate(response="भारत एक देश है।", context="भारत दक्षिण एशिया में एक देश है।")
    assert result.ok and len(result.claims) == 1


def test_task_completion_needs_expected_with_a_two_way_checkpoint(binary_scorer, scorer):
    with pytest.raises(ValueError, match="expected is missing"):
        TaskCompletion(scorer=binary_scorer).evaluate(task="Name a colour.", response="Blue.")
    ok = TaskCompletion(scorer=binary_scorer).evaluate(task="Name a colour.", response="Blue is a colour.",
                                                      expected="Blue.")
    assert ok.ok and ok.claims[0].claim == "Blue." and ok.claims[0].contradiction is None
    assert TaskCompletion(scorer=scorer).evaluate(task="Name a colour.", response="Blue.").ok


def test_evaluators_by_name():
    assert evaluator_class("faithfulness") is Faithfulness
    assert evaluator_class("TaskCompletion") is TaskCompletion
    with pytest.raises(ValueError, match="unknown evaluator 'nope'.*factual_consistency"):
        evaluator_class("nope")
