"""Generation on Ray Data (`ray_generate.generate_on_ray`) on a real local Ray cluster (a head with
no CPU and two one-CPU worker nodes, all on 127.0.0.1): two vLLM engines (the CPU build) in Ray
Data actors, the tiny local Llama, greedy; the local vLLM path in a process of its own as the
reference; the engines' request spans at the real rotel collector.

The cluster is started once for the module and one generation run feeds the assertions: an
engine starts in 10-20 s on these machines, a second run would double the file's time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from fi_evals_core.evals.dataset import INPUT_ERROR
from fi_evals_core.evals.generate import prompt_token_ids
from fi_evals_core.evals.ray_backend import LOCAL_ENVIRONMENT
from fi_evals_core.evals.ray_generate import AUTO_INSTRUMENT, ERROR_COLUMN, actor_runtime_env, generate_on_ray
from fi_evals_core.evals.runinfo import GENERATOR_FACTS
from fi_evals_core.telemetry import attributes as A

# Before Ray is imported, which reads them once: loopback stays loopback, no usage reports
for _name, _value in LOCAL_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
import ray  # noqa: E402  (installed by the test set-up: fi-evals-core[ray])

PROGRAM = Path(__file__).resolve().parent / "programs" / "generate_locally.py"
ENGINE_ARGS = dict(dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=4,
                   kv_cache_memory_bytes=64 * 2**20)
MAX_TOKENS = 8
SERVICE = "fi-evals-ray-generate"
LOCAL_SERVICE = "fi-evals-local-generate"
# distinct lengths: the request spans' input token counts name their prompts
PROMPTS = ["hi", "the cat sat", "a slow letter arrived today", "tests pass when the code is right and clear",
           "computers read numbers, people read words, and both read code",
           "one two three four five six seven eight nine ten eleven twelve",
           "the river ran past the old mill where the miller kept his carefully sorted sacks of grain",
           "a long prompt about weather: rain in the morning, sun by noon, wind all afternoon, clear at night"]
TOO_LONG = "word " * 400  # longer than max_model_len: the engine refuses it
MALFORMED = ["", "   ", None]


def _rows() -> list[dict]:
    rows = [{"id": i, "prompt": p, "topic": "good"} for i, p in enumerate(PROMPTS)]
    rows += [{"id": 100 + i, "prompt": p, "topic": "malformed"} for i, p in enumerate(MALFORMED)]
    rows.append({"id": 200, "prompt": TOO_LONG, "topic": "too long"})
    return rows


def _telemetry_env(collector, service: str) -> dict[str, str]:
    return {**collector.otel_env("grpc"), "OTEL_SERVICE_NAME": service, "OTEL_EXPORTER_OTLP_TIMEOUT": "5000",
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY"}


@pytest.fixture(scope="module")
def run(cluster, model_dirs, collector):
    """One generation on Ray (two actors) and the local reference, run side by side."""
    model = str(model_dirs["llama"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_", "FI_EVALS_"))}
    env.update({**_telemetry_env(collector, LOCAL_SERVICE), AUTO_INSTRUMENT: "1", "HF_HUB_OFFLINE": "1",
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    local = subprocess.Popen([sys.executable, str(PROGRAM), model, json.dumps(PROMPTS), str(MAX_TOKENS),
                              json.dumps(ENGINE_ARGS)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    # the caller's telemetry settings, which the actors must carry to the engines they start
    saved = {k: v for k, v in os.environ.items() if k.startswith(("OTEL_", "TRACEAI_"))}
    for name in saved:
        del os.environ[name]
    os.environ.update({**_telemetry_env(collector, SERVICE), "HF_HUB_OFFLINE": "1"})
    try:
        dataset, facts = generate_on_ray(ray.data.from_items(_rows()), model, max_tokens=MAX_TOKENS, actors=2,
                                         batch_size=2, engine_kwargs=ENGINE_ARGS, checkpoint="tiny-llama-v1")
        rows = dataset.take_all()
    finally:
        for name in [k for k in os.environ if k.startswith(("OTEL_", "TRACEAI_"))]:
            del os.environ[name]
        os.environ.update(saved)
    out, err = local.communicate(timeout=300)
    assert local.returncode == 0, err[-3000:]
    reference = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))
    return {"model": model, "rows": rows, "facts": facts, "local": reference}


def _request_spans(collector, service: str, count: int, *, refused: bool = False) -> list[dict]:
    """The service's request spans, served (status not ERROR) or refused, once `count` have come."""
    return collector.wait_for_spans(
        lambda s: s["resource_attributes"].get("service.name") == service and s["scope_name"] == "traceai_vllm"
        and s["name"].startswith("text_completion") and (s["status_code"] == "ERROR") == refused,
        count=count, timeout=60)


