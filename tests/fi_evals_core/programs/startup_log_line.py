"""register() in a process whose logging a dependency has muted (root logger at ERROR, no handler),
or that configured its own (`configured`): prints what reaches stdout; stderr is the test's to read.

    python startup_log_line.py ENDPOINT [configured]
"""

import logging
import sys

if len(sys.argv) > 2 and sys.argv[2] == "configured":
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="APP %(name)s %(message)s")
else:
    logging.getLogger().setLevel(logging.ERROR)  # what a vLLM server's imports do

from fi_evals_core import register  # noqa: E402
from fi_evals_core.telemetry import TelemetryConfig  # noqa: E402

telemetry = register(config=TelemetryConfig.from_env({
    "OTEL_EXPORTER_OTLP_ENDPOINT": sys.argv[1], "OTEL_TRACES_SAMPLER": "traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_EXPORTER_OTLP_TIMEOUT": "1000"}), set_global=False)
logging.getLogger("fi_evals_core.telemetry.test").warning("traceai warning for the operator")
telemetry.shutdown()
