"""The README's first command: the demo runs offline and says where its spans went."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_on_the_embedded_default(tmp_path):
    traces = tmp_path / "demo.jsonl"
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRACEAI_TRACES_FILE": str(traces)}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "demo.py"), "--max-new-tokens", "6"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM weights" in proc.stdout
    assert "no GPU" in proc.stdout and "pytorch" in proc.stdout
    assert "the same model on an in-process vLLM engine" in proc.stdout
    # the libraries' own output (vLLM's engine log, progress bars) stays out of the table
    assert "INFO" not in proc.stdout and "Loading weights" not in proc.stdout + proc.stderr
    log = Path(proc.stdout.rsplit("what the libraries printed meanwhile: ", 1)[1].strip())
    assert "Initializing a V1 LLM engine" in log.read_text()
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("text_completion", "pipeline"))]
    assert [row[2] for row in rows if row[0] == "text_completion"] == ["transformers"] * 3 + ["vllm"] * 2
    records = [json.loads(line) for line in traces.read_text().splitlines()]
    ours = [r for r in records if r["scope"]["name"].startswith("traceai_")]
    assert f"{len(ours)} spans went to {traces}" in proc.stdout
    names = [r["name"] for r in ours if r["scope"]["name"] == "traceai_huggingface"]
    assert sum(n.startswith("text_completion") for n in names) == 3
    assert sum(n.startswith("pipeline text-generation") for n in names) == 1
    vllm_requests = [r for r in ours if r["scope"]["name"] == "traceai_vllm" and r["name"].startswith("text_completion")]
    assert [r["attributes"]["gen_ai.usage.output_tokens"] for r in vllm_requests] == [6, 6]
    # inline evaluation with the RANDOM NLI model: each result is a child of the request it scored
    assert "RANDOM weights (meaningless scores" in proc.stdout
    results = [r for r in records if r["name"].startswith("evaluation groundedness")]
    pipeline_span = next(r for r in ours if r["name"].startswith("pipeline text-generation"))
    assert pipeline_span["span_id"] in {r["parent_span_id"] for r in results}
    assert f"{len(results)} evaluation results went there too" in proc.stdout
    assert sum("groundedness" in line for line in proc.stdout.splitlines()) == len(results)  # one column
