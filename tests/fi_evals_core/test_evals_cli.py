"""`fi-evals` as CI runs it: `python -m fi_evals_core.evals ...` in a subprocess, exit codes checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from fi_evals_core.evals import FactualConsistency, NLIScorer
from fi_evals_core.evals.dataset import Dataset
from fi_evals_core.evals.generate import generate_responses


def fi_evals(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fi_evals_core.evals", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def write_results(path, counts, checkpoint):
    """A results file from {cohort: (passed, failed)} for the evaluation `fc`."""
    rows = [{"cohort": cohort, "checkpoint": checkpoint, "fc.score": 0.5, "fc.passed": verdict, "fc.label": None,
             "fc.reason": "", "fc.error_type": None, "fc.claims": []}
            for cohort, (passed, failed) in counts.items()
            for verdict in [True] * passed + [False] * failed]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def results_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    return {
        "base": write_results(root / "base.jsonl", {"large": (450, 50), "tiny": (3, 0)}, "v1"),
        "same": write_results(root / "same.jsonl", {"large": (449, 51), "tiny": (1, 2)}, "v2"),
        "worse": write_results(root / "worse.jsonl", {"large": (400, 100), "tiny": (3, 0)}, "v3"),
    }


def test_compare_exit_codes(results_files, tmp_path):
    ok = fi_evals("compare", results_files["base"], results_files["same"], "--max-delta", "0.02", "--by", "cohort")
    assert ok.returncode == 0, ok.stderr
    assert "0 regression(s)" in ok.stdout and "cohort=tiny" in ok.stdout  # the tiny cohort's -67 points: no flag

    bad = fi_evals("compare", results_files["base"], results_files["worse"], "--max-delta", "0.02")
    assert bad.returncode == 1, bad.stderr
    assert "REGRESSION" in bad.stdout and "1 regression(s): fc (all) -9.9 points" in bad.stdout
    assert fi_evals("compare", results_files["base"], results_files["worse"], "--max-delta", "0.2").returncode == 0

    as_json = fi_evals("compare", results_files["base"], results_files["worse"], "--by", "cohort", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["regressions"] == 2 and report["baseline"] == "v1" and report["candidate"] == "v3"
    assert [r["cohort"] for r in report["rows"] if r["regression"]] == ["(all)", "cohort=large"]


@pytest.mark.parametrize("args, message", [
    (["compare", "{base}", "{missing}"], "results file not found: {missing}"),
    (["compare", "{base}", "{same}", "--by", "region"], "column 'region' not in the baseline results"),
    (["compare", "{base}", "{same}", "--max-delta", "5"], "max_delta must be a number from 0 to 1"),
    (["compare", "{base}"], "the following arguments are required: candidate"),
    (["compare", "{base}", "{same}", "--max-delta", "lots"], "argument --max-delta: invalid float value: 'lots'"),
    (["run", "{missing}", "-e", "factual_consistency", "-o", "{out}"], "dataset file not found: {missing}"),
    (["run", "{base}", "-e", "factual_consistensy", "-o", "{out}"], "unknown evaluator 'factual_consistensy'"),
    (["run", "{base}", "-e", "factual_consistency", "--map", "response", "-o", "{out}"], "expected INPUT=COLUMN"),
    (["run", "{base}", "-e", "factual_consistency", "-m", "response=summary", "-m", "reference=document",
      "-o", "{out}"], "response='summary', reference='document'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "{base}", "-e", "factual_consistency", "--label-column", "human", "-o", "{out}"],
     "--label-column human: no such column; columns are cohort, checkpoint"),
    (["run", "{base}", "-e", "factual_consistency", "--label-column", "cohort", "-o", "{out}"],
     "label column 'cohort': 503 value(s) are not a human label: 'large', 'tiny'"),
    (["report", "{base}", "-o", "{out}", "--label-column", "human"], "label column 'human': no such column"),
    (["report", "{base}", "-o", "{out}", "--label-column", "cohort"],
     "label column 'cohort': 503 value(s) are not a human label: 'large', 'tiny'"),
    (["report", "{base}", "-o", "{out}", "--label-column", "cohort", "--dev-fraction", "1"],
     "--dev-fraction must be between 0 and 1 (exclusive), got 1.0"),
])
def test_usage_and_input_errors_exit_2_with_one_line(results_files, tmp_path, args, message):
    names = {"base": results_files["base"], "same": results_files["same"], "missing": tmp_path / "nope.jsonl",
             "out": tmp_path / "out.jsonl"}
    proc = fi_evals(*[a.format(**names) for a in args])
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], proc.stderr
    assert message.format(**names) in lines[0]
    assert not (tmp_path / "out.jsonl").exists()


DATA = [
    {"prompt": "Summarise: the cat sat on the red mat.", "document": "The cat sat on the mat. The mat was red.",
     "summary": "A cat sat on a red mat.", "lang": "en"},
    {"prompt": "Summarise: the robot answers questions.", "document": "Our team builds robots. They answer questions.",
     "summary": "Robots answer questions. The team built them.", "lang": "en"},
    {"prompt": "Summarise: the girl reads by the river.", "document": "A young girl reads a book by the river.",
     "summary": "", "lang": "de"},
]


def test_run_generates_with_a_checkpoint_then_evaluates(tmp_path, nli_checkpoint, model_dirs):
    """`run --model` generates what generate_responses generates, tags every row with the
    checkpoint label, then scores the generated responses as evaluate_batch does (one subprocess:
    importing transformers dominates its time)."""
    nli = nli_checkpoint("bert")
    data_path = tmp_path / "data.csv"
    Dataset(DATA).to_pandas().to_csv(data_path, index=False)
    out = tmp_path / "results.jsonl"
    proc = fi_evals("run", data_path, "--evaluator", "factual_consistency", "--map", "reference=document",
                    "--model", model_dirs["llama"], "--backend", "transformers", "--max-tokens", "6",
                    "--checkpoint", "llama-v2", "--nli-model", nli, "-o", out, "--no-progress",
                    env={"FI_EVALS_DEVICE": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "factual_consistency: pass rate" in proc.stdout and f"wrote 3 rows to {out}" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    responses = generate_responses(Dataset(DATA), str(model_dirs["llama"]), backend="transformers", max_tokens=6,
                                   progress=False)
    assert [r["response"] for r in rows] == [r["response"] for r in responses.rows]
    for row, data in zip(rows, DATA):
        assert {k: row[k] for k in data} == data  # every CSV column kept, the old summary included
        assert row["checkpoint"] == "llama-v2"
    evaluator = FactualConsistency(scorer=NLIScorer.from_pretrained(nli, device="cpu"))
    expected = evaluator.evaluate_batch([{"response": r["response"], "reference": r["document"]}
                                         for r in responses.rows])
    assert [r["factual_consistency.passed"] for r in rows] == [e.passed for e in expected]
    assert [r["factual_consistency.score"] for r in rows] == pytest.approx([e.score for e in expected], abs=1e-5)

    # the golden file's own summaries scored too: the two runs pair row by row (row_id), so compare
    # uses the paired interval and McNemar's test
    written = tmp_path / "written.jsonl"
    proc = fi_evals("run", data_path, "-e", "factual_consistency", "--map", "reference=document",
                    "--map", "response=summary", "--nli-model", nli, "-o", written, "--checkpoint", "written",
                    "--max-error-rate", "0.5", env={"FI_EVALS_DEVICE": "cpu"})  # one summary is empty
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows [" in proc.stderr and "row/s" in proc.stderr  # the progress bar: rows, rate, ETA
    assert [json.loads(line)["row_id"] for line in written.read_text().splitlines()] == [r["row_id"] for r in rows]
    paired = fi_evals("compare", written, out, "--max-delta", "0.5", "--max-error-rate", "0.5")
    assert "paired by 'row_id' (3 rows)" in paired.stdout and "McNemar" in paired.stdout, paired.stdout

    conflict = fi_evals("run", data_path, "-e", "factual_consistency", "--map", "response=summary",
                        "--model", model_dirs["llama"], "-o", tmp_path / "x.jsonl")
    assert conflict.returncode == 2 and "conflicts with --model" in conflict.stderr


def test_report_writes_html(results_files, tmp_path):
    out = tmp_path / "report.html"
    proc = fi_evals("report", results_files["base"], results_files["worse"], "-o", out, "--by", "cohort")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "v3" in html and "cohort" in html
    missing = fi_evals("report", tmp_path / "none.jsonl", "-o", out)
    assert missing.returncode == 2 and "results file not found" in missing.stderr


def test_run_on_a_trace_file_in_process(tmp_path, nli_checkpoint, capsys):
    """`run --traces --sample`: captured generations from this project's trace file, sampled, scored
    (called in-process: the command is the same `main`)."""
    from fi_evals_core.evals.cli import main

    def span(span_id, prompt, completion):
        messages = {}
        if prompt is not None:
            messages = {
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt}]}]),
                "gen_ai.output.messages": json.dumps([{"role": "assistant",
                                                       "parts": [{"type": "text", "content": completion}]}])}
        return {"name": "chat m", "trace_id": "ab" * 16, "span_id": span_id, "parent_span_id": None,
                "kind": "CLIENT", "start_time_unix_nano": 1, "end_time_unix_nano": 2,
                "status": {"code": "UNSET", "description": None},
                "attributes": {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m", "tier": span_id[-1],
                               **messages},
                "events": [], "resource": {"service.name": "app"}, "scope": {"name": "x", "version": "1"}}

    traces = tmp_path / "traces.jsonl"
    spans = [span(f"{i:016x}", f"The river is {i} miles long.", f"It is {i} miles long.") for i in range(5)]
    spans.append(span("00000000000000ff", None, None))  # content not captured
    traces.write_text("".join(json.dumps(s) + "\n" for s in spans))
    out = tmp_path / "results.jsonl"
    code = main(["run", str(traces), "--traces", "--sample", "3", "--seed", "1", "-e", "factual_consistency",
                 "-m", "response=completion", "-m", "reference=prompt", "--nli-model", nli_checkpoint("bert"),
                 "--device", "cpu", "-o", str(out), "--no-progress"])
    assert code == 0
    assert "5 generation(s) with captured content (1 span(s) without content skipped); evaluating 3" \
        in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = Dataset.from_traces(traces, sample=3, seed=1).rows
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    assert all(r["factual_consistency.score"] is not None for r in rows)
    assert main(["run", str(traces), "--sample", "3", "-e", "factual_consistency", "-o", str(out)]) == 2
    assert "--sample needs --traces" in capsys.readouterr().err


def _with_errors(path, passed, failed, errors, checkpoint, cause=("OSError", "no model at /typo/path")):
    """A results file of `fc` with `errors` rows the evaluation could not score."""
    write_results(path, {"all": (passed, failed)}, checkpoint)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows += [{"cohort": "all", "checkpoint": checkpoint, "fc.score": None, "fc.passed": None, "fc.label": None,
              "fc.reason": cause[1], "fc.error_type": cause[0], "fc.claims": []}] * errors
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_run_whose_scorer_cannot_load_exits_3_with_the_cause_and_keeps_its_rows(tmp_path):
    """A typo in the NLI model path: every row errors. The run writes its rows (errors and all) and
    exits 3 with the most common cause, instead of 0."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"response": f"The cat sat {i}.", "reference": "A cat sat on the mat."}) + "\n"
                            for i in range(6)))
    out = tmp_path / "broken.jsonl"
    broken = fi_evals("run", data, "-e", "factual_consistency", "--map", "reference=reference", "-o", out,
                      "--nli-model", tmp_path / "no-such-model", "--no-progress")
    assert broken.returncode == 3, broken.stderr
    assert "6 of 6 rows of evaluation 'factual_consistency' errored" in broken.stderr
    assert "most common cause: FileNotFoundError" in broken.stderr and "no-such-model" in broken.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["factual_consistency.passed"] is None for r in rows)
    # and that candidate cannot pass a comparison: it is refused (exit 2), with the cause
    base = tmp_path / "base.jsonl"
    rows_ok = [{**r, "factual_consistency.passed": True, "factual_consistency.score": 0.9,
                "factual_consistency.error_type": None} for r in rows]
    base.write_text("".join(json.dumps(r) + "\n" for r in rows_ok))
    refused = fi_evals("compare", base, out)
    assert refused.returncode == 2, refused.stdout
    assert "the candidate" in refused.stderr and "6 of 6 rows" in refused.stderr and "FileNotFoundError" in refused.stderr


