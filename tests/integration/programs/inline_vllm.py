"""Inline evaluation on the real vLLM engine, configured by the environment (FI_EVALS_*, OTEL_*).

    python inline_vllm.py MODEL_DIR

In a process of its own: a second in-process vLLM engine would reset the process-wide parallel state
of another one. Prints, as its last line, `[[request_id, [choice texts]], ...]` as JSON.
"""

import json
import sys

from fi_evals_core import eval_context, register

telemetry = register()

from vllm import LLM, SamplingParams  # noqa: E402

llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=4,
          kv_cache_memory_bytes=64 * 2**20, seed=0)
params = SamplingParams(max_tokens=8, ignore_eos=True)
outputs = llm.generate(["The old man walked to", "A small bird sees"], params, use_tqdm=False)
with eval_context(reference="The garden behind the house was full of red apples.", tenant="acme"):
    outputs += llm.generate(["The quiet house"], SamplingParams(max_tokens=8, ignore_eos=True, n=2),
                            use_tqdm=False)
telemetry.shutdown()
print(json.dumps([[o.request_id, [c.text for c in o.outputs]] for o in outputs]))