def test_every_row_comes_back_once_with_the_local_greedy_response(run):
    rows = run["rows"]
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in _rows())  # each once, none lost or added
    by_id = {r["id"]: r for r in rows}
    local = [r["response"] for r in run["local"]["rows"]]
    assert len(local) == len(PROMPTS) and any(local)
    for i, prompt in enumerate(PROMPTS):
        row = by_id[i]
        assert row["response"] == local[i], (prompt, row["response"], local[i])
        assert row["prompt"] == prompt and row["topic"] == "good"  # the caller's columns as they were
        assert row[ERROR_COLUMN] is None and not row.get(INPUT_ERROR)
    assert {r["checkpoint"] for r in rows} == {"tiny-llama-v1"}


def test_a_malformed_or_refused_prompt_is_an_error_for_its_row_only(run):
    by_id = {r["id"]: r for r in run["rows"]}
    for i, prompt in enumerate(MALFORMED):
        row = by_id[100 + i]
        assert row["response"] is None and row["prompt"] == prompt
        assert "prompt must be non-empty text or a list of {role, content} messages" in row[ERROR_COLUMN]
        assert row[INPUT_ERROR] == f"no response generated: {row[ERROR_COLUMN]}"  # every evaluation: an error
    refused = by_id[200]
    assert refused["response"] is None and refused["prompt"] == TOO_LONG
    assert "maximum context length is 256 tokens" in refused[ERROR_COLUMN]
    assert refused[INPUT_ERROR].startswith("no response generated: ")


