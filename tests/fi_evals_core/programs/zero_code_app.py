"""An app with no telemetry code at all, run under `opentelemetry-instrument`.

    opentelemetry-instrument python zero_code_app.py MODEL_DIR
"""

import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model.generate(**tok("zero code", return_tensors="pt"), max_new_tokens=4)
