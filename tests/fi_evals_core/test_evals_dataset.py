"""Datasets, results files, traces into datasets, generation per checkpoint, regression maths.

Real tiny checkpoints throughout: a random BERT NLI classifier scores, the tiny Llama/GPT-2
generate, the real instrumented transformers pipeline writes the trace file that is read back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fi_evals_core.evals import FactualConsistency, NLIScorer
from fi_evals_core.evals.dataset import Dataset
from fi_evals_core.evals.generate import generate_responses
from fi_evals_core.evals.dataset import compare
from fi_evals_core.evals.regression import (Pairs, compare_results, mcnemar_exact_p, newcombe_interval,
                                            paired_newcombe_interval, wilson_interval)

PROGRAMS = Path(__file__).resolve().parent / "programs"

DOCS = [
    ("The cat sat on the mat. The mat was red and the room was warm.", "The cat sat on a red mat.", "animals"),
    ("Our team builds robots. The robots answer questions in the city.", "The team builds robots. They answer questions.", "tech"),
    ("A young girl reads a book by the river every morning.", "The girl reads by the river. She swims too.", "people"),
    ("The company sends letters to every student. The letters arrive on time.", "Letters arrive late.", "tech"),
    ("The old man walked to the river and looked at the birds.", "The old man watched birds by the river.", "people"),
    ("The teacher helps the students learn. They test the robot.", "", "tech"),  # empty summary: an error row
    ("The engineer opens the server. The server moves data.", "The engineer opened the server. It moves data.", "tech"),
]


@pytest.fixture(scope="module")
def scorer(nli_checkpoint):
    return NLIScorer.from_pretrained(nli_checkpoint("bert"), device="cpu", batch_size=4)


@pytest.fixture
def rows():
    return [{"id": i, "document": doc, "summary": summary, "topic": topic, "split": "a" if i % 2 else "b"}
            for i, (doc, summary, topic) in enumerate(DOCS)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- reading datasets ---------------------------------------------------------------------------


def test_jsonl_csv_dataframe_round_trips_keep_every_column(tmp_path, rows):
    import pandas as pd  # the datasets extra: a test dependency, never skipped
    rows[0]["extra"] = [1, 2]  # a column only one row has, holding a list
    jsonl = Dataset.load(write_jsonl(tmp_path / "d.jsonl", rows))
    assert jsonl.rows == rows
    assert jsonl.columns == ["id", "document", "summary", "topic", "split", "extra"]

    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "extra"} for r in rows])
    frame.loc[2, "topic"] = None
    from_frame = Dataset.from_pandas(frame)
    assert from_frame.rows[2]["topic"] is None
    assert type(from_frame.rows[0]["id"]) is int  # numpy scalars become Python values
    assert from_frame.rows[1] == {k: v for k, v in rows[1].items()}
    assert from_frame.to_pandas()["summary"].tolist() == frame["summary"].tolist()

    csv_path = tmp_path / "d.csv"
    frame.to_csv(csv_path, index=False)
    from_csv = Dataset.load(csv_path)
    assert from_csv.columns == ["id", "document", "summary", "topic", "split"]
    assert [r["topic"] for r in from_csv.rows] == ["animals", "tech", "", "tech", "people", "tech", "tech"]
    assert from_csv.rows[3]["summary"] == "Letters arrive late."
    assert from_csv.rows[3]["id"] == "3"  # CSV columns stay text

    json_list = tmp_path / "d.json"
    json_list.write_text(json.dumps(rows))
    assert Dataset.load(json_list).rows == rows
    with pytest.raises(ValueError, match="unknown dataset format '.xlsx'"):
        (tmp_path / "d.xlsx").write_text("x")
        Dataset.load(tmp_path / "d.xlsx")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        Dataset.load(tmp_path / "nope.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    assert Dataset.load(tmp_path / "bad.jsonl").rows[1] == {  # kept, as an error row naming its line
        "input_error": f"{tmp_path / 'bad.jsonl'}:2: a JSON object per line was expected, got list"}
    (tmp_path / "worse.jsonl").write_text('"text"\n{"a": \n')
    with pytest.raises(ValueError, match=r"worse.jsonl: no line is a usable JSON object"):
        Dataset.load(tmp_path / "worse.jsonl")


def test_a_malformed_line_and_a_lone_surrogate_are_error_rows_and_the_run_completes(tmp_path, scorer):
    """One bad line (not JSON) and one row with a lone surrogate (valid JSON, not encodable as
    UTF-8): each gets an error result naming its line, the other rows are scored, and the results
    file is written whole and reads back."""
    good = {"response": "The cat sat on the mat.", "reference": "A cat sat on the mat."}
    data_file = tmp_path / "golden.jsonl"
    data_file.write_text(json.dumps(good) + "\n" + '{"response": "broken\n'
                         + '{"response": "\\ud800 half a pair", "reference": "x"}\n' + json.dumps(good) + "\n")
    data = Dataset.load(data_file)
    data.add_evaluation(FactualConsistency(scorer=scorer), {"reference": "reference"})
    results = data.run(progress=False)
    verdicts = [r["factual_consistency.passed"] for r in results]
    assert verdicts[1] is None and verdicts[2] is None and None not in (verdicts[0], verdicts[3])
    assert results[1]["factual_consistency.error_type"] == "InputError"
    assert f"{data_file}:2: not JSON" in results[1]["factual_consistency.reason"]
    assert f"{data_file}:3: text that UTF-8 cannot encode" in results[2]["factual_consistency.reason"]
    out = data.save(tmp_path / "results.jsonl")
    back = Dataset.from_results(out).results
    assert len(back) == 4 and back[2]["response"] == "\ud800 half a pair"  # kept whole, as its JSON escape


def test_add_evaluation_checks_the_mapping(rows, scorer):
    data = Dataset(rows)
    evaluator = FactualConsistency(scorer=scorer)
    with pytest.raises(ValueError, match=r"no input 'context'.*inputs are response, reference"):
        data.add_evaluation(evaluator, {"response": "summary", "context": "document"})
    with pytest.raises(ValueError, match=r"reference='doc'.*columns are id, document, summary"):
        data.add_evaluation(evaluator, {"response": "summary", "reference": "doc"})
    with pytest.raises(ValueError, match="needs a column for response, reference"):
        data.add_evaluation(evaluator, {})
    with pytest.raises(ValueError, match="unknown evaluator 'nope'"):
        data.add_evaluation("nope", {})
    data.add_evaluation(evaluator, {"response": "summary", "reference": "document"})
    with pytest.raises(ValueError, match="already attached"):
        data.add_evaluation(evaluator, {"response": "summary", "reference": "document"})
    same_names = Dataset([{"response": "a b.", "reference": "c d."}]).add_evaluation(evaluator)
    assert same_names.evaluations[0].mapping == {"response": "response", "reference": "reference"}
    with pytest.raises(ValueError, match="no evaluation attached"):
        Dataset(rows).run()


def test_run_equals_evaluate_batch_and_results_files_round_trip(tmp_path, rows, scorer, capsys):
    evaluator = FactualConsistency(scorer=scorer)
    items = [{"response": r["summary"], "reference": r["document"]} for r in rows]
    scores = sorted(r.score for r in evaluator.evaluate_batch(items) if r.ok)
    evaluator.threshold = (scores[2] + scores[3]) / 2  # random weights: split the set in the middle
    data = Dataset(rows, checkpoint="ckpt-7")
    data.add_evaluation(evaluator, {"response": "summary", "reference": "document"}, name="fc")
    progress: list[tuple[int, int]] = []
    direct = evaluator.evaluate_batch(items, on_progress=lambda done, total: progress.append((done, total)))
    total = progress[-1][1]  # (chunk, claim) pairs: one call per model batch, done rising to the total
    assert [t for _, t in progress] == [total] * len(progress) and progress[-1][0] == total
    assert [d for d, _ in progress] == sorted({d for d, _ in progress}) and len(progress) > 1
    results = data.run(batch_size=3, progress=True)
    bar = capsys.readouterr().err
    # the bar counts rows (whole numbers, rows/s), its postfix model pairs
    assert f"pairs={total}" in bar and "7/7 rows" in bar and "row/s" in bar

    assert len(results) == len(rows) and data.results is results
    for row, result, expected in zip(rows, results, direct):
        for key, value in row.items():
            assert result[key] == value  # every column kept
        assert result["checkpoint"] == "ckpt-7"
        assert result["fc.passed"] == expected.passed and result["fc.label"] == expected.label
        assert result["fc.error_type"] == expected.error_type and result["fc.reason"] == expected.reason
        if expected.score is None:
            assert result["fc.score"] is None
        else:  # other batch neighbours, other padding: equal to float precision
            assert result["fc.score"] == pytest.approx(expected.score, abs=1e-5)
        assert len(result["fc.claims"]) == len(expected.claims)
    assert results[5]["fc.error_type"] == "ValueError" and results[5]["fc.passed"] is None
    assert {r["fc.label"] for r in results} >= {"pass", "fail"}  # the threshold splits this set

    saved = Dataset.from_results(data.save(tmp_path / "results.jsonl"))
    assert saved.results == json.loads(json.dumps(results))
    assert saved.rows == [{**r, "checkpoint": "ckpt-7", "row_id": result["row_id"]} for r, result in zip(rows, results)]
    assert saved.evaluation_names == ["fc"]
    import pyarrow  # noqa: F401  (the datasets extra: a test dependency)
    parquet = Dataset.from_results(data.save(tmp_path / "results.parquet"))
    assert parquet.results == saved.results  # claims stored as JSON text, decoded on read
    with pytest.raises(ValueError, match="JSONL .* or Parquet"):
        data.save(tmp_path / "results.csv")


def test_fail_rate_by_counts_errors_apart(tmp_path):
    lines = [
        *({"cohort": "x", "e.score": 0.9, "e.passed": True} for _ in range(3)),
        *({"cohort": "x", "e.score": 0.1, "e.passed": False} for _ in range(1)),
        {"cohort": "x", "e.score": None, "e.passed": None, "e.error_type": "ValueError"},
        {"cohort": "y", "e.score": 0.2, "e.passed": False},
        {"cohort": "z", "e.score": None, "e.passed": None, "e.error_type": "ValueError"},
        {"e.score": 0.7, "e.passed": True},  # no cohort value
    ]
    data = Dataset.from_results(write_jsonl(tmp_path / "r.jsonl", lines))
    rates = data.fail_rate_by("cohort")
    assert {k: (v.n, v.failed, v.errors) for k, v in rates.items()} == {
        "x": (4, 1, 1), "y": (1, 1, 0), "z": (0, 0, 1), None: (1, 0, 0)}
    assert rates["x"].fail_rate == 0.25 and rates["z"].fail_rate is None
    with pytest.raises(ValueError, match="column 'nope' not in the results"):
        data.fail_rate_by("nope")
    with pytest.raises(ValueError, match="no evaluation 'other'"):
        data.fail_rate_by("cohort", evaluation="other")


# -- traces -------------------------------------------------------------------------------------


def test_from_traces_reads_a_real_trace_file(tmp_path, llama):
    """The instrumented transformers pipeline writes spans (content on the span event) through the
    JSONL exporter; a bare `generate` call without content is skipped and counted."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from traceai_huggingface import HuggingFaceInstrumentor
    from transformers import pipeline

    from fi_evals_core.telemetry import ContentCapture, JsonlSpanExporter, TelemetryConfig, drain

    model, tok = llama
    trace_file = tmp_path / "traces.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "chat-app", "service.version": "2.4.1"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(trace_file)))
    instrumentor = HuggingFaceInstrumentor()
    instrumentor.instrument(tracer_provider=provider,
                            config=TelemetryConfig(capture_content=ContentCapture.EVENT_ONLY))
    try:
        generator = pipeline("text-generation", model=model, tokenizer=tok)
        one = generator("the cat sees", max_new_tokens=4, do_sample=False, return_full_text=False)
        batch = generator(["a dog likes", "the robot builds"], max_new_tokens=3, do_sample=False,
                          return_full_text=False)
        model.generate(**tok("no content here", return_tensors="pt"), max_new_tokens=2, do_sample=False)
        assert drain(10)
    finally:
        instrumentor.uninstrument()

    spans = [json.loads(line) for line in trace_file.read_text().splitlines()]
    pipeline_spans = [s for s in spans if s["name"].startswith("pipeline")]
    inner = [s for s in spans if s["parent_span_id"] in {p["span_id"] for p in pipeline_spans}]
    data = Dataset.from_traces(trace_file)
    assert data.trace_stats["skipped_without_content"] == 1  # the bare generate call
    assert data.trace_stats["nested"] == len(inner) >= 2  # generate calls inside the pipeline calls
    assert [(r["prompt"], r["completion"]) for r in data.rows] == [
        ("the cat sees", one[0]["generated_text"]),
        ("a dog likes", batch[0][0]["generated_text"]),
        ("the robot builds", batch[1][0]["generated_text"]),
    ]
    for row, span in zip([data.rows[0], data.rows[1]], pipeline_spans):
        assert (row["trace_id"], row["span_id"]) == (span["trace_id"], span["span_id"])
    first = data.rows[0]
    assert first["model"] == model.name_or_path and first["checkpoint"] == "2.4.1"
    assert first["huggingface.pipeline.task"] == "text-generation"
    assert first["service.name"] == "chat-app" and first["content_truncated"] is False
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for r in data.rows for k in r)

    sampled = Dataset.from_traces(trace_file, sample=2, seed=3)
    assert len(sampled) == 2 and all(r in data.rows for r in sampled.rows)
    assert sampled.rows == Dataset.from_traces(trace_file, sample=2, seed=3).rows
    assert {json.dumps(Dataset.from_traces(trace_file, sample=1, seed=s).rows) for s in range(8)} \
        == {json.dumps([r]) for r in data.rows}  # every row can be drawn
    assert len(Dataset.from_traces(trace_file, sample=10)) == 3
    with pytest.raises(ValueError, match="sample must be"):
        Dataset.from_traces(trace_file, sample=-1)


