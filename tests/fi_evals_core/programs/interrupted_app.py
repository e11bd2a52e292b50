"""register() with the export process, one generate, then wait for Ctrl-C (the test sends SIGINT to
the whole process group, as a terminal does): the app dies of KeyboardInterrupt without calling
shutdown(), and its span must still be exported.

    python interrupted_app.py MODEL_DIR

Prints `READY` once the generate call returned.
"""

import signal
import sys

from fi_evals_core import register

telemetry = register()
assert telemetry.export_process is not None

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model.generate(**tok("interrupted", return_tensors="pt"), max_new_tokens=2, do_sample=False)
assert telemetry.export_process.flush(60)  # the child runs (and holds nothing yet)
model.generate(**tok("interrupted again", return_tensors="pt"), max_new_tokens=2, do_sample=False)
print("READY", flush=True)
signal.pause()  # until Ctrl-C: KeyboardInterrupt
