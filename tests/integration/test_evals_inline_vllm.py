"""Inline evaluation on the real vLLM engine (CPU): every sampled request's completion is scored in
the background and the results reach a real collector as children of the vLLM request spans.

In a subprocess: a second in-process vLLM engine would reset the process-wide parallel state of the
one tests/traceai_vllm/test_vllm.py holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fi_evals_core.telemetry import attributes as A
from fi_evals_core.testing.genai_messages import check_messages

PROGRAM = Path(__file__).resolve().parent / "programs" / "inline_vllm.py"


def run(model_dir, collector, nli_dir, capture: str) -> list:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_", "FI_EVALS_"))}
    env.update({**collector.otel_env("grpc"), "OTEL_SERVICE_NAME": f"vllm-inline-{capture}",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "5000", "HF_HUB_OFFLINE": "1",
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": capture,
                "FI_EVALS_SAMPLE_RATE": "1", "FI_EVALS_EVALUATORS": "groundedness,factual_consistency",
                "FI_EVALS_MODEL": nli_dir, "FI_EVALS_DEVICE": "cpu", "FI_EVALS_COHORT": "tiny-llama-v1"})
    proc = subprocess.run([sys.executable, str(PROGRAM), str(model_dir)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("capture", ["false", "SPAN_ONLY"])
def test_vllm_requests_are_scored_under_their_spans(model_dirs, collector, nli_checkpoint, capture):
    collector.clear()
    outputs = run(model_dirs["llama"], collector, nli_checkpoint("bert"), capture)
    service = f"vllm-inline-{capture}"
    spans = collector.wait_for_spans(
        lambda s: s["resource_attributes"].get("service.name") == service and s["name"].startswith("evaluation"),
        count=8, timeout=30)
    everything = [s for s in collector.wait_for_spans(1) if s["resource_attributes"].get("service.name") == service]
    requests = {s["span_id"]: s for s in everything
                if s["scope_name"] == "traceai_vllm" and s["name"].startswith("text_completion")}
    assert len(requests) == 3
    results = [s for s in everything if s["name"].startswith("evaluation")]
    # two evaluators x (two single requests + one n=2 request with two choices)
    assert len(results) == 8
    for result in results:
        parent = requests[result["parent_span_id"]]
        assert result["trace_id"] == parent["trace_id"]
        attrs = result["attributes"]
        assert attrs[A.RESPONSE_ID] == parent["attributes"][A.RESPONSE_ID]
        assert attrs["fi_evals.cohort"] == "tiny-llama-v1"
        assert attrs["gen_ai.evaluation.score.label"] in ("pass", "fail")
    per_request = {}
    for result in results:
        per_request.setdefault(result["parent_span_id"], []).append(result)
    assert sorted(len(v) for v in per_request.values()) == [2, 2, 4]
    with_context = [r for r in results if r["attributes"].get("tenant") == "acme"]
    assert len(with_context) == 4

    texts = [t for _, choices in outputs for t in choices]
    dumped = json.dumps(everything)
    if capture == "false":  # nothing of the prompts or completions is exported
        assert all(t.strip()[:12] not in dumped for t in texts if t.strip())
        assert "old man walked" not in dumped and "red apples" not in dumped
    else:  # captured: the vLLM spans carry their messages; the explanations may quote them
        by_id = {s["attributes"][A.RESPONSE_ID]: s for s in requests.values()}
        for request_id, choices in outputs:
            messages = check_messages(by_id[request_id]["attributes"][A.OUTPUT_MESSAGES], "output")
            assert [m["parts"][0]["content"] for m in messages] == choices
        # each result under eval_context names its premise span: the reference's only sentence
        assert all("red apples" in r["attributes"]["gen_ai.evaluation.explanation"] for r in with_context)