def _kv(key, value):
    if isinstance(value, bool):
        wrapped = {"boolValue": value}
    elif isinstance(value, int):
        wrapped = {"intValue": str(value)}  # OTLP/JSON writes int64 as a string
    elif isinstance(value, float):
        wrapped = {"doubleValue": value}
    elif isinstance(value, list):
        wrapped = {"arrayValue": {"values": [_kv("", v)["value"] for v in value]}}
    else:
        wrapped = {"stringValue": value}
    return {"key": key, "value": wrapped}


def _messages(role, *texts, finish=None):
    out = []
    for text in texts:
        message = {"role": role, "parts": [{"type": "text", "content": text}]}
        if finish:
            message["finish_reason"] = finish
        out.append(message)
    return json.dumps(out)


def _otlp_span(span_id, attributes, events=(), parent=""):
    return {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "parentSpanId": parent,
            "name": "chat m", "kind": 3, "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000001000000000", "attributes": [_kv(k, v) for k, v in attributes.items()],
            "events": [{"timeUnixNano": "1700000000500000000", "name": name,
                        "attributes": [_kv(k, v) for k, v in attrs.items()]} for name, attrs in events],
            "status": {}}


def _otlp_document(spans, version="9.9"):
    return {"resourceSpans": [{
        "resource": {"attributes": [_kv("service.name", "svc"), _kv("service.version", version)]},
        "scopeSpans": [{"scope": {"name": "traceai_vllm", "version": "0.1.0"}, "spans": spans}],
    }]}