def test_the_engines_request_spans_reach_the_collector(run, collector, model_dirs):
    """One span per prompt the engines ran (none for the malformed rows, which no engine saw), from
    the processes Ray started, with the model, the sampling settings and the token counts: the
    input counts are the prompts' token ids, the output counts and finish reasons the local run's."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run["model"])
    expected_inputs = Counter(len(prompt_token_ids(tokenizer, p, True)) for p in PROMPTS)
    assert len(expected_inputs) == len(PROMPTS)
    served = _request_spans(collector, SERVICE, len(PROMPTS))
    (refused,) = _request_spans(collector, SERVICE, 1, refused=True)  # the prompt too long: its error span
    assert refused["attributes"][A.ERROR_TYPE].endswith("VLLMValidationError")
    assert len(served) == len(PROMPTS)
    assert Counter(s["attributes"][A.USAGE_INPUT_TOKENS] for s in served) == expected_inputs
    local = _request_spans(collector, LOCAL_SERVICE, len(PROMPTS))
    assert len(local) == len(PROMPTS)
    usage = lambda s: (s["attributes"][A.USAGE_INPUT_TOKENS], s["attributes"][A.USAGE_OUTPUT_TOKENS],  # noqa: E731
                       tuple(s["attributes"][A.RESPONSE_FINISH_REASONS]))
    assert Counter(map(usage, served)) == Counter(map(usage, local))
    by_input = {s["attributes"][A.USAGE_INPUT_TOKENS]: s for s in served}
    responses = {r["id"]: r["response"] for r in run["rows"]}
    for i, prompt in enumerate(PROMPTS):
        a = by_input[len(prompt_token_ids(tokenizer, prompt, True))]["attributes"]
        assert a[A.REQUEST_MODEL] == run["model"] and a[A.PROVIDER_NAME] == "vllm"
        assert a[A.REQUEST_MAX_TOKENS] == MAX_TOKENS and a[A.REQUEST_TEMPERATURE] == 0.0
        assert 1 <= a[A.USAGE_OUTPUT_TOKENS] <= MAX_TOKENS
        assert json.loads(a[A.OUTPUT_MESSAGES])[0]["parts"][0]["content"] == responses[i]


def test_generator_facts_are_the_local_paths(run):
    facts, local = run["facts"], run["local"]["generation"]
    for key in GENERATOR_FACTS:
        assert facts[key] == local[key], key
    assert facts["tokenizer"] == local["tokenizer"]
    assert facts["checkpoint"] == "tiny-llama-v1" and facts["actors"] == 2 and facts["backend"] == "ray"
    assert facts["engine"] == "vllm" and facts["dtype"] == "float32" and facts["chat_template_used"] is True


def test_actors_carry_the_callers_telemetry_environment():
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "TRACEAI_EXPORT_PROCESS": "0",
               "HF_HUB_OFFLINE": "1", "HOME": "/root", "PATH": "/bin"}
    env = actor_runtime_env({"env_vars": {"TRACEAI_SAMPLE": "x"}, "working_dir": "/x"}, environ)
    assert env == {"working_dir": "/x", "env_vars": {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "TRACEAI_EXPORT_PROCESS": "0",
        "HF_HUB_OFFLINE": "1", AUTO_INSTRUMENT: "1", "TRACEAI_SAMPLE": "x"}}
    given = actor_runtime_env({"env_vars": {"TRACEAI_EXPORT_PROCESS": "1", AUTO_INSTRUMENT: "0"}}, environ)
    assert given["env_vars"]["TRACEAI_EXPORT_PROCESS"] == "1" and given["env_vars"][AUTO_INSTRUMENT] == "0"


def test_bad_settings_are_refused_before_anything_runs(cluster, model_dirs):
    ds = ray.data.from_items([{"question": "hi"}])
    with pytest.raises(ValueError, match="no column 'prompt'"):
        generate_on_ray(ds, str(model_dirs["llama"]))
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        generate_on_ray(ds, str(model_dirs["llama"]), prompt_column="question", max_tokens=0)
    with pytest.raises(ValueError, match="actors must be at least 1"):
        generate_on_ray(ds, str(model_dirs["llama"]), prompt_column="question", actors=0)


def test_cli_generates_on_ray_then_scores_into_a_results_folder(cluster, model_dirs, collector, nli_checkpoint,
                                                                tmp_path):
    """`fi-evals run PROMPTS --model LLAMA --ray ADDRESS -o FOLDER`: one engine and one scorer on the
    cluster's two CPUs; every row once in the folder with its response, checkpoint and scores (the
    scores those of a local run over the folder's own responses, to 1e-6), the malformed prompt an
    error row, the run record's generator from the engines, and one request span per prompt from
    the engine's process at the collector."""
    from fi_evals_core.evals import TaskCompletion
    from fi_evals_core.evals.dataset import Dataset
    from fi_evals_core.evals.runinfo import read_run_info
    from tests.fi_evals_core.test_evals_cli import fi_evals
    from tests.fi_evals_core.test_evals_ray import _same
    from transformers import AutoTokenizer

    prompts = PROMPTS[:4]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "n": i}) + "\n" for i, p in enumerate([*prompts, "  "])))
    model, nli, out = str(model_dirs["llama"]), nli_checkpoint("bert"), tmp_path / "out"
    env = {k: "" for k in os.environ if k.startswith(("OTEL_", "TRACEAI_"))}
    env.update({**_telemetry_env(collector, "fi-evals-ray-cli"), "FI_EVALS_DEVICE": "cpu"})
    proc = fi_evals("run", data, "-e", "task_completion", "--map", "task=prompt", "--model", model, "--ray",
                    cluster.address, "--max-tokens", str(MAX_TOKENS), "--nli-model", nli, "--batch-size", "2",
                    "--rows-per-file", "2", "--no-progress", "--max-error-rate", "1", "-o", out,
                    *[f"--engine-arg={name}={json.dumps(value)}" for name, value in ENGINE_ARGS.items()], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{out}: 5 rows (5 written by this run, 0 already there)" in proc.stdout
    rows = sorted(_folder_rows_tc(out), key=lambda r: r["n"])
    assert [r["prompt"] for r in rows] == [*prompts, "  "] and {r["checkpoint"] for r in rows} == {model}
    assert all(isinstance(r["response"], str) and r["response"] for r in rows[:4])
    assert rows[4]["task_completion.error_type"] == "InputError" and "no response generated" in rows[4][INPUT_ERROR]
    local = Dataset([{k: r[k] for k in ("prompt", "n", "response", "checkpoint", "row_id")} for r in rows[:4]])
    local.add_evaluation(TaskCompletion(model=nli, device="cpu"), {"task": "prompt"})
    for mine, theirs in zip(rows[:4], local.run(progress=False)):
        assert mine["row_id"] == theirs["row_id"]
        assert _same(mine["task_completion.score"], theirs["task_completion.score"])
        assert mine["task_completion.passed"] == theirs["task_completion.passed"]
    record = read_run_info(out)
    assert record["generator"]["backend"] == "ray" and record["generator"]["model"] == model
    assert record["scorers"]["task_completion"]["model"] == nli
    spans = _request_spans(collector, "fi-evals-ray-cli", len(prompts))
    assert sorted(s["attributes"][A.USAGE_INPUT_TOKENS] for s in spans) == sorted(
        len(prompt_token_ids(AutoTokenizer.from_pretrained(model), p, True)) for p in prompts)
    assert {s["attributes"][A.REQUEST_MODEL] for s in spans} == {model}


def _folder_rows_tc(folder) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for part in sorted(folder.glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]
