"""generate_responses with the vLLM backend, in a process of its own (one in-process engine per process).

    python generate_with_vllm.py MODEL_DIR PROMPTS_JSON

Prints `ROWS <the result rows as JSON>`.
"""

import json
import sys

from fi_evals_core.evals.dataset import Dataset
from fi_evals_core.evals.generate import generate_responses

model_dir, prompts = sys.argv[1], json.loads(sys.argv[2])
data = Dataset([{"prompt": p} for p in prompts])
out = generate_responses(data, model_dir, backend="vllm", max_tokens=8, progress=False,
                         engine_args=dict(dtype="float32", enforce_eager=True, max_model_len=256,
                                          max_num_seqs=4, kv_cache_memory_bytes=64 * 2**20))
print("ROWS", json.dumps(out.rows))
