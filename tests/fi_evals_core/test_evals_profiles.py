"""Scoring profiles against their references: MiniCheck's and AlignScore's published inference,
written here from their papers' and READMEs' descriptions, run on random-weight checkpoints of the
real architectures (RoBERTa; DeBERTa-v3 without token types; AlignScore's Lightning checkpoint of
a RoBERTa with a pooler and three heads), must give the scorer's numbers to 1e-5 in fp32.

The references split sentences with this project's splitter where the originals use NLTK's punkt
(not installable offline): everything else (chunking, encoding, aggregation, threshold) is theirs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from fi_evals_core import FactualConsistency
from fi_evals_core.evals import NLIScorer
from fi_evals_core.evals import profiles
from fi_evals_core.evals.text import split_sentences
from fi_evals_core.telemetry.config import ConfigError
from fi_evals_core.testing.tiny_nli import MINICHECK_LABELS, build_alignscore_checkpoint

QAGS = json.loads((Path(__file__).parent / "fixtures" / "qags_xsum_sample.json").read_text())
SHORT_DOC = QAGS[0]["document"]
LONG_DOC = "\n".join(item["document"] for item in QAGS[:4])  # ~1,000 words over several lines
ONE_CLAIM = QAGS[0]["summary"]
MANY_CLAIMS = " ".join(item["summary"] for item in QAGS[:3])  # a multi-sentence response, scored whole
CASES = [(SHORT_DOC, ONE_CLAIM), (SHORT_DOC, MANY_CLAIMS), (LONG_DOC, ONE_CLAIM), (LONG_DOC, MANY_CLAIMS)]


# -- MiniCheck (Tang, Laban & Durrett 2024; the roberta-large / deberta-v3-large inference) -------

def minicheck_reference(path, doc, claim, max_length, chunk_size=400):
    """Sentences per line with a newline item between lines; items packed greedily by their token
    counts (each counted without specials, cut at the window) while the sum stays <= 400; chunks
    joined by spaces, " \\n " read back as a newline, trimmed, empty ones dropped. Each chunk is fed
    as ONE sequence `chunk + eos + claim`, cut at `max_length`; P(supported) is output 1; the score
    is the max over chunks; supported when > 0.5."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    items = []
    for number, line in enumerate(doc.split("\n")):
        if number:
            items.append("\n")
        items += [span.text for span in split_sentences(line)]
    chunks, current, used = [], [], 0
    for item in items or [""]:
        count = len(tokenizer(item, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"])
        if used + count > chunk_size:
            chunks.append(" ".join(current))
            current, used = [item], count
        else:
            current.append(item)
            used += count
    chunks.append(" ".join(current))
    chunks = [c for c in (c.replace(" \n ", "\n").strip() for c in chunks) if c]
    enc = tokenizer([chunk + tokenizer.eos_token + claim for chunk in chunks], max_length=max_length,
                    truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        support = torch.softmax(model(**enc).logits, dim=-1)[:, 1]
    return chunks, support.tolist()


@pytest.fixture(scope="module")
def minicheck_checkpoints(nli_checkpoint, tmp_path_factory):
    """MiniCheck-shaped tiny checkpoints in folders named as the hub's (auto-detection reads the name)."""
    root = tmp_path_factory.mktemp("minicheck")
    out = {}
    # initializer_range 0.5: random weights whose outputs differ from pair to pair (at 0.1 they sit
    # within 0.005 of each other, and equality to 1e-5 would prove little)
    for family, name, kwargs in (("roberta", "MiniCheck-RoBERTa-Large", {"initializer_range": 0.5}),
                                 ("deberta-v2", "MiniCheck-DeBERTa-v3-Large",
                                  {"type_vocab_size": 0, "initializer_range": 0.5})):
        source = nli_checkpoint(family, MINICHECK_LABELS, **kwargs)
        out[family] = shutil.copytree(source, root / name)
    return out


@pytest.mark.parametrize("family, max_length", [("roberta", 512), ("deberta-v2", 2048)])
def test_minicheck_profile_equals_the_reference(minicheck_checkpoints, family, max_length):
    path = minicheck_checkpoints[family]
    scorer = NLIScorer.from_pretrained(str(path), device="cpu", dtype="float32")
    assert scorer.profile is profiles.MINICHECK and scorer.max_length == max_length  # detected from the name
    evaluator = FactualConsistency(scorer=scorer)
    worst, spread = 0.0, []
    for doc, claim in CASES:
        chunks, support = minicheck_reference(path, doc, claim, max_length)
        result = evaluator.evaluate(response=claim, reference=doc)
        (judged,) = result.claims  # the response is one claim, whole
        assert judged.claim == claim
        evidence = scorer.score([profiles_request(claim, doc)])[0][0]
        assert len(evidence.chunks) == len(chunks)
        worst = max(worst, max(abs(a - b) for a, b in zip(evidence.support, support)))
        spread += support
        assert result.score == pytest.approx(max(support), abs=1e-5)
        assert result.passed == (max(support) > 0.5)
    print(f"minicheck {family}: max |scorer - reference| {worst:.1e} per chunk, outputs spread "
          f"{min(spread):.3f}..{max(spread):.3f}")
    assert worst < 1e-5
    assert max(spread) - min(spread) > 0.01  # the random head tells pairs apart: equality means something
    assert len(minicheck_reference(path, LONG_DOC, ONE_CLAIM, max_length)[0]) >= 3  # long documents chunk


def profiles_request(claim, doc, sentences=False):
    from fi_evals_core.evals import ScoreRequest

    return ScoreRequest([span.text for span in split_sentences(claim)] if sentences else [claim], [doc])


def test_minicheck_cuts_a_long_claim_as_the_reference_does_and_says_so(minicheck_checkpoints):
    path = minicheck_checkpoints["roberta"]
    scorer = NLIScorer.from_pretrained(str(path), device="cpu", dtype="float32")
    claim = " ".join(item["summary"] for item in QAGS) * 3  # with a 400-token chunk: over 512
    _, support = minicheck_reference(path, LONG_DOC, claim, 512)
    result = FactualConsistency(scorer=scorer).evaluate(response=claim, reference=LONG_DOC)
    assert result.score == pytest.approx(max(support), abs=1e-5)
    assert result.claims[0].truncated and "cut at the model's 512-token window, as the minicheck" in result.reason


def test_the_threshold_and_the_profile_choice():
    assert profiles.MINICHECK.passes(0.5, 0.5) is False and profiles.MINICHECK.passes(0.5001, 0.5)
    assert profiles.DEFAULT.passes(0.5, 0.5) is True
    assert profiles.detect("lytang/MiniCheck-RoBERTa-Large") is profiles.MINICHECK
    assert profiles.detect("/models/AlignScore-large.ckpt") is profiles.ALIGNSCORE
    assert profiles.detect("cross-encoder/nli-deberta-v3-base") is profiles.DEFAULT
    assert profiles.resolve("default", "lytang/MiniCheck-RoBERTa-Large") is profiles.DEFAULT  # chosen wins
    with pytest.raises(ValueError, match="'minichek' is not a scoring profile"):
        profiles.resolve("minichek", "x")
    from fi_evals_core.evals import EvalsConfig

    assert EvalsConfig.from_env({"FI_EVALS_PROFILE": "MiniCheck"}).profile == "minicheck"
    with pytest.raises(ConfigError, match="FI_EVALS_PROFILE"):
        EvalsConfig.from_env({"FI_EVALS_PROFILE": "summac"})


def test_a_profile_chosen_for_the_default_checkpoint(nli_checkpoint):
    """The same weights under the default and the minicheck profile: whole-claim scoring differs
    from sentence claims, and a BERT checkpoint cannot take the minicheck profile."""
    path = nli_checkpoint("roberta", MINICHECK_LABELS)
    default = NLIScorer.from_pretrained(path, device="cpu")
    minicheck = NLIScorer.from_pretrained(path, device="cpu", profile="minicheck")
    assert default.profile is profiles.DEFAULT and minicheck.profile is profiles.MINICHECK
    split = FactualConsistency(scorer=default).evaluate(response=MANY_CLAIMS, reference=SHORT_DOC)
    whole = FactualConsistency(scorer=minicheck).evaluate(response=MANY_CLAIMS, reference=SHORT_DOC)
    assert len(split.claims) >= 3 and len(whole.claims) == 1
    with pytest.raises(ValueError, match="minicheck profile reproduces MiniCheck's RoBERTa and DeBERTa"):
        NLIScorer.from_pretrained(nli_checkpoint("bert", MINICHECK_LABELS), device="cpu", profile="minicheck")


# -- AlignScore (Zha et al. 2023; `nli_sp`, the default evaluation mode) ---------------------------

def alignscore_reference(checkpoint, premise, hypothesis):
    """The released checkpoint read as AlignScore's model: the backbone (with its pooler) and the
    3-way head on the pooled output. The premise's sentences go in n = words // 350 + 1 parts of
    len(sentences) // n sentences, joined by spaces; the hypothesis is split into sentences; each
    (chunk, sentence) pair is encoded as a pair, the chunk cut to fit 512 tokens, padded to 512;
    the score is the mean over sentences of the max over chunks of P(aligned) (output 0)."""
    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    backbone = data["hyper_parameters"]["model"]
    state = data["state_dict"]
    config = AutoConfig.from_pretrained(backbone)
    base = AutoModel.from_config(config, add_pooling_layer=True).eval()
    base.load_state_dict({k[len("base_model."):]: v for k, v in state.items() if k.startswith("base_model.")})
    tri = torch.nn.Linear(config.hidden_size, 3)
    tri.load_state_dict({k[len("tri_layer."):]: v for k, v in state.items() if k.startswith("tri_layer.")})
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    sentences = [span.text for span in split_sentences(premise)] or [""]
    parts = len(premise.strip().split()) // 350 + 1
    size = max(len(sentences) // parts, 1)
    chunks = [" ".join(sentences[i:i + size]) for i in range(0, len(sentences), size)]
    claims = [span.text for span in split_sentences(hypothesis)]
    pairs = [(chunk, claim) for chunk in chunks for claim in claims]
    enc = tokenizer([c for c, _ in pairs], [h for _, h in pairs], truncation="only_first", padding="max_length",
                    max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        aligned = torch.softmax(tri(base(**enc).pooler_output), dim=-1)[:, 0].view(len(chunks), len(claims))
    return aligned.max(dim=0).values.mean().item(), aligned.T.tolist()  # per claim, per chunk


@pytest.fixture(scope="module")
def alignscore_checkpoint(nli_checkpoint, tmp_path_factory):
    backbone = nli_checkpoint("roberta")
    return build_alignscore_checkpoint(tmp_path_factory.mktemp("alignscore") / "AlignScore-base.ckpt", backbone)


def test_alignscore_checkpoint_loads_and_equals_the_reference(alignscore_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FI_EVALS_CACHE", str(tmp_path / "cache"))
    scorer = NLIScorer.from_pretrained(str(alignscore_checkpoint), device="cpu", dtype="float32")
    assert scorer.profile is profiles.ALIGNSCORE and scorer.labels.support == 0 and scorer.labels.contradiction == 2
    converted = list((tmp_path / "cache" / "alignscore").iterdir())
    assert len(converted) == 1 and (converted[0] / "config.json").is_file()
    assert set(torch.load(converted[0] / "alignscore_heads.pt", weights_only=True)) == {
        "bin_layer.weight", "bin_layer.bias", "reg_layer.weight", "reg_layer.bias"}
    evaluator = FactualConsistency(scorer=scorer, threshold=0.5)
    chunk_counts, worst, spread = set(), 0.0, []
    for doc, claim in CASES:
        expected, table = alignscore_reference(alignscore_checkpoint, doc, claim)
        chunk_counts.add(len(table[0]))
        result = evaluator.evaluate(response=claim, reference=doc)
        assert result.score == pytest.approx(expected, abs=1e-5)
        assert len(result.claims) == len(split_sentences(claim))
        assert result.passed == (expected >= 0.5)  # no contradiction veto in this profile
        evidence = scorer.score([profiles_request(claim, doc, sentences=True)])[0]
        assert [len(e.support) for e in evidence] == [len(row) for row in table]  # the same chunks
        worst = max(worst, max(abs(a - b) for e, row in zip(evidence, table) for a, b in zip(e.support, row)))
        spread += [p for row in table for p in row]
    print(f"alignscore: max |scorer - reference| {worst:.1e} per (chunk, sentence), outputs spread "
          f"{min(spread):.3f}..{max(spread):.3f}")
    assert worst < 1e-5
    assert max(chunk_counts) >= 3  # long documents were chunked
    assert max(spread) - min(spread) > 0.01  # the random head tells pairs apart: equality means something
    # converted once: a second load reads the cache
    again = NLIScorer.from_pretrained(str(alignscore_checkpoint), device="cpu", dtype="float32")
    assert list((tmp_path / "cache" / "alignscore").iterdir()) == converted
    assert again.score_pairs(["A premise."], ["A claim."]) == scorer.score_pairs(["A premise."], ["A claim."])


def test_a_file_that_is_not_an_alignscore_checkpoint_is_said(tmp_path, monkeypatch):
    monkeypatch.setenv("FI_EVALS_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, bad)
    with pytest.raises(ValueError, match="not an AlignScore checkpoint"):
        NLIScorer.from_pretrained(str(bad), device="cpu")
    with pytest.raises(FileNotFoundError, match="no model at"):
        NLIScorer.from_pretrained(str(tmp_path / "missing.ckpt"), device="cpu")


def test_the_cli_takes_a_profile(nli_checkpoint, tmp_path):
    import os
    import subprocess
    import sys

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"document": item["document"], "summary": MANY_CLAIMS}) + "\n"
                            for item in QAGS[:2]))
    runs = {}
    for profile in ("default", "minicheck"):
        out = tmp_path / f"{profile}.jsonl"
        proc = subprocess.run([sys.executable, "-m", "fi_evals_core.evals", "run", str(data), "-e", "factual_consistency",
                               "--map", "response=summary", "--map", "reference=document", "--nli-model",
                               nli_checkpoint("roberta", MINICHECK_LABELS), "--profile", profile, "-o", str(out),
                               "--no-progress"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "FI_EVALS_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[profile] = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(row["factual_consistency.claims"]) == 1 for row in runs["minicheck"])  # whole
    assert all(len(row["factual_consistency.claims"]) >= 3 for row in runs["default"])  # sentences
    bad = subprocess.run([sys.executable, "-m", "fi_evals_core.evals", "run", str(data), "-e", "factual_consistency",
                          "--profile", "summac", "-o", str(tmp_path / "x.jsonl")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--profile: invalid choice: 'summac'" in bad.stderr