def test_compare_counts_errors_as_failures_refuses_past_the_error_rate_and_flags_missing_rows(tmp_path):
    base = write_results(tmp_path / "base.jsonl", {"all": (100, 0)}, "v1")
    # 2 errored rows of 100: within a 5 % allowance they are failures (98 %), not left out (100 %)
    some = _with_errors(tmp_path / "some.jsonl", 98, 0, 2, "v2")
    counted = fi_evals("compare", base, some, "--max-error-rate", "0.05", "--json")
    row = json.loads(counted.stdout)["rows"][0]
    assert row["candidate"] == {"n": 100, "passed": 98, "errors": 2, "pass_rate": 0.98}
    assert counted.returncode == 0  # -2 points is within --max-delta 0.02
    # past the allowance (default 1 %): refused, naming the side and the cause
    refused = fi_evals("compare", base, some)
    assert refused.returncode == 2 and "the candidate (v2): 2 of 100 rows" in refused.stderr
    assert "OSError: no model at /typo/path" in refused.stderr
    broken_base = fi_evals("compare", some, base)
    assert broken_base.returncode == 2 and "the baseline (v2)" in broken_base.stderr
    # a candidate that lost rows fails the gate even when its pass rate holds
    fewer = write_results(tmp_path / "fewer.jsonl", {"all": (80, 0)}, "v3")
    missing = fi_evals("compare", base, fewer)
    assert missing.returncode == 1, missing.stdout
    assert "PROBLEM: fc: the candidate has 80 rows, the baseline 100 (20 missing)" in missing.stdout
    assert "0 regression(s)" in missing.stdout


