"""register(), one pipeline call, and exit at once: no shutdown() call, no flush.

    python exit_after_last_request.py MODEL_DIR

Prints `GENERATED` once the call returned; whatever is exported happens at interpreter exit.
"""

import sys

from fi_evals_core import register

register()

from transformers import pipeline  # noqa: E402

pipe = pipeline("text-generation", model=sys.argv[1])
pipe("The quiet house", max_new_tokens=3, do_sample=False)
print("GENERATED")
