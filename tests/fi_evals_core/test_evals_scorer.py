"""The NLI scorer on real (tiny, random) BERT, RoBERTa and DeBERTa-v2 checkpoints: label mapping,
chunking, batching, bounded inputs, configuration."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fi_evals_core.evals import EvalsConfig, FactualConsistency, LabelError, LabelScheme, NLIScorer, ScoreRequest
from fi_evals_core.evals.evaluators import Planned
from fi_evals_core.evals.scorer import ScorePlanner
from fi_evals_core.evals.text import split_sentences
from fi_evals_core.telemetry.config import ConfigError
from fi_evals_core.testing.tiny_nli import CROSS_ENCODER_LABELS, MINICHECK_LABELS, NLI_LABELS

QAGS = json.loads((Path(__file__).parent / "fixtures" / "qags_xsum_sample.json").read_text())


@pytest.mark.parametrize(
    "names, support, contradiction",
    [
        (("entailment", "neutral", "contradiction"), 0, 2),
        (("contradiction", "entailment", "neutral"), 1, 0),
        (("CONTRADICTION", "Neutral", "Entailment"), 2, 0),
        (("unsupported", "supported"), 1, None),
        (("entailment", "not_entailment"), 0, None),
        (("Supported", "Refuted"), 0, 1),
    ],
)
def test_label_scheme_reads_any_order(names, support, contradiction):
    scheme = LabelScheme.from_config(dict(enumerate(names)), "m")
    assert (scheme.support, scheme.contradiction) == (support, contradiction)


def test_label_scheme_refuses_what_it_cannot_read():
    with pytest.raises(LabelError, match=r"0: 'LABEL_0', 1: 'LABEL_1'.*FI_EVALS_LABELS"):
        LabelScheme.from_config({0: "LABEL_0", 1: "LABEL_1"}, "some/classifier")
    with pytest.raises(LabelError, match="positive"):
        LabelScheme.from_config({0: "negative", 1: "positive"}, "sentiment")
    with pytest.raises(LabelError, match="3 labels given but the checkpoint has 2"):
        LabelScheme.from_config({0: "LABEL_0", 1: "LABEL_1"}, "x", override=NLI_LABELS)
    # documented generic names of a known family, and an explicit override
    assert LabelScheme.from_config({0: "LABEL_0", 1: "LABEL_1"}, "lytang/MiniCheck-RoBERTa-Large").support == 1
    assert LabelScheme.from_config({0: "LABEL_0", 1: "LABEL_1"}, "x", override=("supported", "no")).support == 0


@pytest.mark.parametrize(
    "family, labels",
    [("bert", NLI_LABELS), ("roberta", CROSS_ENCODER_LABELS), ("deberta-v2", MINICHECK_LABELS)],
)
def test_probabilities_come_from_the_labelled_outputs(nli_checkpoint, family, labels):
    path = nli_checkpoint(family, labels)
    scorer = NLIScorer.from_pretrained(path, device="cpu")
    premises, claims = ["The cat sees the door today.", "A dog likes a book."], ["The cat sees it.", "A dog reads."]
    support, contradiction = scorer.score_pairs(premises, claims)

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        probs = torch.softmax(model(**tok(premises, claims, padding=True, return_tensors="pt")).logits, -1)
    assert support == pytest.approx(probs[:, labels.index(labels[scorer.labels.support])].tolist(), abs=1e-6)
    assert labels[scorer.labels.support] in ("entailment", "supported")
    if "contradiction" in labels:
        assert contradiction == pytest.approx(probs[:, labels.index("contradiction")].tolist(), abs=1e-6)
    else:
        assert contradiction is None


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta-v2"])
def test_batched_scores_equal_one_at_a_time(nli_checkpoint, family):
    scorer = NLIScorer.from_pretrained(nli_checkpoint(family), device="cpu", batch_size=8, chunk_tokens=120)
    requests = [ScoreRequest([s.text for s in split_sentences(it["summary"] + " The report was published on Monday.")],
                             [it["document"]]) for it in QAGS[:4]]
    together = scorer.score(requests)
    for request, evidence in zip(requests, together):
        alone = scorer.score([request])[0]
        assert [e.claim for e in evidence] == [e.claim for e in alone]
        for a, b in zip(evidence, alone):
            assert a.chunks == b.chunks and len(a.support) > 1
            assert a.support == pytest.approx(b.support, abs=1e-5)
            assert a.contradiction == pytest.approx(b.contradiction, abs=1e-5)


def test_chunks_cover_the_document_at_sentence_boundaries(nli_checkpoint):
    scorer = NLIScorer.from_pretrained(nli_checkpoint("bert"), device="cpu")
    for item in QAGS:
        doc = item["document"]
        sentences = split_sentences(doc)
        budget = 60
        chunks = scorer.chunk([doc], budget)
        starts, ends = {s.start for s in sentences}, {s.end for s in sentences}
        long = [s for s in sentences if scorer.token_lengths([s.text])[0] > budget]

        def in_long(pos):  # a too-long sentence is cut into token windows: the one place to cut inside
            return any(s.start <= pos <= s.end for s in long)

        assert len(chunks) >= 2
        covered = set()
        for chunk in chunks:
            assert chunk.text == doc[chunk.start:chunk.end] and chunk.passage == 0
            assert scorer.token_lengths([chunk.text])[0] <= budget
            assert chunk.start in starts or in_long(chunk.start)
            assert chunk.end in ends or in_long(chunk.end)
            covered.update(s.start for s in sentences if chunk.start <= s.start and s.end <= chunk.end)
        assert covered | {s.start for s in long} == starts  # every sentence is in some chunk
        for before, after in zip(chunks, chunks[1:]):  # overlap is at most one sentence
            shared = [s for s in sentences if after.start <= s.start and s.end <= before.end]
            assert len(shared) <= 1 and after.end > before.end


def test_a_sentence_longer_than_the_budget_becomes_token_windows(nli_checkpoint):
    scorer = NLIScorer.from_pretrained(nli_checkpoint("bert"), device="cpu")
    words = " ".join(f"word{i % 10}" for i in range(300)) + "."
    chunks = scorer.chunk([words], 50)
    assert len(chunks) >= 6
    assert all(scorer.token_lengths([c.text])[0] <= 50 for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(words)


def test_no_pair_exceeds_the_models_window_and_a_long_claim_is_scored_whole(nli_checkpoint):
    """A model with a 64-position table: long premises and a claim longer than half the window fit,
    and nothing is cut: the claim is scored in windows, as its weakest window."""
    path = nli_checkpoint("roberta", max_positions=64)
    scorer = NLIScorer.from_pretrained(path, device="cpu")
    assert scorer.max_length == 64
    fed: list[int] = []
    original = scorer.score_pairs

    def recording(premises, hypotheses):
        fed.extend(len(ids) for ids in scorer.tokenizer(list(premises), list(hypotheses))["input_ids"])
        return original(premises, hypotheses)

    scorer.score_pairs = recording
    claim = " ".join(f"the cat number {i} sees the door" for i in range(12)) + "."
    document = QAGS[0]["document"]
    evidence = scorer.score([ScoreRequest([claim, "A dog."], [document])])[0]
    assert max(fed) <= 64
    windows = scorer.claim_windows(claim, scorer.token_lengths([claim])[0])
    assert len(windows) >= 3 and evidence[0].windows == len(windows) and evidence[1].windows == 1
    assert evidence[0].claim == claim  # the whole claim, not its first 30 tokens
    assert " ".join(text for text, _ in windows).split() == claim.split()  # every word in some window
    # the same windows scored as claims of their own: the long claim's evidence is the weakest one's
    alone = scorer.score([ScoreRequest([text for text, _ in windows] + ["A dog."], [document])])[0]
    weakest = min(alone[:-1], key=lambda e: max(e.support))
    assert evidence[0].support == weakest.support and evidence[0].contradiction == weakest.contradiction
    assert evidence[1].support == alone[-1].support
    assert min(max(e.support) for e in alone[:-1]) < max(max(e.support) for e in alone[:-1])  # windows differ


def test_a_100000_word_reference_is_scored_whole_in_bounded_batches(nli_checkpoint):
    scorer = NLIScorer.from_pretrained(nli_checkpoint("bert"), device="cpu", batch_size=16)
    base = " ".join(it["document"] for it in QAGS)
    words = base.split()
    reference = " ".join(words[i % len(words)] for i in range(100_000))
    batch_shapes: list[tuple[int, int]] = []
    original = scorer.score_pairs

    def recording(premises, hypotheses):
        enc = scorer.tokenizer(list(premises), list(hypotheses), padding=True, truncation="only_first",
                               max_length=scorer.max_length)
        batch_shapes.append((len(enc["input_ids"]), len(enc["input_ids"][0])))
        return original(premises, hypotheses)

    scorer.score_pairs = recording
    evidence = scorer.score([ScoreRequest(["The council said it would build an arena."], [reference])])[0]
    chunks = evidence[0].chunks
    assert len(chunks) >= 100_000 * 1.1 / 400  # at least a token per word, at most 400 per chunk
    assert chunks[0].start == 0 and chunks[-1].end == len(reference.rstrip())
    assert len(evidence[0].support) == len(chunks)
    assert max(b for b, _ in batch_shapes) <= 16 and max(n for _, n in batch_shapes) <= scorer.max_length


def test_a_planner_without_weights_cuts_as_the_scorer_and_its_plans_score_the_same(nli_checkpoint, monkeypatch):
    """Ray's CPU tasks plan with the tokenizer and config alone; the scorer actors score those plans
    (pickled in between): the same claim windows, chunks and scores as `score`, and a plan made with
    other settings is refused, not scored."""
    path = nli_checkpoint("roberta", max_positions=64)  # long claims in windows, documents in many chunks
    scorer = NLIScorer.from_pretrained(path, device="cpu")
    planner = ScorePlanner.from_pretrained(path)
    assert type(planner) is ScorePlanner and not hasattr(planner, "model")
    claim = " ".join(f"the cat number {i} sees the door" for i in range(12)) + "."
    requests = [ScoreRequest([claim, "A dog."], [QAGS[0]["document"]]),
                ScoreRequest([QAGS[1]["summary"]], [QAGS[1]["document"], QAGS[2]["document"]])]
    plans = planner.plan(requests)
    assert plans == scorer.plan(requests)
    assert len(plans[0].windows) > 2 and plans[0].window_owner.count(0) == len(plans[0].windows) - 1
    assert len(plans[1].chunks) > 2 and {c.passage for c in plans[1].chunks} == {0, 1}
    direct = scorer.score(requests)
    shipped = scorer.score_plans(pickle.loads(pickle.dumps(plans)))
    assert [[(e.claim, e.support, e.contradiction, e.windows) for e in r] for r in shipped] == \
        [[(e.claim, e.support, e.contradiction, e.windows) for e in r] for r in direct]
    for other in (ScorePlanner.from_pretrained(path, chunk_tokens=32),
                  ScorePlanner.from_pretrained(path, profile="alignscore")):
        with pytest.raises(ValueError, match=r"a plan made for .*cannot be scored by this scorer's"):
            scorer.score_plans(other.plan(requests))

    # an evaluator built from settings plans without loading its model, then scores as evaluate_batch
    monkeypatch.setenv("FI_EVALS_DEVICE", "cpu")
    items = [{"response": it["summary"], "reference": it["document"]} for it in QAGS[:3]] + [{"response": None}]
    unloaded = FactualConsistency(model=path)
    planned = unloaded.plan_batch(items)
    assert unloaded._scorer is None and type(unloaded.planner) is ScorePlanner
    assert [type(p) for p in planned][:3] == [Planned] * 3 and "reference is missing" in planned[3].reason
    expected = FactualConsistency(scorer=scorer).evaluate_batch(items)
    got = unloaded.score_planned(pickle.loads(pickle.dumps(planned)))
    assert [r.to_dict() for r in got] == [r.to_dict() for r in expected]


def test_configuration_from_the_environment(nli_checkpoint, monkeypatch):
    path = nli_checkpoint("bert", ("LABEL_0", "LABEL_1", "LABEL_2"))
    monkeypatch.setenv("FI_EVALS_MODEL", path)
    monkeypatch.setenv("FI_EVALS_DEVICE", "auto")
    with pytest.raises(LabelError, match="LABEL_0"):
        NLIScorer.from_pretrained()
    monkeypatch.setenv("FI_EVALS_LABELS", "neutral, contradiction, entailment")
    scorer = NLIScorer.from_pretrained()
    assert (scorer.labels.support, scorer.labels.contradiction) == (2, 1)
    assert scorer.device.type == "cpu"
    for var, value in [("FI_EVALS_DEVICE", "gpu"), ("FI_EVALS_DTYPE", "int8"), ("FI_EVALS_LABELS", "a,b,c,d")]:
        with pytest.raises(ConfigError, match=var):
            EvalsConfig.from_env({var: value})


def test_bfloat16_weights_score_close_to_float32(nli_checkpoint):
    path = nli_checkpoint("deberta-v2")
    pairs = ([it["document"][:600] for it in QAGS], [it["summary"] for it in QAGS])
    fp32, _ = NLIScorer.from_pretrained(path, device="cpu", dtype="float32").score_pairs(*pairs)
    bf16, _ = NLIScorer.from_pretrained(path, device="cpu", dtype="bfloat16").score_pairs(*pairs)
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.03


def test_a_local_model_path_that_does_not_exist_is_said_at_once(tmp_path, monkeypatch):
    """Not the hub's "Repo id must be in the form ..." error, nor a wait on the network."""
    missing = tmp_path / "checkpoints" / "v7"
    with pytest.raises(FileNotFoundError, match=f"the NLI model: no model at {missing}"):
        NLIScorer.from_pretrained(str(missing), device="cpu")
    monkeypatch.setenv("FI_EVALS_MODEL", "./no/such/model")
    with pytest.raises(FileNotFoundError, match="FI_EVALS_MODEL: no model at ./no/such/model"):
        NLIScorer.from_pretrained(device="cpu")


def test_a_cuda_device_this_machine_lacks_is_a_config_error_naming_its_source(nli_checkpoint, monkeypatch):
    """FI_EVALS_DEVICE=cuda on a CPU-only machine (or cuda:N past the last GPU): a ConfigError naming
    the variable, not a torch assertion at the first batch."""
    absent = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    monkeypatch.setenv("FI_EVALS_DEVICE", absent)
    with pytest.raises(ConfigError, match=f"FI_EVALS_DEVICE='{absent}' is not valid"):
        NLIScorer.from_pretrained(nli_checkpoint("bert"))
    with pytest.raises(ConfigError, match=f"device='{absent}' is not valid"):
        NLIScorer.from_pretrained(nli_checkpoint("bert"), device=absent)