def test_from_traces_reads_otlp_json(tmp_path):
    chat = [{"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
            {"role": "user", "parts": [{"type": "text", "content": "Name a river."}]}]
    on_span = _otlp_span("eee19b7ec3c1b174", {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "llama-base", "gen_ai.response.model": "llama-ft",
        "gen_ai.response.id": "chatcmpl-1", "gen_ai.usage.output_tokens": 3, "gen_ai.request.temperature": 0.5,
        "gen_ai.request.stream": False, "gen_ai.response.finish_reasons": ["stop"], "model.checkpoint": "step-1200",
        "app.tenant": "acme", "gen_ai.input.messages": json.dumps(chat),
        "gen_ai.output.messages": _messages("assistant", "The Nile.", finish="stop")})
    on_event = _otlp_span("0f3a9b7ec3c1b175", {"gen_ai.operation.name": "text_completion",
                                                "gen_ai.request.model": "llama-base", "app.tenant": "globex"},
                          events=[("gen_ai.client.inference.operation.details", {
                              "gen_ai.input.messages": _messages("user", "Once upon"),
                              "gen_ai.output.messages": _messages("assistant", "a time…[truncated]")})])
    no_content = _otlp_span("1f3a9b7ec3c1b176", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"})
    embeddings = _otlp_span("2f3a9b7ec3c1b177", {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "m"})
    path = tmp_path / "otlp.json"
    # the collector's file exporter: one document per line
    path.write_text(json.dumps(_otlp_document([on_span, no_content])) + "\n"
                    + json.dumps(_otlp_document([on_event, embeddings], version="10.0")) + "\n")
    data = Dataset.from_traces(path)
    assert data.trace_stats["skipped_without_content"] == 1  # embeddings spans are not generations
    first, second = data.rows
    assert first["prompt"] == "Name a river." and first["completion"] == "The Nile."
    assert first["messages"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Name a river."}]
    assert first["model"] == "llama-ft" and first["checkpoint"] == "step-1200"
    assert (first["trace_id"], first["span_id"], first["response_id"]) == (
        "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "chatcmpl-1")
    assert first["gen_ai.usage.output_tokens"] == 3 and first["gen_ai.request.temperature"] == 0.5
    assert first["gen_ai.request.stream"] is False and first["gen_ai.response.finish_reasons"] == ["stop"]
    assert first["app.tenant"] == "acme" and first["start_time_unix_nano"] == 1700000000000000000
    assert "gen_ai.input.messages" not in first and "gen_ai.output.messages" not in first
    assert (second["prompt"], second["completion"]) == ("Once upon", "a time…[truncated]")
    assert second["content_truncated"] is True and second["checkpoint"] == "10.0"  # resource service.version
    assert second["model"] == "llama-base" and "messages" not in second

    pretty = tmp_path / "one.json"  # a single pretty-printed document
    pretty.write_text(json.dumps(_otlp_document([on_span]), indent=2))
    assert Dataset.from_traces(pretty).rows == [first]
    (tmp_path / "other.jsonl").write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="neither an OTLP JSON document"):
        Dataset.from_traces(tmp_path / "other.jsonl")


# -- generation ---------------------------------------------------------------------------------


def _reference_generation(model_dir, prompts, max_tokens, chat):
    """Unbatched greedy `generate`, the prompt through the chat template or raw."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    out = []
    for prompt in prompts:
        if chat:
            enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
        else:
            enc = tok(prompt, return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False)
        out.append(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


PROMPTS = ["the cat sees a dog", "hello", "my friend reads a long book about the river"]


@pytest.mark.parametrize("family, chat", [("llama", None), ("gpt2", False)])
def test_generate_responses_with_transformers(model_dirs, family, chat):
    data = Dataset([{"prompt": p, "cohort": i} for i, p in enumerate(PROMPTS)])
    out = generate_responses(data, str(model_dirs[family]), backend="transformers", max_tokens=6,
                             batch_size=2, chat_template=chat, progress=False, checkpoint=f"{family}-v2")
    assert [r["response"] for r in out.rows] == _reference_generation(model_dirs[family], PROMPTS, 6,
                                                                      chat is None)
    assert all(r["checkpoint"] == f"{family}-v2" for r in out.rows) and out.checkpoint == f"{family}-v2"
    assert [r["cohort"] for r in out.rows] == [0, 1, 2] and "response" not in data.columns
    with pytest.raises(ValueError, match="row 1: prompt must be non-empty"):
        generate_responses(Dataset([{"prompt": "a"}, {"prompt": " "}]), str(model_dirs[family]),
                           backend="transformers")
    with pytest.raises(ValueError, match="no column 'question'"):
        generate_responses(data, str(model_dirs[family]), prompt_column="question")


def test_generate_responses_with_vllm_matches_transformers(model_dirs):
    """In a subprocess: a second in-process vLLM engine breaks the one traceai_vllm/test_vllm.py holds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_"))}
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    proc = subprocess.run([sys.executable, str(PROGRAMS / "generate_with_vllm.py"), str(model_dirs["llama"]),
                           json.dumps(PROMPTS)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(next(line[5:] for line in proc.stdout.splitlines() if line.startswith("ROWS ")))
    assert [r["response"] for r in rows] == _reference_generation(model_dirs["llama"], PROMPTS, 8, True)
    assert {r["checkpoint"] for r in rows} == {str(model_dirs["llama"])}


# -- regression maths ---------------------------------------------------------------------------


@pytest.mark.parametrize("x, n, low, high", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_published_values(x, n, low, high):
    got = wilson_interval(x, n)
    assert got == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize("x1, n1, x2, n2, low, high", [
    # Newcombe (1998), "Interval estimation for the difference between independent proportions:
    # comparison of eleven methods", Table II, method 10 (hybrid score), examples (a), (b), (d)-(h)
    (56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090), (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775), (0, 10, 0, 10, -0.2775, 0.2775), (10, 10, 0, 20, 0.6791, 1.0),
    (10, 10, 0, 10, 0.6075, 1.0),
])
def test_newcombe_interval_matches_published_values(x1, n1, x2, n2, low, high):
    assert newcombe_interval(x1, n1, x2, n2) == pytest.approx((low, high), abs=5e-5)


def test_paired_interval_and_mcnemar_match_published_values():
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), ch. 8:
    # complete response before and after consolidation therapy (Cavo et al. 2012), 161 patients:
    # 59 both, 6 only before, 16 only after, 80 neither. Newcombe square-and-add: -0.0621
    # (-0.1186 to -0.0046); McNemar exact conditional P = 0.052479 (2 x P(X <= 6), X ~ Bin(22, 1/2)).
    low, high = paired_newcombe_interval(59, 6, 16, 80)
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    assert mcnemar_exact_p(6, 16) == pytest.approx(0.052479, abs=5e-7) == mcnemar_exact_p(16, 6)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(3, 3) == 1.0
    # verdicts uncorrelated (phi = 0): the paired interval is the unpaired one of the same margins
    assert paired_newcombe_interval(10, 10, 10, 10) == pytest.approx(newcombe_interval(20, 40, 20, 40))


def _paired_rows(verdicts, evaluation="fc", checkpoint=None, cohort="c"):
    return [{"row_id": f"r{i}", "cohort": cohort, "checkpoint": checkpoint, f"{evaluation}.score": 0.5,
             f"{evaluation}.passed": v, f"{evaluation}.error_type": None} for i, v in enumerate(verdicts)]


def test_compare_pairs_rows_and_finds_a_drop_the_unpaired_interval_misses(tmp_path):
    """The issue's case: 85 golden rows, the candidate loses 10 that passed and gains none
    (60 -> 50 passes, -11.8 points). Unpaired, the interval holds 0; paired, it does not."""
    base = [True] * 60 + [False] * 25
    cand = [True] * 50 + [False] * 35
    baseline = _paired_rows(base, checkpoint="v1")
    candidate = list(reversed(_paired_rows(cand, checkpoint="v2")))  # order does not matter: ids do
    result = compare_results(baseline, candidate, max_delta=0.02)
    (row,) = result.rows
    assert result.paired and result.pairing == "paired by 'row_id' (85 rows)"
    assert row.paired and row.pairs == Pairs(both=50, candidate_only=0, baseline_only=10, neither=25)
    assert row.change == pytest.approx(-10 / 85)
    assert (row.ci_low, row.ci_high) == pytest.approx(paired_newcombe_interval(50, 0, 10, 25))
    assert row.ci_high < 0 and row.regression and row.mcnemar_p == pytest.approx(2 * 0.5 ** 10)

    unpaired = compare_results([{k: v for k, v in r.items() if k != "row_id"} for r in baseline],
                               [{k: v for k, v in r.items() if k != "row_id"} for r in candidate], max_delta=0.02)
    (loose,) = unpaired.rows
    assert not unpaired.paired and "no 'row_id'" in unpaired.pairing and loose.pairs is None
    assert loose.change == pytest.approx(row.change) and loose.ci_low < 0 < loose.ci_high  # missed
    assert not loose.regression and row.ci_high - row.ci_low < loose.ci_high - loose.ci_low

    text = str(result)
    assert "paired by 'row_id'" in text and "McNemar" in text and "10/0" in text and "REGRESSION" in text
    data = result.to_dict()
    assert data["pairing"].startswith("paired") and data["rows"][0]["paired"] is True
    assert data["rows"][0]["pairs"]["baseline_only"] == 10

    # rows that do not match one to one: unpaired, and it says why
    extra = compare_results(baseline, candidate + [{**candidate[0], "row_id": "new"}], max_delta=0.02)
    assert not extra.paired and "1 candidate row(s) without a baseline row" in extra.pairing
    twice = compare_results(baseline, candidate[:-1] + [{**candidate[-1], "row_id": "r1"}], max_delta=0.02)
    assert not twice.paired and "repeated 'row_id'" in twice.pairing
    # an id column of the user's choosing
    by_name = compare_results([{**r, "name": r["row_id"]} for r in baseline],
                              [{**r, "name": r["row_id"], "row_id": None} for r in candidate], id_column="name")
    assert by_name.paired and by_name.pairing == "paired by 'name' (85 rows)"
    with pytest.raises(ValueError, match="id column 'nope' not in the baseline"):
        compare_results(baseline, candidate, id_column="nope")


def test_paired_cohorts_follow_the_baseline_rows(tmp_path):
    baseline = _paired_rows([True] * 40, cohort="a") + _paired_rows([True] * 40, cohort="b")
    for i, row in enumerate(baseline):
        row["row_id"] = f"r{i}"
    candidate = [{**row, "fc.passed": not (row["cohort"] == "b" and i % 40 < 8)} for i, row in enumerate(baseline)]
    result = compare_results(baseline, candidate, by="cohort")
    rows = {r.cohort: r for r in result.rows}
    assert rows["cohort=a"].pairs == Pairs(40, 0, 0, 0) and not rows["cohort=a"].regression
    assert rows["cohort=b"].pairs == Pairs(32, 0, 8, 0) and rows["cohort=b"].regression
    assert rows["(all)"].pairs == Pairs(72, 0, 8, 0)


def test_row_ids_pair_two_runs_of_one_golden_set(tmp_path, scorer):
    golden = [{"document": f"The council met on day {i}. It voted.", "summary": f"The council met on day {i}.",
               "topic": "x"} for i in range(4)]
    golden.append(dict(golden[0]))  # a repeated row keeps its own id
    first = Dataset(golden, checkpoint="v1").add_evaluation(
        FactualConsistency(scorer=scorer), {"response": "summary", "reference": "document"}, name="fc")
    first.run(progress=False)
    other = [{**row, "summary": "Something else entirely."} for row in golden]  # other responses
    second = Dataset(other, checkpoint="v2").add_evaluation(
        FactualConsistency(scorer=scorer), {"response": "summary", "reference": "document"}, name="fc")
    second.run(progress=False)
    ids = [r["row_id"] for r in first.results]
    assert ids == [r["row_id"] for r in second.results] and len(set(ids)) == 5
    assert ids[4] == ids[0] + "~2"
    assert compare(first, second, max_error_rate=0).paired
    path = first.save(tmp_path / "first.jsonl")
    again = Dataset.from_results(path)
    again.add_evaluation(FactualConsistency(scorer=scorer), {"response": "summary", "reference": "document"},
                         name="fc2")
    assert [r["row_id"] for r in again.run(progress=False)] == ids  # kept when scored again
    named = Dataset([{**row, "key": f"k{i}"} for i, row in enumerate(golden)], id_column="key")
    named.add_evaluation(FactualConsistency(scorer=scorer), {"response": "summary", "reference": "document"})
    assert [r["row_id"] for r in named.run(progress=False)] == [f"k{i}" for i in range(5)]
    clash = Dataset([{**row, "key": "same"} for row in golden], id_column="key")
    clash.add_evaluation(FactualConsistency(scorer=scorer), {"response": "summary", "reference": "document"})
    with pytest.raises(ValueError, match="rows 1 and 2 have the same 'key'"):
        clash.run(progress=False)


def _results(counts, evaluation="fc", checkpoint=None):
    """Results rows from {cohort: (passed, failed, errors)}."""
    rows = []
    for cohort, (passed, failed, errors) in counts.items():
        for verdict, k in ((True, passed), (False, failed), (None, errors)):
            rows += [{"cohort": cohort, "checkpoint": checkpoint, f"{evaluation}.score": None if verdict is None else 0.5,
                      f"{evaluation}.passed": verdict, f"{evaluation}.error_type": None if verdict is not None else "ValueError"}
                     for _ in range(k)]
    return rows


def test_compare_flags_a_large_cohort_not_a_tiny_one(tmp_path):
    baseline = Dataset.from_results(write_jsonl(tmp_path / "b.jsonl", _results(
        {"large": (360, 40, 0), "tiny": (3, 0, 0), "huge": (9000, 1000, 0)}, checkpoint="v1")))
    candidate = Dataset.from_results(write_jsonl(tmp_path / "c.jsonl", _results(
        {"large": (320, 80, 5), "tiny": (1, 2, 0), "huge": (8900, 1100, 0)}, checkpoint="v2")))
    result = compare(baseline, candidate, max_delta=0.02, by="cohort")
    rows = {r.cohort: r for r in result.rows}
    assert list(rows) == ["(all)", "cohort=large", "cohort=tiny", "cohort=huge"]

    large = rows["cohort=large"]
    # 5 errored rows: failures of the candidate (the gate fails closed), and counted apart
    assert (large.baseline.n, large.baseline.passed, large.candidate.n, large.candidate.passed) == (400, 360, 405, 320)
    assert large.candidate.errors == 5
    assert large.change == pytest.approx(320 / 405 - 0.9)
    low, high = newcombe_interval(320, 405, 360, 400)
    assert (large.ci_low, large.ci_high) == pytest.approx((low, high))
    assert high < -0.05
    assert large.regression and large.significant

    tiny = rows["cohort=tiny"]
    assert tiny.change == pytest.approx(-2 / 3)
    assert (tiny.ci_low, tiny.ci_high) == pytest.approx((-0.9385, 0.0586), abs=5e-5)
    assert not tiny.regression and not tiny.significant  # a 67-point drop on 3 rows does not cry wolf

    huge = rows["cohort=huge"]  # -1 point: significant, inside the tolerance
    assert huge.change == pytest.approx(-0.01) and huge.significant and not huge.regression

    overall = rows["(all)"]
    assert (overall.baseline.n, overall.candidate.n) == (10403, 10408)
    assert overall.change == pytest.approx(9221 / 10408 - 9363 / 10403)  # -1.4 points: the large drop is diluted
    assert overall.significant and not overall.regression
    assert [r.cohort for r in result.regressions] == ["cohort=large"]
    loose = compare(baseline, candidate, max_delta=0.15, by=["cohort"])
    assert loose.regressions == []  # a 10-point drop is within a 15-point tolerance

    text = str(result)
    assert "baseline v1 vs candidate v2" in text and "REGRESSION" in text and "1 regression(s): fc cohort=large -11.0 points" in text
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["regressions"] == 1 and as_dict["rows"][1]["candidate"]["pass_rate"] == pytest.approx(320 / 405)
    assert as_dict["failed"] is True and as_dict["problems"] == []

    same = compare(tmp_path / "b.jsonl", tmp_path / "b.jsonl", by="cohort")  # paths work too
    assert same.regressions == [] and all(r.change == 0 for r in same.rows)
    with pytest.raises(ValueError, match="column 'nope' not in the baseline"):
        compare(baseline, candidate, by="nope")
    write_jsonl(tmp_path / "other.jsonl", _results({"x": (1, 0, 0)}, evaluation="faithfulness"))
    with pytest.raises(ValueError, match="no evaluation in both"):
        compare(baseline, tmp_path / "other.jsonl")
    with pytest.raises(ValueError, match="max_delta"):
        compare(baseline, candidate, max_delta=2)



def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    """Spreadsheet programs write UTF-8 CSV with a byte-order mark: the first column is `response`,
    not `\\ufeffresponse` (and the same for JSONL)."""
    csv_file = tmp_path / "golden.csv"
    csv_file.write_bytes("\ufeffresponse,reference\nThe cat sat.,A cat sat on the mat.\n".encode("utf-8"))
    jsonl_file = tmp_path / "golden.jsonl"
    jsonl_file.write_bytes(("\ufeff" + json.dumps({"response": "The cat sat.", "reference": "A cat sat."}) + "\n")
                           .encode("utf-8"))
    for path in (csv_file, jsonl_file):
        rows = Dataset.load(path).rows
        assert list(rows[0])[0] == "response" and rows[0]["response"] == "The cat sat.", path