def test_run_and_report_measure_agreement_with_human_labels(tmp_path, nli_checkpoint):
    """`run --label-column` prints, after the pass rates, what `measure_agreement()` finds in the results it
    wrote; `report --label-column` shows the same rows' agreement (its own dev fraction)."""
    from fi_evals_core.evals import measure_agreement

    reference = "The cat sat on the red mat. The dog slept by the door. It rained all day."
    cases = [("A cat sat on a red mat.", "supported"), ("The dog slept by the door.", "1"),
             ("It rained all day.", "yes"), ("The cat flew to the moon.", "unsupported"),
             ("The dog sang opera.", "0"), ("It was sunny and dry.", "no"), ("A cat sat down.", "Supported"),
             ("The mat was blue.", "FALSE"), ("A dog and a cat.", "")]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"response": r, "reference": reference, "human": y}) + "\n"
                            for r, y in cases))
    out = tmp_path / "v1.jsonl"
    proc = fi_evals("run", data, "-e", "factual_consistency", "--nli-model", nli_checkpoint("bert"), "-o", out,
                    "--checkpoint", "v1", "--no-progress", "--label-column", "human", env={"FI_EVALS_DEVICE": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = measure_agreement(out, "factual_consistency", "human")
    assert (expected.measured, expected.positives, expected.negatives, expected.unlabelled) == (8, 4, 4, 1)
    assert str(expected) in proc.stdout
    assert "factual_consistency (v1) against human label 'human': 8 of 9 rows measured (4 supported, 4 not); " \
           "left out: 1 without a label, 0 errored" in proc.stdout
    assert proc.stdout.index("factual_consistency: pass rate") < proc.stdout.index("against human label")

    html = tmp_path / "report.html"
    proc = fi_evals("report", out, "-o", html, "--label-column", "human", "--dev-fraction", "0.4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = html.read_text()
    tuned = measure_agreement(out, "factual_consistency", "human", dev_fraction=0.4)
    table = page.split('<table id="agreement">')[1].split("</table>")[0]
    row = re.search(r'<tr[^>]*data-evaluation="factual_consistency" data-checkpoint="v1">(.*?)</tr>', table).group(1)
    assert re.search(r'data-col="measured">8<div class="small">4 / 4</div>', row)
    assert f'data-col="auc">{tuned.roc_auc:.3f}' in row
    assert f"test {tuned.test_rows} ({tuned.test_positives} / {tuned.test_negatives})" in row
    assert "(dev fraction 0.4)" in page and "<script" not in page

    # unreadable labels: refused before anything is scored
    data.write_text(data.read_text().replace('"human": "no"', '"human": "perhaps"'))
    refused = fi_evals("run", data, "-e", "factual_consistency", "-o", tmp_path / "x.jsonl", "--label-column", "human")
    assert refused.returncode == 2 and "label column 'human': 1 value(s) are not a human label: 'perhaps'" \
        in refused.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_run_records_what_generated_and_scored_and_compare_names_the_change(tmp_path, nli_checkpoint, model_dirs):
    """`run --model --repeat 2` writes `<results>.run.json` (generator with its tokenizer fingerprint,
    scorer, versions, the determinism check); a second checkpoint whose only change is its chat
    template makes `compare` warn that the tokenizer changed, beside the pass-rate table."""
    import shutil

    import transformers
    from transformers import AutoTokenizer

    from fi_evals_core.evals.generate import changed_outputs
    from fi_evals_core.telemetry.fingerprint import tokenizer_fingerprint

    nli = nli_checkpoint("bert")
    data_path = tmp_path / "data.jsonl"
    data_path.write_text("".join(json.dumps(row) + "\n" for row in DATA))
    llama = model_dirs["llama"]
    edited = shutil.copytree(llama, tmp_path / "llama-new-template")
    config = json.loads((edited / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ bos_token }}{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:"
    (edited / "tokenizer_config.json").write_text(json.dumps(config))
    if (edited / "chat_template.jinja").exists():
        (edited / "chat_template.jinja").write_text(config["chat_template"])
    outs = {}
    for name, model, extra in (("v1", llama, ["--repeat", "2"]), ("v2", edited, [])):
        outs[name] = tmp_path / f"{name}.jsonl"
        proc = fi_evals("run", data_path, "-e", "factual_consistency", "--map", "reference=document", "--model", model,
                        "--backend", "transformers", "--max-tokens", "6", "--checkpoint", name, "--nli-model", nli,
                        "-o", outs[name], "--no-progress", "--max-error-rate", "1", *extra,
                        env={"FI_EVALS_DEVICE": "cpu"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        if name == "v1":
            assert "determinism: 0 of 3 prompts (0.0%) gave another output across 2 repeats" in proc.stdout
    record = json.loads((tmp_path / "v1.jsonl.run.json").read_text())
    generator = record["generator"]
    assert generator["engine"] == "transformers" and generator["checkpoint"] == "v1"
    assert generator["tokenizer"]["fingerprint"] == tokenizer_fingerprint(AutoTokenizer.from_pretrained(llama))
    assert generator["determinism"] == {"repeats": 2, "prompts": 3, "changed": 0, "changed_rows": []}
    assert generator["compile"] == {"mode": "eager"} and generator["dtype"] == "float32"
    assert record["scorers"]["factual_consistency"]["model"] == nli
    assert record["scorers"]["factual_consistency"]["profile"] == "default"
    assert record["versions"]["transformers"] == transformers.__version__

    compared = fi_evals("compare", outs["v1"], outs["v2"], "--max-delta", "0.99", "--max-error-rate", "1", "--json")
    report = json.loads(compared.stdout)
    assert any("the generator's tokenizer changed (chat template changed)" in w for w in report["warnings"])
    assert any(c.startswith("generator model: ") for c in report["changes"])
    assert not any("scorer" in w for w in report["warnings"])  # the same NLI model scored both
    text = fi_evals("compare", outs["v1"], outs["v2"], "--max-delta", "0.99", "--max-error-rate", "1").stdout
    assert "WARNING: the generator's tokenizer changed" in text

    assert changed_outputs([["a", "b", "c"], ["a", "x", "c"], ["a", "b", "c"]]) == [1]  # the check's arithmetic
    bad = fi_evals("run", data_path, "-e", "factual_consistency", "--repeat", "2", "-o", tmp_path / "x.jsonl")
    assert bad.returncode == 2 and "--repeat 2" in bad.stderr and "only with --model" in bad.stderr


def test_the_report_says_what_changed_underneath(tmp_path):
    """Two results files with run records: the report's "What changed underneath" names the
    transformers upgrade and warns about the tokenizer."""
    from fi_evals_core.evals.runinfo import write_run_info

    tok = {"fingerprint": "aaaa", "vocab_size": 100, "added_tokens": ["<a>"], "special_tokens": {}, "chat_template": None}
    for name, version, tokenizer in (("v1", "4.57.0", tok), ("v2", "5.0.0", {**tok, "fingerprint": "bbbb",
                                                                             "added_tokens": ["<a>", "<b>"]})):
        path = write_results(tmp_path / f"{name}.jsonl", {"x": (5, 5)}, name)
        write_run_info(path, {"versions": {"transformers": version}, "generator": {"model": "m", "tokenizer": tokenizer},
                              "scorers": {}})
    out = tmp_path / "report.html"
    assert fi_evals("report", tmp_path / "v1.jsonl", tmp_path / "v2.jsonl", "-o", out).returncode == 0
    page = out.read_text()
    section = page.split('id="changes-h"')[1]
    assert "versions: transformers 4.57.0 -&gt; 5.0.0" in section
    assert "the generator&#x27;s tokenizer changed (tokens added: &lt;b&gt;)" in section
