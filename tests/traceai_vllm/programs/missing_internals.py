"""A future vLLM that moved a hook point: instrument() must warn once and leave vLLM untouched.

Prints `UNTOUCHED` when neither output-processor hook was installed; the warning goes to stderr.
"""

import logging

logging.basicConfig(level=logging.WARNING)

from vllm.v1.engine.output_processor import OutputProcessor  # noqa: E402

del OutputProcessor.abort_requests  # as if a release had renamed it

from traceai_vllm import VLLMInstrumentor  # noqa: E402

VLLMInstrumentor().instrument()

from fi_evals_core.telemetry.patching import is_patched  # noqa: E402

assert not is_patched(OutputProcessor, "add_request")
assert not is_patched(OutputProcessor, "process_outputs")
print("UNTOUCHED")
