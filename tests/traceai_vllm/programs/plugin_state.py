"""Load vLLM's general plugins as vLLM does in every process, then report what traceai's plugin did.

Prints `STATE <telemetry started> <OutputProcessor.add_request patched>`. With
TRACEAI_MUTE_ROOT_LOGGER=1 the root logger is at ERROR first, as in vLLM's API server.
"""

import logging
import os

if os.environ.get("TRACEAI_MUTE_ROOT_LOGGER"):  # what vLLM's API server's imports do
    logging.getLogger().setLevel(logging.ERROR)

from vllm.plugins import load_general_plugins  # noqa: E402

load_general_plugins()

from vllm.v1.engine.output_processor import OutputProcessor  # noqa: E402

import traceai_vllm.plugin as plugin  # noqa: E402
from fi_evals_core.telemetry.patching import is_patched  # noqa: E402

wrapped = is_patched(OutputProcessor, "add_request")
print("STATE", plugin._telemetry is not None, wrapped)
