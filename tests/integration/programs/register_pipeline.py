"""register() from the environment, one transformers pipeline call, shutdown: as a user's script.
Prints where each package was imported from, and `GENERATED`.

    python register_pipeline.py MODEL_DIR [PROMPT]
"""

import sys

import fi_evals_core
import traceai_huggingface
import traceai_vllm
from fi_evals_core import register

for module in (fi_evals_core, traceai_huggingface, traceai_vllm):
    print("FROM", module.__name__, module.__file__)
telemetry = register()
assert "huggingface" in telemetry.instrumentors, telemetry.instrumentors

from transformers import pipeline  # noqa: E402

pipe = pipeline("text-generation", model=sys.argv[1])
pipe(sys.argv[2] if len(sys.argv) > 2 else "The wheel is installed", max_new_tokens=3, do_sample=False)
telemetry.shutdown()
print("GENERATED")
