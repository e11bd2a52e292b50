"""register() configured only by the environment, then a plain transformers generate: as a user runs it.

    python register_and_generate.py MODEL_DIR

Prints `PROMPT_TOKENS <n>` and `DEST <where the spans went>`.
"""

import sys

from fi_evals_core import register

model_dir = sys.argv[1]
telemetry = register()
assert "huggingface" in telemetry.instrumentors, telemetry.instrumentors

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

model = AutoModelForCausalLM.from_pretrained(model_dir)
tok = AutoTokenizer.from_pretrained(model_dir)
enc = tok("hello", return_tensors="pt")
model.generate(**enc, max_new_tokens=3)
print("PROMPT_TOKENS", enc["input_ids"].shape[1])
telemetry.shutdown()
print("DEST", telemetry.destination)
