"""A real trace backend: Phoenix (its own virtualenv, .venv-phoenix, made by `make test`), started on
127.0.0.1 like the collector. Spans from a transformers pipeline (register() in a script) and from
the zero-code vLLM server, with content capture on, must show in Phoenix as LLM spans with their
model, token counts, input and output messages, read back through Phoenix's REST API. Phoenix
takes no metrics: the script's log says so once (metric_export.py), instead of an error a minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fi_evals_core.testing.servers import free_port, wait_for_http, wait_until
from fi_evals_core.testing.vllm_server import vllm_server

ROOT = Path(__file__).resolve().parents[2]
PHOENIX = ROOT / ".venv-phoenix" / "bin" / "phoenix"
PROGRAMS = Path(__file__).resolve().parent / "programs"


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    assert PHOENIX.exists(), f"{PHOENIX} is missing: `make test` (scripts/setup_env.sh test) installs it"
    work = tmp_path_factory.mktemp("phoenix")
    http_port, grpc_port = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_"))},
           "PHOENIX_WORKING_DIR": str(work), "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(http_port),
           "PHOENIX_GRPC_PORT": str(grpc_port), "PHOENIX_TELEMETRY_ENABLED": "false"}
    log = (work / "phoenix.log").open("w")
    proc = subprocess.Popen([str(PHOENIX), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_for_http(f"{base}/healthz", proc, 120, work / "phoenix.log", "Phoenix")
        yield {"http": base, "grpc": f"http://127.0.0.1:{grpc_port}"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _phoenix_spans(phoenix, project: str, count: int, timeout_s: float = 60) -> list[dict]:
    """The spans of `project` once it holds at least `count` (Phoenix ingests asynchronously)."""
    def held() -> list[dict] | None:
        try:
            with urllib.request.urlopen(f"{phoenix['http']}/v1/projects/{project}/spans?limit=100", timeout=10) as r:
                spans = json.loads(r.read())["data"]
        except urllib.error.HTTPError as error:  # the project appears with its first span
            if error.code != 404:
                raise
            spans = []
        return spans if len(spans) >= count else None

    return wait_until(held, timeout_s, f"{count} spans of {project} in Phoenix")


def _otel_env(phoenix, project: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEAI_", "VLLM_"))}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": phoenix["grpc"], "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY", "HF_HUB_OFFLINE": "1",
                "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}", **extra})
    return env


def test_a_transformers_pipeline_shows_in_phoenix_as_llm_spans(phoenix, model_dirs):
    prompt = "Phoenix shows this prompt"
    proc = subprocess.run([sys.executable, str(PROGRAMS / "register_pipeline.py"), str(model_dirs["llama"]), prompt],
                          env=_otel_env(phoenix, "traceai-hf"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "GENERATED" in proc.stdout, proc.stderr[-3000:]
    # Phoenix takes traces only: one warning naming the setting, not an exporter error per interval
    assert proc.stderr.count("takes no OTLP metrics") == 1, proc.stderr[-3000:]
    spans = {s["name"].split()[0]: s for s in _phoenix_spans(phoenix, "traceai-hf", 2)}
    pipe, generate = spans["pipeline"], spans["text_completion"]
    assert pipe["span_kind"] == "LLM" and generate["span_kind"] == "LLM"
    assert generate["parent_id"] == pipe["context"]["span_id"]
    p, g = pipe["attributes"], generate["attributes"]
    assert g["llm.model_name"] == str(model_dirs["llama"])
    assert int(g["llm.token_count.completion"]) == 3 and int(g["llm.token_count.prompt"]) > 0
    assert p["llm.input_messages.0.message.role"] == "user"
    assert p["llm.input_messages.0.message.content"] == prompt
    # output messages reach Phoenix only when they validate against the GenAI schema (finish_reason)
    assert p["llm.output_messages.0.message.role"] == "assistant"
    assert p["llm.output_messages.0.message.content"].startswith(prompt)
    assert p["llm.output_messages.0.message.finish_reason"] in ("stop", "length")


def test_the_zero_code_vllm_server_shows_in_phoenix_as_llm_spans(phoenix, model_dirs, tmp_path):
    env = _otel_env(phoenix, "traceai-vllm", TRACEAI_VLLM_AUTO="1", OTEL_BSP_SCHEDULE_DELAY="200")
    messages = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name a colour."}]
    with vllm_server(sys.executable, model_dirs["llama"], env, tmp_path / "server.log") as server:
        body = json.dumps({"model": "tiny-llama", "messages": messages, "max_tokens": 4, "seed": 1}).encode()
        request = urllib.request.Request(f"{server.base_url}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        (span,) = [s for s in _phoenix_spans(phoenix, "traceai-vllm", 1) if s["name"] == "chat tiny-llama"]
    a = span["attributes"]
    assert span["span_kind"] == "LLM" and a["llm.model_name"] == "tiny-llama"
    assert int(a["llm.token_count.prompt"]) == answer["usage"]["prompt_tokens"]
    assert int(a["llm.token_count.completion"]) == answer["usage"]["completion_tokens"]
    assert [a[f"llm.input_messages.{i}.message.role"] for i in range(2)] == ["system", "user"]
    assert a["llm.input_messages.1.message.content"] == "Name a colour."
    assert a["llm.output_messages.0.message.content"] == answer["choices"][0]["message"]["content"]
    assert a["llm.output_messages.0.message.finish_reason"] == answer["choices"][0]["finish_reason"]
