"""The local generation path (generate_responses, vLLM backend), in a process of its own: the
reference the Ray path must equal.

    python generate_locally.py MODEL_DIR PROMPTS_JSON MAX_TOKENS ENGINE_ARGS_JSON

Prints `RESULT {"rows": [...], "generation": {...}}`.
"""

import json
import sys

from fi_evals_core.evals.dataset import Dataset
from fi_evals_core.evals.generate import generate_responses

if __name__ == "__main__":
    model_dir, prompts, max_tokens, engine_args = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    out = generate_responses(Dataset([{"prompt": p} for p in prompts]), model_dir, backend="vllm",
                             max_tokens=max_tokens, progress=False, engine_args=engine_args)
    print("RESULT", json.dumps({"rows": out.rows, "generation": out.generation}, default=str))
