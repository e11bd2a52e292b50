"""Zero-code: vLLM's `vllm.general_plugins` entry point, loaded in every vLLM process.

With `TRACEAI_VLLM_AUTO=1` in the environment, each process (API server, EngineCore, workers)
builds its own tracer and meter providers from the standard OTEL_* variables (`register()`) and
instruments vLLM; request spans come from the process that runs the output processor (the API
server / front-end). Without the variable, loading the plugin is one environment lookup.

`register()` in a script sets `TRACEAI_VLLM_AUTO=1` for the processes vLLM starts from it (when the
variable is unset), so a spawned EngineCore traces although it never runs the script's guarded
`register()`; a process already instrumented (register() at a script's top level, re-run by
spawn, or inherited through fork) is left as it is.

Here `TRACEAI_EXPORT_PROCESS` defaults to on: a server's request spans are made and exported by a
helper process (fi_evals_core.telemetry.export_process), which takes most of the per-request cost
off the serving process (benchmarks/RESULTS.md). Set it to 0 to export in-process.
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger(__name__)

AUTO_VARIABLE = "TRACEAI_VLLM_AUTO"
_lock = threading.Lock()
_telemetry = None


def enabled() -> bool:
    if not (os.environ.get(AUTO_VARIABLE) or "").strip():
        return False  # the common case: no import
    from fi_evals_core.telemetry.config import ConfigError, parse_flag

    try:
        return parse_flag(os.environ, AUTO_VARIABLE, False)
    except ConfigError as exc:  # a typo must not stop the server
        logger.warning("%s; traceai stays off", exc)
        return False


def default_service_name() -> str | None:
    """"vllm", unless the environment names the service (`OTEL_SERVICE_NAME`, or `service.name` in
    `OTEL_RESOURCE_ATTRIBUTES`): then None, and register() keeps the given name."""
    if (os.environ.get("OTEL_SERVICE_NAME") or "").strip():
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector

    return None if OTELResourceDetector().detect().attributes.get(SERVICE_NAME) else "vllm"


def propagate_to_children() -> bool:
    """Turn the plugin on for the processes started from here; True when this set the variable."""
    if (os.environ.get(AUTO_VARIABLE) or "").strip():
        return False  # the user's own setting stands
    os.environ[AUTO_VARIABLE] = "1"
    return True


def stop_propagating() -> None:
    os.environ.pop(AUTO_VARIABLE, None)


def load() -> None:
    """The `vllm.general_plugins` hook; vLLM calls it once per process."""
    global _telemetry
    if not enabled():
        return
    from . import VLLMInstrumentor

    if VLLMInstrumentor().is_instrumented_by_opentelemetry:
        return  # register() ran in this process (or in the one it was forked from)
    from fi_evals_core.telemetry.config import ConfigError
    from fi_evals_core.telemetry.logs import make_visible

    with _lock:
        if _telemetry is not None:
            return
        try:
            make_visible()  # vLLM's server mutes the root logger: these lines must still be seen
            from fi_evals_core import register
            from fi_evals_core.telemetry import TelemetryConfig

            config = TelemetryConfig.from_env({"TRACEAI_EXPORT_PROCESS": "1", **os.environ})
            _telemetry = register(service_name=default_service_name(), config=config)
            # In the processes that hold the model (EngineCore, workers; all of them in-process):
            # the torch allocator per device, as gauges read at metric collection time.
            from fi_evals_core.telemetry.gpu import register_gpu_memory_gauges

            register_gpu_memory_gauges(_telemetry.meter_provider.get_meter("traceai_vllm.gpu"))
        except ConfigError as exc:  # a bad variable: one line naming it, telemetry off, the server unaffected
            logger.warning("traceai: %s; telemetry stays off in this process", exc)
        except Exception:  # a telemetry problem must never stop the server
            logger.warning("traceai: could not enable vLLM instrumentation", exc_info=True)
