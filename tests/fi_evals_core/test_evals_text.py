"""Sentence and claim segmentation (fi_evals_core.evals.text): each rule, real QAGS-XSum documents,
a 100,000-word text, other scripts and degenerate input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fi_evals_core.evals.text import TextSpan, has_words, split_claims, split_sentences

FIXTURE = Path(__file__).parent / "fixtures" / "qags_xsum_sample.json"

#: Sentence counts of the fixture documents, checked by reading every split (see the ids below).
QAGS_SENTENCES = [10, 11, 11, 19, 14, 17, 56, 25]


def sentences(text: str) -> list[str]:
    spans = split_sentences(text)
    for span in spans:
        assert text[span.start : span.end] == span.text
        assert span.text == span.text.strip() and span.text
    return [span.text for span in spans]


@pytest.fixture(scope="module")
def qags() -> list[dict]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


# --- the span type and has_words ---------------------------------------------------------------


def test_text_span_is_frozen_with_slots():
    span = TextSpan("Hi.", 0, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        span.start = 1  # type: ignore[misc]
    assert not hasattr(span, "__dict__")


@pytest.mark.parametrize("text", ["abc", "42", "日本語", "नमस्ते", "¿Qué?", "  x  ", "Ünïcödé"])
def test_has_words_true(text):
    assert has_words(text)


@pytest.mark.parametrize("text", ["", "   \n\t", "...!?", "—–-", "_", "• * #", "「」。"])
def test_has_words_false(text):
    assert not has_words(text)


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t", "...", "?!?! ... !!!", "- * •\n\n---", "。！？"])
def test_no_words_gives_no_sentences(text):
    assert split_sentences(text) == []
    assert split_claims(text) == []


def test_punctuation_only_spans_are_dropped():
    assert sentences("Hello there. !!! ... Goodbye.") == ["Hello there.", "Goodbye."]
    assert sentences("First line.\n\n* * *\n\nSecond line.") == ["First line.", "Second line."]


# --- terminal punctuation ----------------------------------------------------------------------


def test_plain_sentences():
    assert sentences("The cat sat. The dog ran! Did it rain? Yes.") == [
        "The cat sat.", "The dog ran!", "Did it rain?", "Yes.",
    ]


def test_no_terminal_punctuation_is_one_sentence():
    text = "the council says a new arena could open in bristol by 2016 if funding is agreed"
    assert sentences(text) == [text]


def test_surrounding_whitespace_is_trimmed_and_offsets_kept():
    text = "  \n  First one.   Second one.  \n"
    spans = split_sentences(text)
    assert [(s.text, s.start, s.end) for s in spans] == [("First one.", 5, 15), ("Second one.", 18, 29)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Smith met Mrs. Jones and Dr. Brown. They talked.",
         ["Mr. Smith met Mrs. Jones and Dr. Brown.", "They talked."]),
        ("Prof. Lee moved to St. Louis. Then he left.", ["Prof. Lee moved to St. Louis.", "Then he left."]),
        ("Use fruit, e.g. Apples or pears, i.e. Anything sweet. Done.",
         ["Use fruit, e.g. Apples or pears, i.e. Anything sweet.", "Done."]),
        ("Cats vs. Dogs is a film. It is long.", ["Cats vs. Dogs is a film.", "It is long."]),
        ("He lives at No. 10 Downing Street. She does not.",
         ["He lives at No. 10 Downing Street.", "She does not."]),
        ("See Fig. 3 and pp. 12-14. It works.", ["See Fig. 3 and pp. 12-14.", "It works."]),
        ("It opened on Jan. 5 2020. Sales rose.", ["It opened on Jan. 5 2020.", "Sales rose."]),
        # "no" is a numbering abbreviation only before a digit.
        ("The answer was no. Nobody asked again.", ["The answer was no.", "Nobody asked again."]),
        ("The U.S. Army and the U.K. Navy met. They agreed.",
         ["The U.S. Army and the U.K. Navy met.", "They agreed."]),
        ("He moved to the U.S. The move was hard.", ["He moved to the U.S.", "The move was hard."]),
        ("It starts at 9 a.m. and ends at 5 p.m. The rest is free.",
         ["It starts at 9 a.m. and ends at 5 p.m.", "The rest is free."]),
        ("Apples, pears, etc. Are all fruit. Acme Inc. Was founded in 1990.",
         ["Apples, pears, etc.", "Are all fruit.", "Acme Inc. Was founded in 1990."]),
        ("Shares of Acme Inc. The company said sales rose.",
         ["Shares of Acme Inc.", "The company said sales rose."]),
        ("Smith et al. The authors found nothing.", ["Smith et al.", "The authors found nothing."]),
        ("It costs approx. two dollars. Cheap.", ["It costs approx. two dollars.", "Cheap."]),
    ],
)
def test_abbreviations(text, expected):
    assert sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("J. K. Rowling wrote it. George W. Bush read it.",
         ["J. K. Rowling wrote it.", "George W. Bush read it."]),
        ("The t. bataar was found in the gobi. It was sold.",
         ["The t. bataar was found in the gobi.", "It was sold."]),
        ("They fought World War I. The war ended in 1918.",
         ["They fought World War I.", "The war ended in 1918."]),
        ("J. A. Smith and E. B. White met. They talked.",
         ["J. A. Smith and E. B. White met.", "They talked."]),
        ("In Roe v. Wade the court ruled. It was c. 1973.",
         ["In Roe v. Wade the court ruled.", "It was c. 1973."]),
        ("They chose plan C. The others left.", ["They chose plan C.", "The others left."]),
    ],
)
def test_initials(text, expected):
    assert sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Pi is 3.14 today. It was 3.15 before.", ["Pi is 3.14 today.", "It was 3.15 before."]),
        ("Profit rose to $1.5m. Sales grew 2.5%. Costs fell 0.5 points.",
         ["Profit rose to $1.5m.", "Sales grew 2.5%.", "Costs fell 0.5 points."]),
        ("Version 2.0. The next one is 3.0.1 in 2025. Stay tuned.",
         ["Version 2.0.", "The next one is 3.0.1 in 2025.", "Stay tuned."]),
        ("She scored 7. Then she scored 12.", ["She scored 7.", "Then she scored 12."]),
        ("It was a 1,000,000.00 deal. It closed in 2019. 2020 was worse.",
         ["It was a 1,000,000.00 deal.", "It closed in 2019.", "2020 was worse."]),
        ("Steps: 1. Mix the flour. 2. Bake it.", ["Steps: 1. Mix the flour.", "2. Bake it."]),
    ],
)
def test_decimals_and_numbers(text, expected):
    assert sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wait... What happened? I was thinking... about it.",
         ["Wait...", "What happened?", "I was thinking... about it."]),
        ("He paused… Then he spoke. It was arena for bristol… we're sure.",
         ["He paused…", "Then he spoke.", "It was arena for bristol… we're sure."]),
        ("Really?! Yes!!! Fine.", ["Really?!", "Yes!!!", "Fine."]),
    ],
)
def test_ellipses_and_runs(text, expected):
    assert sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("She wrote “I agree.” Nobody replied.", ["She wrote “I agree.”", "Nobody replied."]),
        ("(See the appendix.) It has the data.", ["(See the appendix.)", "It has the data."]),
        ('"Why?" he asked. "Because!" she said.', ['"Why?" he asked.', '"Because!" she said.']),
        ("It is really time. \"there is interest,\" he added.",
         ["It is really time.", "\"there is interest,\" he added."]),
        ("We asked for feedback now (in march! ), we'll act on it.",
         ["We asked for feedback now (in march! ), we'll act on it."]),
        ("He left [quickly]. [Then] he returned.", ["He left [quickly].", "[Then] he returned."]),
    ],
)
def test_quotes_and_brackets(text, expected):
    assert sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Visit https://example.com/a.b?x=1&y=2! Or www.example.org. Thanks.",
         ["Visit https://example.com/a.b?x=1&y=2!", "Or www.example.org.", "Thanks."]),
        ("Mail john.doe@example.co.uk. He replies fast.",
         ["Mail john.doe@example.co.uk.", "He replies fast."]),
        ("A U.K.-based firm won. Yahoo!Inc lost.", ["A U.K.-based firm won.", "Yahoo!Inc lost."]),
    ],
)
def test_urls_and_emails(text, expected):
    assert sentences(text) == expected


# --- layout: lists and newlines ----------------------------------------------------------------


def test_bullets_are_items_and_markers_are_dropped():
    text = (
        "Findings:\n- Revenue rose 5%\n* Costs fell\n+ Staff grew\n• Offices opened\n– Debt was repaid\n"
        "▪ Sales doubled"
    )
    assert sentences(text) == [
        "Findings:", "Revenue rose 5%", "Costs fell", "Staff grew", "Offices opened", "Debt was repaid",
        "Sales doubled",
    ]


def test_numbered_and_lettered_items():
    text = (
        "1. First step\n2) Second step\n(3) Third step\n1.2. Sub step\na) Letter one\n(b) Letter two\n"
        "iv) Roman"
    )
    assert sentences(text) == [
        "First step", "Second step", "Third step", "Sub step", "Letter one", "Letter two", "Roman",
    ]


def test_list_item_with_several_sentences_and_an_indented_continuation():
    text = "- The first item. It has two sentences\n  and wraps onto a second line\n- Second item"
    assert sentences(text) == [
        "The first item.", "It has two sentences\n  and wraps onto a second line", "Second item",
    ]


def test_unindented_line_after_an_item_starts_a_new_sentence():
    assert sentences("- an item without a stop\nthe paragraph after it") == [
        "an item without a stop", "the paragraph after it",
    ]


def test_not_list_markers():
    # A hyphen needs a space after it to be a bullet, a number its "." or ")" and a space.
    text = "Lows of\n-5 degrees were seen in\n2016 when\n3.5 million people\n1.5m homes and\n(1)x lost power."
    assert sentences(text) == [text]


def test_blank_line_always_ends_a_sentence():
    assert sentences("the first paragraph has no stop\n\nthe second one neither\n \t\nthird") == [
        "the first paragraph has no stop", "the second one neither", "third",
    ]


def test_terminal_punctuation_at_line_end_ends_the_sentence_even_before_lower_case():
    assert sentences("It was done.\nthen it was not.") == ["It was done.", "then it was not."]


def test_abbreviation_at_line_end_does_not():
    assert sentences("He called Dr.\nSmith at home.") == ["He called Dr.\nSmith at home."]


def test_heading_line_is_its_own_sentence():
    text = "Quarterly results\nRevenue grew by 5% in the quarter.\nCosts fell."
    assert sentences(text) == ["Quarterly results", "Revenue grew by 5% in the quarter.", "Costs fell."]
    assert sentences("## Summary\nthe model is small.") == ["Summary", "the model is small."]


def test_hard_wrapped_prose_is_joined():
    text = (
        "The company said on Tuesday that revenue grew strongly across its\n"
        "European markets, while costs in North America fell for the third\n"
        "Quarter in a row.\n"
    )
    assert sentences(text) == [text.strip()]


def test_short_first_line_ending_in_a_function_word_or_comma_is_not_a_heading():
    assert sentences("Revenue grew because of\nStrong demand in Europe.") == [
        "Revenue grew because of\nStrong demand in Europe.",
    ]
    assert sentences("Dear Anna,\nThanks for the report.") == ["Dear Anna,\nThanks for the report."]


def test_windows_line_endings():
    text = "First line.\r\nSecond line.\r\n\r\n- item one\r\n- item two\r\n"
    assert sentences(text) == ["First line.", "Second line.", "item one", "item two"]


# --- other scripts -----------------------------------------------------------------------------


def test_chinese():
    assert sentences("今天天气很好。我们去公园吧！你呢？好的") == ["今天天气很好。", "我们去公园吧！", "你呢？", "好的"]
    assert sentences("他说：「我来了。」然后走了。") == ["他说：「我来了。」", "然后走了。"]


def test_hindi():
    assert sentences("मैं घर जा रहा हूँ। तुम कहाँ हो? ठीक है।यह अच्छा है॥") == [
        "मैं घर जा रहा हूँ।", "तुम कहाँ हो?", "ठीक है।", "यह अच्छा है॥",
    ]


def test_spanish_inverted_marks():
    assert sentences("¿Dónde está la biblioteca? Está al lado del parque. ¡Qué bonito día! ¿Vamos?") == [
        "¿Dónde está la biblioteca?", "Está al lado del parque.", "¡Qué bonito día!", "¿Vamos?",
    ]


def test_other_scripts_split_on_generic_punctuation():
    assert sentences("Привет. Как дела? Хорошо!") == ["Привет.", "Как дела?", "Хорошо!"]
    assert sentences("Γειά σου. Τι κάνεις") == ["Γειά σου.", "Τι κάνεις"]
    assert sentences("هل أنت بخير؟ نعم.") == ["هل أنت بخير؟", "نعم."]


# --- claims ------------------------------------------------------------------------------------


def test_claims_are_sentences_with_words_of_min_chars():
    text = "Paris is in France. OK. !!! It has 2 million people.\n- Berlin too"
    assert [c.text for c in split_claims(text)] == [
        "Paris is in France.", "OK.", "It has 2 million people.", "Berlin too",
    ]
    assert [c.text for c in split_claims("Paris is in France. Ok", min_chars=3)] == ["Paris is in France."]
    assert [c.text for c in split_claims(text, min_chars=5)] == [
        "Paris is in France.", "It has 2 million people.", "Berlin too",
    ]


def _long_clause(i: int) -> str:
    return f"the {i}th clause of this run-on sentence says something quite specific about topic {i}"


def test_long_sentence_is_split_at_clause_boundaries():
    clauses = [_long_clause(i) for i in range(6)]
    text = (
        f"{clauses[0]}; {clauses[1]}, and {clauses[2]}, but {clauses[3]}; {clauses[4]}, and {clauses[5]}."
    )
    assert len(text) > 400
    claims = split_claims(text)
    assert [c.text for c in claims] == clauses[:5] + [clauses[5] + "."]
    for claim in claims:
        assert text[claim.start : claim.end] == claim.text


def test_long_sentence_keeps_pieces_of_at_least_40_chars():
    text = "Short bit; " + _long_clause(1) + ", and " + "x" * 300 + "; tail, and end."
    assert len(text) > 400
    claims = [c.text for c in split_claims(text)]
    # "Short bit" and "tail, and end." are too short to stand alone; they stay with a neighbour.
    assert claims == ["Short bit; " + _long_clause(1), "x" * 300 + "; tail, and end."]


def test_sentence_of_400_chars_or_less_is_not_split():
    text = _long_clause(1) + "; " + _long_clause(2) + ", and " + _long_clause(3) + "."
    assert len(text) <= 400
    assert [c.text for c in split_claims(text)] == [text]


# --- real documents ----------------------------------------------------------------------------


def test_fixture_is_varied(qags):
    assert len(qags) == 8
    assert {item["consistency"] for item in qags} == {0.0, 1.0}
    assert set(qags[0]) == {"system", "summary", "document", "consistency"}
    lengths = [len(item["document"]) for item in qags]
    assert min(lengths) < 1300 and max(lengths) > 3000


def test_qags_offsets_round_trip(qags):
    for item in qags:
        for field in ("document", "summary"):
            text = item[field]
            for span in split_sentences(text) + split_claims(text):
                assert text[span.start : span.end].strip() == span.text == text[span.start : span.end]
            spans = split_sentences(text)
            assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))
            # Nothing but whitespace (or dropped punctuation) lies between sentences.
            gaps = [text[a.end : b.start] for a, b in zip(spans, spans[1:])]
            assert all(not has_words(gap) for gap in gaps)


def test_qags_sentence_counts(qags):
    assert [len(split_sentences(item["document"])) for item in qags] == QAGS_SENTENCES
    # Every summary is one sentence.
    assert all(len(split_sentences(item["summary"])) == 1 for item in qags)


def test_qags_hard_cases(qags):
    by_start = {item["document"][:30]: sentences(item["document"]) for item in qags}
    bristol = next(v for k, v in by_start.items() if k.startswith("A 12,000-seater"))
    assert bristol[4:7] == [
        "\"we've fallen behind cardiff too often in the past.",
        "It is really time to grab the opportunity and go for it.",
        "\"there is a very big interest in an arena for bristol... we're absolutely determined to "
        "deliver it,\" he added.",
    ]
    dinosaur = next(v for k, v in by_start.items() if k.startswith("A row has broken out"))
    assert dinosaur[-5] == (
        "Found about seven years ago in the gobi desert, the t. bataar remained in storage in england."
    )
    android = next(v for k, v in by_start.items() if k.startswith("Split-screen"))
    assert any("(in march! ), we'll be able" in s for s in android)
    match = next(v for k, v in by_start.items() if k.startswith("The national league game"))
    assert match.count("Danny m. rowe (macclesfield town) wins a free kick.") == 2


@pytest.mark.timeout(60)
def test_100k_words(qags):
    documents = [item["document"] for item in qags]
    words_per_round = sum(len(d.split()) for d in documents)
    rounds = 100_000 // words_per_round + 1
    text = " ".join(documents * rounds)
    assert len(text.split()) >= 100_000
    spans = split_sentences(text)
    assert len(spans) == rounds * sum(QAGS_SENTENCES)
    expected = [s for d in documents for s in sentences(d)] * rounds
    assert [s.text for s in spans] == expected
    assert len(split_claims(text)) == len(spans)  # no sentence of these documents exceeds 400 chars


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("word " * 100_000, 1),
        ("a. " * 100_000, 1),  # every "." is followed by a lower-case word
        ("Mr. " * 100_000, 1),
        ("a." * 300_000, 1),
        ("x" * 600_000 + ". Y", 2),
        ("\n".join(["- item"] * 50_000), 50_000),
        ("word, and " * 60_000 + ".", 1),
    ],
)
def test_degenerate_large_inputs_stay_linear(text, count):
    # Guards against quadratic scans and regex backtracking: each completes in well under a second.
    assert len(split_sentences(text)) == count
